"""How closely one disparity map agrees with a reference one (FP16 or INT8 engines against FP32).

`disparity_agreement(test, reference)` is the per-frame API; `AgreementAccumulator` pools several
frames into one set of numbers, exactly as if their pixels had been concatenated. The INT8 quality
report (flashstereo-int8-quality) and the benchmark's precision sweep both report these keys:

  cosine         cosine similarity of the two maps as vectors (1.0 = same up to scale)
  rel_l1         sum |test - ref| / sum |ref|  (a fraction: 0.0019 = 0.19 %)
  max_abs        largest |test - ref|, pixels
  pct_over_1px   percentage of pixels where |test - ref| > 1 px
  bit_identical  every compared pixel is bitwise equal
  pixels         how many pixels were compared (valid and finite in the reference)

A pixel where the reference is finite but the test is not (NaN, inf) counts as an infinite error:
max_abs and rel_l1 become inf and the pixel counts towards pct_over_1px.
"""
from __future__ import annotations

import math

import numpy as np

OVER_THRESHOLD_PX = 1.0
KEYS = ("cosine", "rel_l1", "max_abs", "pct_over_1px", "bit_identical", "pixels")


class AgreementAccumulator:
    """Sums over frames of the quantities behind `disparity_agreement`, in float64."""

    def __init__(self) -> None:
        self.dot = 0.0
        self.test_sq = 0.0
        self.ref_sq = 0.0
        self.abs_diff = 0.0
        self.abs_ref = 0.0
        self.max_abs = 0.0
        self.over = 0
        self.pixels = 0
        self.identical = True

    def add(self, test: np.ndarray, reference: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add one frame; test, reference and valid (bool, optional) must have one shape."""
        test, reference = np.asarray(test), np.asarray(reference)
        if test.shape != reference.shape:
            raise ValueError(f"disparity shapes differ: test {test.shape}, reference {reference.shape}")
        mask = np.isfinite(reference)
        if valid is not None:
            valid = np.asarray(valid)
            if valid.shape != reference.shape or valid.dtype != np.bool_:
                raise ValueError(f"valid must be a bool array of shape {reference.shape}, "
                                 f"got {valid.dtype} {valid.shape}")
            mask &= valid
        t, r = test[mask], reference[mask]
        self.identical &= bool(t.dtype == r.dtype and np.array_equal(t.view(np.uint8), r.view(np.uint8)))
        t64, r64 = t.astype(np.float64), r.astype(np.float64)
        finite = np.isfinite(t64)
        diff = np.where(finite, np.abs(t64 - r64), np.inf)
        self.pixels += int(r64.size)
        if not r64.size:
            return
        self.dot += float(np.dot(np.where(finite, t64, 0.0), r64))
        self.test_sq += float(np.dot(np.where(finite, t64, 0.0), np.where(finite, t64, 0.0)))
        self.ref_sq += float(np.dot(r64, r64))
        self.abs_diff += float(diff.sum())
        self.abs_ref += float(np.abs(r64).sum())
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.over += int(np.count_nonzero(diff > OVER_THRESHOLD_PX))
        if not finite.all():
            self.identical = False

    def result(self) -> dict:
        """The pooled agreement (see the module docstring for the keys)."""
        if self.pixels == 0:
            raise ValueError("no pixels to compare: the valid mask or the reference's finite pixels are empty")
        denominator = math.sqrt(self.test_sq * self.ref_sq)
        if denominator > 0:
            cosine = self.dot / denominator
        else:  # an all-zero map agrees in direction only with another all-zero map
            cosine = 1.0 if self.test_sq == self.ref_sq else 0.0
        if self.abs_ref > 0:
            rel_l1 = self.abs_diff / self.abs_ref
        else:
            rel_l1 = 0.0 if self.abs_diff == 0 else math.inf
        return {
            "cosine": float(cosine),
            "rel_l1": float(rel_l1),
            "max_abs": float(self.max_abs),
            "pct_over_1px": 100.0 * self.over / self.pixels,
            "bit_identical": bool(self.identical),
            "pixels": int(self.pixels),
        }


def disparity_agreement(test: np.ndarray, reference: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """Agreement of one disparity map with a reference, over `valid` pixels (all by default).

    Returns dict(cosine, rel_l1, max_abs, pct_over_1px, bit_identical, pixels); rel_l1 is a fraction.
    """
    accumulator = AgreementAccumulator()
    accumulator.add(test, reference, valid)
    return accumulator.result()
