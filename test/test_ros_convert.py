"""sensor_msgs <-> numpy: zero-copy image views that respect step, clear refusals, camera geometry, outputs."""
import numpy as np
import pytest

pytest.importorskip("rclpy")

from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from flashstereo_ros import ros_convert  # noqa: E402
from flashstereo_ros.errors import StereoInputError  # noqa: E402
from flashstereo_ros.ros_testing import camera_infos, encode, image_msg  # noqa: E402

RNG = np.random.default_rng(5)
RGB = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1"])
@pytest.mark.parametrize("padding", [0, 5])
def test_image_view_has_the_pixels_and_shares_the_message_buffer(encoding, padding):
    pixels = encode(RGB, encoding)
    msg = image_msg(pixels, encoding, row_padding=padding)
    view, got_encoding = ros_convert.image_to_array(msg)
    assert got_encoding == encoding
    assert np.array_equal(view.reshape(pixels.shape), pixels)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))  # no copy
    assert not view.flags.writeable


def test_last_row_padding_may_be_absent():
    msg = image_msg(RGB, "rgb8", row_padding=4)
    msg.data = msg.data[:-4]
    view, _ = ros_convert.image_to_array(msg)
    assert np.array_equal(view, RGB)


@pytest.mark.parametrize("encoding,message", [
    ("mono16", "16-bit"), ("16UC1", "16-bit"), ("bayer_rggb8", "debayered"), ("bayer_grbg16", "debayered"),
    ("yuv422", "YUV"), ("yuv422_yuy2", "YUV"), ("nv21", "YUV"), ("32FC1", "floating-point"),
    ("8UC3", "channel order"), ("RGB8", "case-sensitive"), ("", "no encoding"), ("jpeg", "not an 8-bit"),
])
def test_unsupported_encodings_are_named_with_the_fix(encoding, message):
    msg = image_msg(RGB, "rgb8")
    msg.encoding = encoding
    with pytest.raises(StereoInputError, match=message) as error:
        ros_convert.image_to_array(msg)
    assert "accepted: rgb8, bgr8" in str(error.value)


def corrupt(**fields):
    msg = image_msg(RGB, "rgb8")
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize("msg,message", [
    (corrupt(data=image_msg(RGB, "rgb8").data[:50]), "truncated"),
    (corrupt(height=60), "truncated"),  # declared larger than the data
    (corrupt(width=2**31 - 1, step=3 * (2**31 - 1)), "truncated"),  # absurd sizes: refused before any allocation
    (corrupt(step=20), "step 20 is smaller"),
    (corrupt(height=0), "empty"),
    (corrupt(width=0, step=0), "empty"),
])
def test_malformed_images_are_refused(msg, message):
    with pytest.raises(StereoInputError, match=message):
        ros_convert.image_to_array(msg, "left image")


def test_a_hand_built_list_of_bytes_works():
    msg = Image(height=1, width=2, encoding="mono8", step=2)
    msg.data = [3, 4]
    view, _ = ros_convert.image_to_array(msg)
    assert view[..., 0].tolist() == [[3, 4]]


def test_a_hand_built_list_out_of_byte_range_is_refused():
    class HandBuilt:  # bypasses the message's own setter check, as a duck-typed message would
        encoding, height, width, step, data = "mono8", 1, 2, 2, [3, 300]

    with pytest.raises(StereoInputError, match="bytes 0..255"):
        ros_convert.image_to_array(HandBuilt())


def test_stereo_camera_from_camera_infos_with_principal_point_offset():
    left, right = camera_infos(400.0, 0.1, 64, 48, cx_offset=2.5)
    camera = ros_convert.stereo_camera(left, right, 64, 48)
    assert (camera.fx, camera.baseline_m, camera.cx_offset) == (400.0, pytest.approx(0.1), pytest.approx(2.5))


def test_camera_info_at_another_resolution_is_scaled():
    left, right = camera_infos(400.0, 0.1, 640, 480, cx_offset=4.0)
    camera = ros_convert.stereo_camera(left, right, 320, 240)
    assert camera.fx == 200.0 and camera.cx == pytest.approx(319.5 / 2) and camera.cx_offset == pytest.approx(2.0)
    f, t = ros_convert.disparity_parameters(right, 320, 240)
    assert f == 200.0 and t == pytest.approx(0.1)
    scaled = ros_convert.scaled_camera_info(left, Header(frame_id="cam"), 320, 240)
    assert (scaled.width, scaled.height, scaled.header.frame_id) == (320, 240, "cam")
    assert scaled.k[0] == 200.0 and scaled.p[2] == pytest.approx(319.5 / 2) and scaled.k[4] == 200.0


