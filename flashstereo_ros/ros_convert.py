"""sensor_msgs <-> numpy for the node: zero-copy image views, camera geometry, output messages.

Everything here is a plain function of messages and arrays, so it is tested without a running graph.
Input problems raise StereoInputError with a message that names the fix.
"""
from __future__ import annotations

import array
import sys

import numpy as np

from .depth import StereoCamera
from .errors import StereoInputError
from .images import ENCODINGS

FLOAT32_ENCODING = "32FC1"
COLOR_ENCODING = "bgr8"
ACCEPTED_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8", "bgra8", "8UC1")
POINT_FIELDS = ("x", "y", "z", "rgb")  # float32 each, rgb packed 0x00RRGGBB as in PCL/RViz
BIG_ENDIAN = sys.byteorder == "big"
AUTO_RANGE_STRIDE = 4
FOCAL_MISMATCH_TOLERANCE = 1e-6  # relative: rectification gives both P one focal length, so f*T/d is exact
ASPECT_TOLERANCE = 0.01  # relative difference of the x and y scales from CameraInfo to image


def unsupported_encoding_reason(encoding: str) -> str:
    """Why an encoding is refused, and what to publish instead."""
    accepted = ", ".join(ACCEPTED_ENCODINGS)
    if not encoding:
        return f"the image has no encoding set; accepted: {accepted}"
    lower = encoding.lower()
    if lower.startswith("bayer"):
        fix = ("Bayer images must be debayered and rectified first (image_proc's debayer and rectify nodes, or "
               "the camera driver's colour output), then remap left/image_rect and right/image_rect to them")
    elif "16" in lower:
        fix = "16-bit images are not supported: publish 8-bit images (e.g. the driver's mono8/bgr8 format)"
    elif lower.startswith(("32f", "64f")) or lower.endswith(("fc1", "fc3")):
        fix = "floating-point images are not camera images: publish the 8-bit rectified images"
    elif any(key in lower for key in ("yuv", "yuyv", "uyvy", "nv12", "nv21", "nv24", "i420")):
        fix = "YUV images must be converted to rgb8/bgr8 first (the driver's pixel format or image_proc)"
    elif lower in ("8uc3", "8uc4"):
        fix = "say which channel order: publish bgr8/rgb8 (or bgra8/rgba8) instead of the ambiguous " + encoding
    elif lower in ENCODINGS:
        fix = f"encodings are case-sensitive: use '{lower}'"
    else:
        fix = "not an 8-bit camera encoding this node knows"
    return f"image encoding '{encoding}' is not supported ({fix}); accepted: {accepted}"


