"""The numpy GWC reference: the formula, its edge cases, and the summation order the kernels copy."""
import numpy as np
import pytest

from flashstereo_ros import gwc
from flashstereo_ros.errors import StereoInputError

FP16_EPS = float(np.finfo(np.float16).eps)


def float64_volume(left, right, groups, disparities):
    """vol[g,d,y,x] = sum_c L[g,c,y,x] R[g,c,y,x-d] for x >= d, else 0: one pixel at a time, in float64."""
    _, c, h, w = left.shape
    cg = c // groups
    vol = np.zeros((1, groups, disparities, h, w))
    for g in range(groups):
        for d in range(disparities):
            for y in range(h):
                for x in range(d, w):
                    lv = left[0, g * cg:(g + 1) * cg, y, x].astype(np.float64)
                    rv = right[0, g * cg:(g + 1) * cg, y, x - d].astype(np.float64)
                    vol[0, g, d, y, x] = lv @ rv
    return vol


def float64_normalize(features, groups):
    _, c, h, w = features.shape
    x = features.astype(np.float64).reshape(groups, c // groups, h, w)
    return (x / np.maximum(np.sqrt((x * x).sum(axis=1, keepdims=True)), 1e-12)).reshape(features.shape)


def test_volume_matches_float64_formula_including_zero_region():
    rng = np.random.default_rng(1)
    left = rng.standard_normal((1, 16, 3, 9)).astype(np.float32)
    right = rng.standard_normal((1, 16, 3, 9)).astype(np.float32)
    ln, rn = gwc.normalize_groups(left, 4), gwc.normalize_groups(right, 4)
    vol = gwc.gwc_volume(ln, rn, 4, 6)
    ref = float64_volume(ln, rn, 4, 6)
    assert vol.shape == (1, 4, 6, 3, 9) and vol.dtype == np.float16
    # each group vector is unit length, so |vol| <= 1 and fp16 rounding bounds the error
    np.testing.assert_allclose(vol.astype(np.float64), ref, rtol=0, atol=4 * FP16_EPS)
    for d in range(6):
        assert not vol[0, :, d, :, :d].any(), f"disparity {d}: columns x < d must be zero"


def test_normalize_matches_float64_and_gives_unit_groups():
    rng = np.random.default_rng(2)
    feats = (rng.standard_normal((1, 24, 5, 7)) * 30).astype(np.float32)
    out = gwc.normalize_groups(feats, 3)
    np.testing.assert_allclose(out.astype(np.float64), float64_normalize(feats, 3), rtol=0, atol=FP16_EPS)
    norms = np.sqrt((out.astype(np.float64).reshape(3, 8, 5, 7) ** 2).sum(axis=1))
    np.testing.assert_allclose(norms, 1.0, atol=8 * FP16_EPS)


def test_all_zero_features_give_zeros_not_nan():
    zeros = np.zeros((1, 16, 2, 8), np.float32)
    normalized = gwc.normalize_groups(zeros, 8)
    vol = gwc.gwc_volume(normalized, normalized, 8, 4)
    assert np.isfinite(normalized).all() and not normalized.any()
    assert np.isfinite(vol).all() and not vol.any()


def test_disparities_beyond_width_are_zero_planes():
    rng = np.random.default_rng(3)
    f = gwc.normalize_groups(rng.standard_normal((1, 8, 2, 4)).astype(np.float32), 2)
    vol = gwc.gwc_volume(f, f, 2, 7)
    assert not vol[:, :, 4:].any()


@pytest.mark.parametrize("shape,groups", [((1, 224, 12, 20), 8), ((1, 32, 5, 33), 4), ((24, 3, 17), 3)])
def test_reduce_adds_channels_in_order(shape, groups):
    """np.add.reduce over the channel axis must equal an explicit channel-by-channel float32 sum."""
    rng = np.random.default_rng(4)
    feats = (rng.standard_normal(shape) * 4).astype(np.float32)
    x = feats.reshape(groups, -1, *feats.shape[-2:])
    explicit = x[:, 0] * x[:, 0]
    for c in range(1, x.shape[1]):
        explicit = explicit + x[:, c] * x[:, c]
    denom = np.maximum(np.sqrt(explicit), np.float32(1e-12))
    expected = (x / denom[:, None]).astype(np.float16).reshape(shape)
    assert np.array_equal(gwc.normalize_groups(feats, groups).view(np.uint16), expected.view(np.uint16))

    left = gwc.normalize_groups(feats, groups).reshape((1,) + shape[-3:])
    right = gwc.normalize_groups(feats[..., ::-1].copy(), groups).reshape((1,) + shape[-3:])
    lg = left.astype(np.float32).reshape(groups, -1, *shape[-2:])
    rg = right.astype(np.float32).reshape(groups, -1, *shape[-2:])
    vol = gwc.gwc_volume(left, right, groups, 5, np.float32)
    w = shape[-1]
    for d in range(5):
        acc = lg[:, 0, :, d:] * rg[:, 0, :, : w - d]
        for c in range(1, lg.shape[1]):
            acc = acc + lg[:, c, :, d:] * rg[:, c, :, : w - d]
        assert np.array_equal(vol[0, :, d, :, d:].view(np.uint32), acc.view(np.uint32)), f"d={d}"


def test_float32_volume_output():
    rng = np.random.default_rng(5)
    f = gwc.normalize_groups(rng.standard_normal((1, 8, 3, 6)).astype(np.float32), 2)
    vol32 = gwc.gwc_volume(f, f, 2, 3, np.float32)
    vol16 = gwc.gwc_volume(f, f, 2, 3, np.float16)
    assert vol32.dtype == np.float32
    assert np.array_equal(vol32.astype(np.float16), vol16)


def test_bad_shapes_are_named():
    with pytest.raises(StereoInputError, match="groups"):
        gwc.normalize_groups(np.zeros((1, 10, 2, 2), np.float32), 3)
    with pytest.raises(StereoInputError, match="differ in shape"):
        gwc.gwc_volume(np.zeros((1, 8, 2, 2), np.float16), np.zeros((1, 8, 2, 3), np.float16), 2, 2)
    with pytest.raises(StereoInputError, match=r"\(1,C,H,W\)"):
        gwc.normalize_groups(np.zeros((2, 8, 2, 2), np.float32), 2)
