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
