"""Disparity -> depth (REP 118) and point cloud: the numpy reference's conventions."""
import numpy as np
import pytest

from flashstereo_ros import depth
from flashstereo_ros.errors import StereoInputError


def camera(offset=0.0, width=8, height=4):
    pl = [100.0, 0, 4.0, 0, 0, 110.0, 2.0, 0, 0, 0, 1, 0]
    pr = [100.0, 0, 4.0 - offset, -100.0 * 0.25, 0, 110.0, 2.0, 0, 0, 0, 1, 0]
    return depth.StereoCamera.from_projections(pl, pr, width, height)


def test_camera_from_projections():
    cam = camera(offset=3.0)
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (100.0, 110.0, 4.0, 2.0)
    assert cam.baseline_m == pytest.approx(0.25) and cam.cx_offset == pytest.approx(3.0)
    scaled = depth.StereoCamera.from_projections([100.0, 0, 4, 0, 0, 110, 2, 0, 0, 0, 1, 0],
                                                 [100.0, 0, 4, -25, 0, 110, 2, 0, 0, 0, 1, 0], 16, 8, (0, 0, 8, 4))
    assert (scaled.fx, scaled.fy, scaled.cx, scaled.cy) == (200.0, 220.0, 8.0, 4.0)
    cropped = depth.StereoCamera.from_projections([100.0, 0, 4, 0, 0, 110, 2, 0, 0, 0, 1, 0],
                                                  [100.0, 0, 1, -25, 0, 110, 2, 0, 0, 0, 1, 0], 4, 2, (3, 1, 4, 2))
    assert (cropped.fx, cropped.fy, cropped.cx, cropped.cy, cropped.cx_offset) == (100.0, 110.0, 1.0, 1.0, 3.0)


@pytest.mark.parametrize("p_right,message", [
    ([100.0, 0, 4, 0, 0, 110, 2, 0, 0, 0, 1, 0], "baseline must be positive"),
    ([0.0, 0, 4, 0, 0, 110, 2, 0, 0, 0, 1, 0], "focal length"),
    ([100.0, 0, 4, np.nan, 0, 110, 2, 0, 0, 0, 1, 0], "NaN"),
])
def test_bad_camera_is_named(p_right, message):
    with pytest.raises(StereoInputError, match=message):
        depth.StereoCamera.from_projections([100.0, 0, 4, 0, 0, 110, 2, 0, 0, 0, 1, 0], p_right, 8, 4)


def test_depth_is_f_times_baseline_over_disparity_with_rep118_values():
    cam = camera()
    disp = np.array([[50.0, 25.0, 0.0, -1.0, np.nan, np.inf, 0.5, 1000.0]], np.float32)
    limits = depth.DepthLimits(min_disparity=-0.5, min_depth=0.1, max_depth=40.0)
    z = depth.depth_image(disp, cam, limits)
    assert z.dtype == np.float32
    assert z[0, 0] == np.float32(25.0) / np.float32(50.0) and z[0, 1] == np.float32(1.0)
    assert z[0, 2] == np.inf  # zero disparity: at infinity
    assert np.isnan(z[0, 3])  # below min_disparity: no measurement
    assert np.isnan(z[0, 4]) and np.isnan(z[0, 5])  # not finite
    assert z[0, 6] == np.inf  # 50 m > max_depth: too far
    assert z[0, 7] == -np.inf  # 0.025 m < min_depth: too close


def test_point_cloud_back_projects_and_colours():
    cam = camera()
    z = np.full((4, 8), 2.0, np.float32)
    z[1, 3] = np.nan
    z[2, 5] = np.inf
    rgb = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3)
    cloud = depth.point_cloud(z, rgb, cam)
    v, u = 0, 6
    assert cloud[v, u, 0] == pytest.approx((u - 4.0) * 2.0 / 100.0)
    assert cloud[v, u, 1] == pytest.approx((v - 2.0) * 2.0 / 110.0)
    assert cloud[v, u, 2] == 2.0
    assert np.isnan(cloud[1, 3, :3]).all() and np.isnan(cloud[2, 5, :3]).all()
    packed = cloud[..., 3].view(np.uint32)
    assert packed[v, u] == (int(rgb[v, u, 0]) << 16) | (int(rgb[v, u, 1]) << 8) | int(rgb[v, u, 2])


