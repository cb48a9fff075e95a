"""flashstereo_ros.metrics: disparity agreement numbers on maps whose answers can be worked out by hand."""
import math

import numpy as np
import pytest

from flashstereo_ros.metrics import KEYS, AgreementAccumulator, disparity_agreement


def test_identical_maps_agree_perfectly():
    reference = np.random.default_rng(0).uniform(1, 50, (8, 12)).astype(np.float32)
    result = disparity_agreement(reference.copy(), reference)
    assert set(result) == set(KEYS)
    assert result == {"cosine": pytest.approx(1.0), "rel_l1": 0.0, "max_abs": 0.0, "pct_over_1px": 0.0,
                      "bit_identical": True, "pixels": 96}


def test_values_worked_out_by_hand():
    reference = np.array([[10.0, 10.0], [10.0, 10.0]], np.float32)
    test = np.array([[10.0, 12.0], [10.5, 10.0]], np.float32)
    result = disparity_agreement(test, reference)
    assert result["rel_l1"] == pytest.approx(2.5 / 40.0)
    assert result["max_abs"] == pytest.approx(2.0)
    assert result["pct_over_1px"] == pytest.approx(25.0)  # only the 2 px error is over 1 px
    dot = 10 * 10 + 12 * 10 + 10.5 * 10 + 10 * 10
    assert result["cosine"] == pytest.approx(dot / math.sqrt((100 + 144 + 110.25 + 100) * 400))
    assert result["bit_identical"] is False


def test_valid_mask_restricts_the_comparison():
    reference = np.full((2, 3), 5.0, np.float32)
    test = reference.copy()
    test[0, 0] = 100.0  # wrong only where the mask says the pixel does not count
    valid = np.ones((2, 3), bool)
    valid[0, 0] = False
    result = disparity_agreement(test, reference, valid)
    assert result["bit_identical"] is True and result["max_abs"] == 0.0 and result["pixels"] == 5
    assert disparity_agreement(test, reference)["max_abs"] == pytest.approx(95.0)


def test_scaled_map_keeps_cosine_but_not_rel_l1():
    reference = np.random.default_rng(1).uniform(1, 50, (16, 16)).astype(np.float32)
    result = disparity_agreement(reference * np.float32(1.1), reference)
    assert result["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert result["rel_l1"] == pytest.approx(0.1, rel=1e-5)


def test_one_ulp_difference_is_not_bit_identical():
    reference = np.full((4, 4), 3.0, np.float32)
    test = reference.copy()
    test[2, 2] = np.nextafter(np.float32(3.0), np.float32(4.0))
    result = disparity_agreement(test, reference)
    assert result["bit_identical"] is False and result["pct_over_1px"] == 0.0 and result["max_abs"] > 0


def test_non_finite_test_pixels_count_as_infinite_errors():
    reference = np.full((2, 2), 4.0, np.float32)
    test = reference.copy()
    test[1, 1] = np.nan
    result = disparity_agreement(test, reference)
    assert math.isinf(result["max_abs"]) and math.isinf(result["rel_l1"])
    assert result["pct_over_1px"] == pytest.approx(25.0) and result["bit_identical"] is False


def test_pooled_frames_equal_one_concatenated_frame():
    rng = np.random.default_rng(2)
    frames = [(rng.uniform(0, 40, (6, 9)).astype(np.float32), rng.uniform(0, 40, (6, 9)).astype(np.float32))
              for _ in range(3)]
    pooled = AgreementAccumulator()
    for test, reference in frames:
        pooled.add(test, reference)
    together = disparity_agreement(np.concatenate([t for t, _ in frames]), np.concatenate([r for _, r in frames]))
    for key in KEYS:
        assert pooled.result()[key] == pytest.approx(together[key], rel=1e-12)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="shapes differ"):
        disparity_agreement(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="valid must be a bool array"):
        disparity_agreement(np.zeros((2, 2)), np.zeros((2, 2)), valid=np.ones((2, 2)))
    with pytest.raises(ValueError, match="no pixels to compare"):
        disparity_agreement(np.zeros((2, 2)), np.zeros((2, 2)), valid=np.zeros((2, 2), bool))
