"""Numpy reference for the step between the engines: per-group L2 norm and the GWC cost volume.

This is the oracle the CUDA kernels kernels/group_norm.cu and kernels/gwc.cu must equal bit for bit, so
every floating-point operation here is spelled out in the order they perform it (kernels/gwc_tensor.cu,
the default on compute capability 8.0+, sums each group's products on the tensor cores in their own
order: within float32 rounding of this, docs/GPU.md):
- norm: float32 sum of squares, channel by channel in channel order (channel 0's term starts the
  sum); IEEE sqrt; x / max(norm, 1e-12); round to the compute dtype (float16).
- volume: float32 products of the float16 features (exact: 11-bit x 11-bit significands fit in 24),
  summed channel by channel the same way; zero (+0) where x < d; rounded to the volume dtype.
`np.add.reduce` over the channel axis, which is not the innermost one, adds whole channel planes one
after another in channel order (test_gwc.py checks this against an explicit loop).
"""
from __future__ import annotations

import numpy as np

from .contract import NORM_EPS
from .errors import StereoInputError

COMPUTE_DTYPE = np.dtype(np.float16)


def normalize_groups(features: np.ndarray, groups: int, out_dtype=COMPUTE_DTYPE) -> np.ndarray:
    """L2-normalise each pixel's group vector of (1,C,H,W) or (C,H,W) features; same shape, out_dtype."""
    x = _grouped(features, groups).astype(np.float32, copy=False)
    sum_sq = np.add.reduce(x * x, axis=1)
    denom = np.maximum(np.sqrt(sum_sq), np.float32(NORM_EPS))
    return (x / denom[:, None]).astype(out_dtype).reshape(features.shape)


def gwc_volume(left: np.ndarray, right: np.ndarray, groups: int, disparities: int,
               out_dtype=np.float16) -> np.ndarray:
    """Group-wise correlation volume (1,G,D,H,W) of normalised (1,C,H,W) features (float16 or float32).

    vol[g,d,y,x] = sum_c L[g,c,y,x] * R[g,c,y,x-d] for x >= d, else 0.
    """
    if left.shape != right.shape:
        raise StereoInputError(f"left features {left.shape} and right features {right.shape} differ in shape")
    lg = _grouped(left, groups).astype(np.float32)
    rg = _grouped(right, groups).astype(np.float32)
    g, cg, h, w = lg.shape
    volume = np.zeros((g, disparities, h, w), np.float32)
    for d in range(min(disparities, w)):
        volume[:, d, :, d:] = np.add.reduce(lg[..., d:] * rg[..., : w - d], axis=1)
    return volume.astype(out_dtype)[None]


def _grouped(features: np.ndarray, groups: int) -> np.ndarray:
    """View (1,C,H,W) or (C,H,W) as (G, C/G, H, W)."""
    shape = features.shape[1:] if features.ndim == 4 else features.shape
    if features.ndim not in (3, 4) or (features.ndim == 4 and features.shape[0] != 1):
        raise StereoInputError(f"features must be (1,C,H,W) or (C,H,W), got {features.shape}")
    channels, h, w = shape
    if groups <= 0 or channels % groups:
        raise StereoInputError(f"{channels} feature channels cannot be split into {groups} groups")
    return features.reshape(groups, channels // groups, h, w)
