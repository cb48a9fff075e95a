"""Disparity -> metric depth (REP 118) and an organised, coloured point cloud: the numpy reference.

kernels/depth_points.cu performs exactly these float32 operations in this order, so the GPU output
equals this bit for bit (tests compare with np.array_equal).

Conventions (as stereo_msgs/DisparityImage and stereo_image_proc):
- the published disparity is d' = d - (cx_left - cx_right), so that Z = f * T / d';
- depth: NaN where d' is not finite or below min_disparity; +inf where d' <= 0 (at or beyond infinity)
  or Z > max_depth; -inf where Z < min_depth;
- points: x = (u - cx) * Z / fx, y = (v - cy) * Z / fy, z = Z for finite Z, NaN otherwise; rgb is the
  left pixel packed as 0x00RRGGBB in a float32 (PCL/RViz's "rgb" field); decimation keeps every
  stride-th row and column starting at 0.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from .errors import StereoInputError


MAX_POINTS_STRIDE = 2**31 - 1  # the kernels take it as an int32 (a stride past the image gives one point)


@dataclasses.dataclass(frozen=True)
class StereoCamera:
    """Rectified pair geometry at the published (camera) resolution, from the two CameraInfo P matrices."""

    fx: float
    fy: float
    cx: float
    cy: float
    baseline_m: float  # T, positive, metres
    cx_offset: float  # cx_left - cx_right, pixels
    width: int
    height: int

    def __post_init__(self):
        """The rules every camera obeys, however it was built (from_projections adds what P can tell)."""
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise StereoInputError(f"camera {name} must be an integer >= 1, got {value!r}")
        values = {name: getattr(self, name) for name in ("fx", "fy", "cx", "cy", "baseline_m", "cx_offset")}
        if not all(_finite(v) for v in values.values()):
            raise StereoInputError(f"camera values must be finite numbers, got {values}")
        if self.fx <= 0 or self.fy <= 0:
            raise StereoInputError(f"camera focal length must be positive (fx={self.fx}, fy={self.fy}): from a "
                                   "CameraInfo, is its P matrix filled in?")
        if self.baseline_m <= 0:
            raise StereoInputError(f"stereo baseline must be positive, got {self.baseline_m} m")
        # depth = f*T/d' uses f*T rounded to float32: it must neither underflow to 0 nor overflow to inf
        focal_baseline = self.focal_baseline
        if not (np.isfinite(focal_baseline) and focal_baseline > 0):
            raise StereoInputError(f"fx * baseline = {self.fx} * {self.baseline_m} m is {focal_baseline} in float32: "
                                   "the baseline (right P[0,3] = -fx * baseline) is implausible")

    @classmethod
    def from_projections(cls, p_left, p_right, width: int, height: int,
                         window: tuple[float, float, float, float] | None = None) -> "StereoCamera":
        """From the 3x4 (or 12-element) P matrices. window = (x0, y0, w, h): the part of the frame P describes
        that the width x height images show (a CameraInfo's ROI, or its whole size when the images were
        resized or binned); None: the images are that frame."""
        try:
            pl, pr = np.asarray(p_left, np.float64), np.asarray(p_right, np.float64)
        except (TypeError, ValueError) as exc:
            raise StereoInputError(f"camera projection matrices must be numbers ({exc})") from None
        if pl.size != 12 or pr.size != 12:
            raise StereoInputError(f"camera projection matrices P must have 12 elements (3x4), got {pl.size} "
                                   f"(left) and {pr.size} (right)")
        pl, pr = pl.reshape(3, 4), pr.reshape(3, 4)
        if not (np.isfinite(pl).all() and np.isfinite(pr).all()):
            raise StereoInputError("camera projection matrices contain NaN or inf")
        fx, fy, cx, cy = pl[0, 0], pl[1, 1], pl[0, 2], pl[1, 2]
        if pr[0, 0] <= 0:
            raise StereoInputError(f"camera focal length must be positive (right fx={pr[0, 0]}): is the CameraInfo "
                                   "filled in (P matrix)?")
        baseline = -pr[0, 3] / pr[0, 0]
        if baseline <= 0:
            swapped = " (positive: are left and right swapped?)" if pr[0, 3] > 0 else ""
            raise StereoInputError(f"stereo baseline must be positive, right P[0,3] = {pr[0, 3]}{swapped} gives "
                                   f"T = {baseline}: the right CameraInfo needs P[0,3] = -fx * baseline")
        x0, y0, w, h = window if window is not None else (0, 0, width, height)
        if w <= 0 or h <= 0:
            raise StereoInputError(f"CameraInfo size {w}x{h} is not valid")
        sx, sy = width / w, height / h
        # the left fx, fy and the sizes are checked by __post_init__
        return cls(fx * sx, fy * sy, (cx - x0) * sx, (cy - y0) * sy, baseline, (cx - pr[0, 2]) * sx, width, height)

    @property
    def focal_baseline(self) -> np.float32:
        """f * T in float32, the one constant depth = f*T/d' needs (rounded once, on the host)."""
        with np.errstate(over="ignore"):  # an absurd f*T becomes inf, which __post_init__ refuses
            return np.float32(self.fx * self.baseline_m)