def test_decimation_size_and_sampling():
    cam = camera(width=9, height=5)
    z = np.arange(45, dtype=np.float32).reshape(5, 9) + 1
    cloud = depth.point_cloud(z, np.zeros((5, 9, 3), np.uint8), cam, stride=4)
    assert cloud.shape == (2, 3, 4)
    assert cloud[1, 2, 2] == z[4, 8]


def test_offset_is_subtracted_from_published_disparity():
    cam = camera(offset=2.0)
    raw = np.full((4, 8), 27.0, np.float32)
    out = depth.outputs_from_disparity(raw, np.zeros((4, 8, 3), np.uint8), "rgb8", cam,
                                       depth.DepthLimits(), want_depth=True, want_points=False, points_stride=1)
    assert np.all(out.disparity == 25.0) and np.all(out.depth == 1.0) and out.points is None


def test_projection_matrices_must_have_twelve_elements():
    with pytest.raises(StereoInputError, match="P must have 12 elements \\(3x4\\), got 9"):
        depth.StereoCamera.from_projections(np.zeros(9), np.zeros(9), 8, 4)


def test_baseline_that_vanishes_in_float32_is_refused():
    # T = 1e-302 m is positive, but f*T rounds to 0 in float32: every depth would be 0 m
    with pytest.raises(StereoInputError, match="is 0.0 in float32"):
        depth.StereoCamera.from_projections([100.0, 0, 4, 0, 0, 110, 2, 0, 0, 0, 1, 0],
                                            [100.0, 0, 4, -1e-300, 0, 110, 2, 0, 0, 0, 1, 0], 8, 4)


@pytest.mark.parametrize("changes, message", [
    ({"fx": np.nan}, "finite"), ({"cx": np.inf}, "finite"), ({"fx": 10**400}, "finite"), ({"fy": -1.0}, "focal length must be positive"),
    ({"baseline_m": -0.1}, "baseline must be positive"), ({"width": 0}, "width must be an integer >= 1"),
    ({"height": 4.5}, "height must be an integer >= 1"),
])
def test_camera_built_directly_is_checked(changes, message):
    values = dict(fx=100.0, fy=110.0, cx=4.0, cy=2.0, baseline_m=0.25, cx_offset=0.0, width=8, height=4)
    assert depth.StereoCamera(**values) == camera()
    with pytest.raises(StereoInputError, match=message):
        depth.StereoCamera(**{**values, **changes})


@pytest.mark.parametrize("limits, message", [
    ((0.0, 10.0, 1.0), "max_depth \\(1.0\\) must be a number above min_depth \\(10.0\\)"),
    ((0.0, 1.0, 1.0), "must be a number above"),
    ((0.0, 0.0, np.nan), "must be a number above"),
    ((0.0, 0.0, "20"), "must be a number above"),
    ((0.0, -1.0, 10.0), "min_depth >= 0"),
    ((0.0, np.inf, np.inf), "must be finite numbers"),
    ((np.nan, 0.0, 10.0), "must be finite numbers"),
    (("0", "0.5", "20"), "must be finite numbers"),
])
def test_depth_limits_are_checked(limits, message):
    with pytest.raises(StereoInputError, match=message):
        depth.DepthLimits(*limits)


def test_depth_limits_allow_no_far_limit_and_a_negative_min_disparity():
    assert depth.DepthLimits(-0.5, 0.0, np.inf).max_depth == np.inf


def test_request_checks_limits_and_bounds_the_points_stride():
    cam = camera()
    depth.check_request((4, 8), cam, True, True, 8, depth.DepthLimits())
    with pytest.raises(StereoInputError, match="limits must be a DepthLimits, got NoneType"):
        depth.check_request((4, 8), cam, True, False, 1, None)
    depth.check_request((4, 8), cam, False, True, 64)  # past the image: one point, as the node allows
    for stride in (2**31, 10**30):  # the kernels take an int32
        with pytest.raises(StereoInputError, match="<= 2147483647"):
            depth.check_request((4, 8), cam, False, True, stride)