def image_to_array(msg, what: str = "image") -> tuple[np.ndarray, str]:
    """sensor_msgs/Image -> ((H, W, C) uint8 view of msg.data, encoding); rows follow `step`, nothing copied."""
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise StereoInputError(f"{what}: {unsupported_encoding_reason(encoding)}")
    channels = ENCODINGS[encoding][0]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise StereoInputError(f"{what} is empty ({width}x{height})")
    row_bytes = width * channels
    if step < row_bytes:
        raise StereoInputError(f"{what}: step {step} is smaller than width x channels = {width} x {channels} = "
                               f"{row_bytes} bytes ({encoding}): step must be the byte length of one row")
    try:
        data = np.frombuffer(msg.data, np.uint8)
    except (TypeError, ValueError):  # a plain list (a message built by hand)
        try:
            data = np.asarray(msg.data, np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise StereoInputError(f"{what}: data is not a sequence of bytes 0..255 ({exc})") from None
    needed = step * (height - 1) + row_bytes  # the last row's padding may be absent
    if data.size < needed:
        raise StereoInputError(f"{what}: data has {data.size} bytes but {width}x{height} {encoding} with step "
                               f"{step} needs {step * height}: truncated message, or wrong width/height/step")
    view = np.lib.stride_tricks.as_strided(data, shape=(height, width, channels), strides=(step, channels, 1),
                                           writeable=False)
    return view, encoding


def _projection(info, what: str) -> np.ndarray:
    p = np.asarray(info.p, np.float64)
    if p.size != 12:
        raise StereoInputError(f"{what} CameraInfo P has {p.size} elements, expected 12 (3x4)")
    return p.reshape(3, 4)


def image_window(info, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, w, h): the part of the CameraInfo's full-resolution frame a width x height image shows.

    As sensor_msgs/CameraInfo and image_geometry define it: K and P describe the full (unbinned) frame; an ROI
    (width and height set) is the window the image was cut from; binning and plain resizing scale the window
    to the image. An unset (0x0) CameraInfo size means the image's own size.
    """
    roi = info.roi
    if int(roi.width) > 0 and int(roi.height) > 0:
        x0, y0, w, h = int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)
    else:
        x0, y0, w, h = 0, 0, int(info.width), int(info.height)
        if w == 0 and h == 0:
            return 0, 0, width, height
    bx, by = max(int(info.binning_x), 1), max(int(info.binning_y), 1)
    if (bx, by) != (1, 1) and (w, h) == (width, height):
        # sizes given after binning (CameraInfo.msg asks for the full ones): image_geometry divides K by
        # the binning whatever the sizes say, and so does this
        w, h = w * bx, h * by
    return x0, y0, w, h


def anisotropic_scale(info, width: int, height: int, tolerance: float = ASPECT_TOLERANCE) -> str | None:
    """A note when a width x height image is the CameraInfo's window scaled differently along x and y
    (the geometry is still scaled per axis, but a camera mode that is not the calibrated one is likely)."""
    _, _, w, h = image_window(info, width, height)
    if w <= 0 or h <= 0 or abs((width / w) / (height / h) - 1.0) <= tolerance:
        return None
    return (f"images are {width}x{height} but the CameraInfo describes {w}x{h}: scaled {width / w:.3f} in x and "
            f"{height / h:.3f} in y (a different camera mode than the calibrated one?)")


def stereo_camera(left_info, right_info, width: int, height: int) -> StereoCamera:
    """The rectified pair's geometry at the image resolution (CameraInfo cut to its ROI and scaled to the image)."""
    left_window, right_window = image_window(left_info, width, height), image_window(right_info, width, height)
    if left_window != right_window:
        raise StereoInputError(f"left CameraInfo describes {_window_text(left_window)} but right CameraInfo "
                               f"{_window_text(right_window)}: a rectified pair has one size")
    pl, pr = _projection(left_info, "left"), _projection(right_info, "right")
    camera = StereoCamera.from_projections(pl, pr, width, height, left_window)
    if abs(pl[0, 0] - pr[0, 0]) > FOCAL_MISMATCH_TOLERANCE * abs(pl[0, 0]):
        raise StereoInputError(f"left P fx = {pl[0, 0]} and right P fx = {pr[0, 0]} differ: these CameraInfos do "
                               "not describe one rectified pair (rectify both with the same stereo calibration)")
    return camera


def _window_text(window: tuple[int, int, int, int]) -> str:
    x0, y0, w, h = window
    return f"{w}x{h}" + (f" at ({x0}, {y0})" if (x0, y0) != (0, 0) else "")


def disparity_parameters(right_info, width: int, height: int) -> tuple[float, float]:
    """(f, T) for DisparityImage from the right P, f scaled to the image width; 0 where unusable."""
    try:
        p = _projection(right_info, "right")
    except StereoInputError:
        return 0.0, 0.0
    fx, tx = float(p[0, 0]), float(p[0, 3])
    if not (np.isfinite(fx) and np.isfinite(tx)) or fx <= 0:
        return 0.0, 0.0
    w = image_window(right_info, width, height)[2]
    scale = width / w if w > 0 else 1.0
    baseline = -tx / fx
    return fx * scale, baseline if baseline > 0 else 0.0


def disparity_range(max_disp: int, engine_width: int, width: int, cx_offset: float) -> tuple[float, float]:
    """(min, max) disparity the engine can report, in published (offset-corrected) camera pixels.

    The engine searches d in [0, max_disp) at its own width; as in stereo_image_proc, max = min + range - 1.
    """
    scale = width / engine_width
    return 0.0 - cx_offset, (max_disp - 1) * scale - cx_offset  # 0.0 - x: never -0.0


def _byte_array(values: np.ndarray) -> array.array:
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(values).reshape(-1).view(np.uint8))
    return data