@dataclasses.dataclass(frozen=True)
class DepthLimits:
    """Where depth stops being a measurement (module docstring): finite min_disparity (pixels, may be negative),
    0 <= min_depth < max_depth (metres; max_depth may be inf: no limit)."""

    min_disparity: float = 0.0
    min_depth: float = 0.0
    max_depth: float = float("inf")

    def __post_init__(self):
        if not (_finite(self.min_disparity) and _finite(self.min_depth) and self.min_depth >= 0):
            raise StereoInputError(f"min_disparity and min_depth must be finite numbers, min_depth >= 0; got {self}")
        if not ((_finite(self.max_depth) or self.max_depth == math.inf) and self.max_depth > self.min_depth):
            raise StereoInputError(f"max_depth ({self.max_depth!r}) must be a number above min_depth "
                                   f"({self.min_depth!r}), or inf for no limit")


def _finite(value) -> bool:
    """A real number (not a bool) that is finite as a float."""
    try:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def depth_image(disparity: np.ndarray, camera: StereoCamera, limits: DepthLimits = DepthLimits()) -> np.ndarray:
    """(H,W) published disparity d' -> (H,W) float32 depth in metres, REP 118 special values."""
    d = disparity.astype(np.float32, copy=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = camera.focal_baseline / d
    z = np.where(d <= 0, np.float32(np.inf), z)
    z = np.where(z > np.float32(limits.max_depth), np.float32(np.inf), z)
    z = np.where(z < np.float32(limits.min_depth), np.float32(-np.inf), z)
    z = np.where(~np.isfinite(d) | (d < np.float32(limits.min_disparity)), np.float32(np.nan), z)
    return z.astype(np.float32, copy=False)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (H,W) float32 whose bits are 0x00RRGGBB."""
    rgb = rgb.astype(np.uint32)
    return ((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]).view(np.float32)


def point_cloud(depth: np.ndarray, rgb: np.ndarray, camera: StereoCamera, stride: int = 1) -> np.ndarray:
    """(H,W) depth + (H,W,3) uint8 RGB -> (ceil(H/s), ceil(W/s), 4) float32 x, y, z, rgb; NaN where no point."""
    if stride < 1:
        raise StereoInputError(f"points stride must be >= 1, got {stride}")
    if rgb.shape[:2] != depth.shape:
        raise StereoInputError(f"colour image {rgb.shape[:2]} and depth {depth.shape} differ in size")
    z = depth[::stride, ::stride].astype(np.float32)
    v, u = np.mgrid[0:depth.shape[0]:stride, 0:depth.shape[1]:stride].astype(np.float32)
    finite = np.isfinite(z)
    z = np.where(finite, z, np.float32(np.nan))
    x = (u - np.float32(camera.cx)) * z / np.float32(camera.fx)
    y = (v - np.float32(camera.cy)) * z / np.float32(camera.fy)
    cloud = np.empty(z.shape + (4,), np.float32)
    cloud[..., 0], cloud[..., 1], cloud[..., 2] = x, y, z
    cloud[..., 3] = pack_rgb(rgb[::stride, ::stride])
    return cloud


@dataclasses.dataclass
class StereoOutput:
    """What one frame produced. disparity is the published d' (raw d when no camera was given)."""

    disparity: np.ndarray  # (H, W) float32, camera resolution
    depth: np.ndarray | None = None  # (H, W) float32 metres, REP 118
    points: np.ndarray | None = None  # (ceil(H/s), ceil(W/s), 4) float32 x, y, z, rgb


def rgb_view(image: np.ndarray, encoding: str) -> np.ndarray:
    """(H,W,C) uint8 in any supported encoding -> (H,W,3) uint8 RGB (for the point colours)."""
    from .images import ENCODINGS

    channels, order = ENCODINGS[encoding]
    return np.repeat(image[..., :1], 3, axis=2) if channels == 1 else image[..., list(order)]


def check_request(size, camera: StereoCamera | None, want_depth: bool, want_points: bool, points_stride,
                  limits: DepthLimits = DepthLimits()) -> None:
    """StereoInputError unless a frame of `size` (h, w) can give what it asks for (every pipeline checks
    this before it runs the frame)."""
    if not isinstance(limits, DepthLimits):
        raise StereoInputError(f"limits must be a DepthLimits, got {type(limits).__name__}")
    if camera is not None and not isinstance(camera, StereoCamera):
        raise StereoInputError(f"camera must be a StereoCamera (StereoCamera.from_projections) or None, got "
                               f"{type(camera).__name__}")
    if camera is None and (want_depth or want_points):
        raise StereoInputError("depth and points need the stereo camera (CameraInfo of both sides)")
    if camera is not None and (camera.height, camera.width) != tuple(size):
        raise StereoInputError(f"disparity {tuple(size)} does not match the camera's {camera.height}x{camera.width}")
    if want_points and (isinstance(points_stride, bool) or not isinstance(points_stride, numbers.Integral)
                        or not 1 <= points_stride <= MAX_POINTS_STRIDE):
        raise StereoInputError(f"points stride must be an integer >= 1 and <= {MAX_POINTS_STRIDE}, "
                               f"got {points_stride!r}")


def outputs_from_disparity(raw: np.ndarray, left: np.ndarray, encoding: str, camera: StereoCamera | None,
                           limits: DepthLimits, want_depth: bool, want_points: bool,
                           points_stride: int) -> StereoOutput:
    """The host path of everything after the disparity: offset, depth, points."""
    check_request(raw.shape, camera, want_depth, want_points, points_stride, limits)
    if camera is None:
        return StereoOutput(raw)
    disparity = raw - np.float32(camera.cx_offset) if camera.cx_offset else raw
    out = StereoOutput(disparity)
    if want_depth or want_points:
        depth = depth_image(disparity, camera, limits)
        out.depth = depth if want_depth else None
        if want_points:
            out.points = point_cloud(depth, rgb_view(left, encoding), camera, points_stride)
    return out