def test_camera_info_roi_is_a_window_of_the_full_frame_not_a_resize():
    """K and P describe the full frame; an image cut to the ROI keeps fx and moves cx (image_geometry)."""
    left, right = camera_infos(400.0, 0.1, 640, 480, cx_offset=4.0)
    for info in (left, right):
        info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 100, 40, 320, 240
    camera = ros_convert.stereo_camera(left, right, 320, 240)
    assert (camera.fx, camera.fy) == (400.0, 400.0)
    assert (camera.cx, camera.cy, camera.cx_offset) == (pytest.approx(319.5 - 100), pytest.approx(239.5 - 40), 4.0)
    assert ros_convert.disparity_parameters(right, 320, 240)[0] == 400.0
    same = ros_convert.scaled_camera_info(left, Header(frame_id="cam"), 320, 240)  # the image is the ROI
    assert (same.width, same.height, same.roi.width, same.k[2]) == (640, 480, 320, pytest.approx(319.5))
    # the ROI binned 2x2 (or resized to half): scaled from the ROI, and the output describes the image itself
    left.binning_x = left.binning_y = right.binning_x = right.binning_y = 2
    half = ros_convert.stereo_camera(left, right, 160, 120)
    assert (half.fx, half.cx) == (200.0, pytest.approx((319.5 - 100) / 2))
    info = ros_convert.scaled_camera_info(left, Header(frame_id="cam"), 160, 120)
    assert (info.width, info.height, info.roi.width, info.binning_x) == (160, 120, 0, 0)
    assert (info.k[0], info.k[2], info.p[2], info.p[6]) == (200.0, half.cx, half.cx, half.cy)


def test_binning_with_sizes_given_after_binning_divides_k_as_image_geometry_does():
    left, right = camera_infos(400.0, 0.1, 640, 480, cx_offset=4.0)  # K, P of the full frame
    for info in (left, right):
        info.width, info.height, info.binning_x, info.binning_y = 320, 240, 2, 2  # not the full size
    camera = ros_convert.stereo_camera(left, right, 320, 240)
    assert (camera.fx, camera.cx, camera.cx_offset) == (200.0, pytest.approx(319.5 / 2), pytest.approx(2.0))
    assert ros_convert.disparity_parameters(right, 320, 240)[0] == 200.0
    info = ros_convert.scaled_camera_info(left, Header(frame_id="cam"), 320, 240)
    assert (info.width, info.binning_x, info.k[0], info.k[2]) == (320, 0, 200.0, camera.cx)


def test_a_differently_scaled_aspect_ratio_is_noted():
    left, _ = camera_infos(400.0, 0.1, 1280, 720)
    assert ros_convert.anisotropic_scale(left, 640, 360) is None
    assert "scaled 0.100 in x and 0.089 in y" in ros_convert.anisotropic_scale(left, 128, 64)


def test_unset_camera_info_size_means_the_image_size():
    left, right = camera_infos(400.0, 0.1, 64, 48)
    for info in (left, right):
        info.width = info.height = 0
    assert ros_convert.stereo_camera(left, right, 64, 48).fx == 400.0


@pytest.mark.parametrize("change,message", [
    (lambda l, r: (l.p.fill(0), r.p.fill(0)), "focal length must be positive"),
    (lambda l, r: r.p.__setitem__(3, 0.0), "baseline must be positive"),
    (lambda l, r: r.p.__setitem__(3, 40.0), "left and right swapped"),
    (lambda l, r: l.p.__setitem__(0, np.nan), "NaN"),
    (lambda l, r: r.p.__setitem__(0, 401.0), "do not describe one rectified pair"),
    (lambda l, r: setattr(r, "width", 32), "one size"),
])
def test_unusable_camera_infos_are_named(change, message):
    left, right = camera_infos(400.0, 0.1, 64, 48)
    change(left, right)
    with pytest.raises(StereoInputError, match=message):
        ros_convert.stereo_camera(left, right, 64, 48)


def test_disparity_parameters_of_unusable_infos_are_zero():
    left, right = camera_infos(400.0, 0.1, 64, 48)
    right.p[3] = 0.0
    assert ros_convert.disparity_parameters(right, 64, 48) == (400.0, 0.0)
    right.p.fill(0)
    assert ros_convert.disparity_parameters(right, 64, 48) == (0.0, 0.0)


def test_disparity_range_is_the_engine_search_range_at_camera_resolution():
    assert ros_convert.disparity_range(192, 640, 640, 0.0) == (0.0, 191.0)
    assert ros_convert.disparity_range(192, 640, 320, -3.0) == (3.0, 191 * 0.5 + 3.0)


def test_disparity_message_round_trip():
    values = RNG.random((5, 9), dtype=np.float32) * 50
    header = Header(frame_id="left")
    msg = ros_convert.disparity_message(values, header, 500.0, 0.12, (0.0, 191.0), 0.0625)
    assert msg.image.encoding == "32FC1" and msg.image.step == 9 * 4 and msg.header.frame_id == "left"
    assert (msg.f, msg.t, msg.min_disparity, msg.max_disparity) == (500.0, pytest.approx(0.12), 0.0, 191.0)
    assert np.array_equal(ros_convert.array_from_image(msg.image), values)


def test_point_cloud_message_layout():
    points = RNG.random((3, 4, 4), dtype=np.float32)
    points[1, 2, :3] = np.nan
    msg = ros_convert.points_message(points, Header(frame_id="left"))
    assert (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_dense) == (3, 4, 16, 64, False)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1)]
    assert np.array_equal(ros_convert.points_from_message(msg), points, equal_nan=True)


def test_colour_image_message():
    bgr = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    msg = ros_convert.image_message(bgr, "bgr8", Header())
    assert (msg.encoding, msg.step, msg.is_bigendian) == ("bgr8", 15, False)
    assert np.array_equal(ros_convert.array_from_image(msg), bgr)