def image_message(values: np.ndarray, encoding: str, header):
    """(H, W) or (H, W, C) array -> sensor_msgs/Image (one copy, into the message)."""
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header = header
    msg.height, msg.width = int(values.shape[0]), int(values.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = BIG_ENDIAN and values.dtype.itemsize > 1
    msg.step = int(values.shape[1] * values.dtype.itemsize * (values.shape[2] if values.ndim == 3 else 1))
    msg.data = _byte_array(values)
    return msg


def color_disparity(disparity: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """BGR turbo image of a disparity; the automatic range (1st..99th percentile) from every 4th row and column,
    ten times cheaper than from all pixels and the same range to a fraction of a pixel."""
    from . import colorize

    if value_range is None:
        value_range = colorize.disparity_range(disparity[::AUTO_RANGE_STRIDE, ::AUTO_RANGE_STRIDE])
    return colorize.colorize(disparity, value_range)


def disparity_message(disparity: np.ndarray, header, focal_px: float, baseline_m: float,
                      value_range: tuple[float, float], delta_d: float):
    """stereo_msgs/DisparityImage: 32FC1 at camera resolution, the network's value at every pixel."""
    from stereo_msgs.msg import DisparityImage

    msg = DisparityImage()
    msg.header = header
    msg.image = image_message(disparity.astype(np.float32, copy=False), FLOAT32_ENCODING, header)
    msg.f, msg.t = float(focal_px), float(baseline_m)
    msg.min_disparity, msg.max_disparity = float(value_range[0]), float(value_range[1])
    msg.delta_d = float(delta_d)
    # a dense network estimates every pixel: the whole image is the window of (potentially) valid values
    msg.valid_window.x_offset, msg.valid_window.y_offset = 0, 0
    msg.valid_window.width, msg.valid_window.height = int(disparity.shape[1]), int(disparity.shape[0])
    return msg


def scaled_camera_info(info, header, width: int, height: int):
    """A copy of info for a width x height image of its window: unchanged when the image is that window,
    else K and P moved to the window's origin and scaled to the image, with no ROI or binning left."""
    from sensor_msgs.msg import CameraInfo

    x0, y0, w, h = image_window(info, width, height)
    out = CameraInfo()
    out.header = header
    out.distortion_model = info.distortion_model
    out.d = array.array("d", info.d)
    out.r = np.asarray(info.r, np.float64)
    k = np.asarray(info.k, np.float64).reshape(3, 3).copy()
    p = np.asarray(info.p, np.float64).reshape(3, 4).copy()
    out.width, out.height = width, height
    if (x0, y0) != (0, 0) and (w, h) == (width, height) and int(info.binning_x) <= 1 and int(info.binning_y) <= 1:
        out.width, out.height = info.width, info.height  # the image is the ROI: image_geometry reads it as is
        out.roi = info.roi
    elif (x0, y0, w, h) != (0, 0, width, height):
        for m in (k, p):  # pixel (u, v) of the image is (x0 + u / sx, y0 + v / sy) of the frame
            m[0] = (m[0] - x0 * m[2]) * (width / w)
            m[1] = (m[1] - y0 * m[2]) * (height / h)
    out.k, out.p = k.reshape(-1), p.reshape(-1)
    return out


def points_message(points: np.ndarray, header):
    """(h, w, 4) float32 x, y, z, rgb -> organised sensor_msgs/PointCloud2 (NaN = no point, is_dense false)."""
    from sensor_msgs.msg import PointCloud2, PointField

    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = int(points.shape[0]), int(points.shape[1])
    msg.fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, name in enumerate(POINT_FIELDS)]
    msg.is_bigendian = BIG_ENDIAN
    msg.point_step = 4 * len(POINT_FIELDS)
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = False
    msg.data = _byte_array(points.astype(np.float32, copy=False))
    return msg


def points_from_message(msg) -> np.ndarray:
    """PointCloud2 written by points_message -> (h, w, 4) float32 (for tests and tools)."""
    data = np.frombuffer(msg.data, np.float32)
    return data.reshape(msg.height, msg.width, msg.point_step // 4)


def array_from_image(msg) -> np.ndarray:
    """A 32FC1 or 8-bit Image -> (H, W[, C]) array (for tests and tools; respects step)."""
    if msg.encoding == FLOAT32_ENCODING:
        rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 4]
        return rows.copy().view(">f4" if msg.is_bigendian else "<f4").astype(np.float32)
    view, _ = image_to_array(msg)
    return view if view.shape[2] > 1 else view[..., 0]
