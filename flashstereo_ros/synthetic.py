"""Rectified synthetic stereo pairs with exact ground-truth disparity.

A scene is a stack of textured layers, each a planar surface d(u, v) = a + b*u + c*v (disparity in
left-image pixels) cut to a region of the left image. Both views sample the same layer texture at the
same surface point, so the pair is geometrically exact: left pixel (u, v) on a layer appears in the right
image at u - d(u, v). Nearer layers (larger disparity) hide farther ones, which gives real occlusions.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import cv2
import numpy as np

SCENES = ("planes", "slanted", "occlusion", "mixed")
REFERENCE_WIDTH = 640.0  # disparities below are given for a 640-pixel-wide image and scaled to the width
SENSOR_NOISE = 1.0  # grey levels, standard deviation


@dataclasses.dataclass
class StereoScene:
    """One synthetic pair: RGB uint8 images, left-view disparity and where it is observable."""

    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray  # (H, W) float32, pixels, left view
    valid: np.ndarray  # (H, W) bool: visible in both views (not occluded, not out of the right image)
    focal_px: float
    baseline_m: float

    @property
    def depth(self) -> np.ndarray:
        """Metric depth of the left view, Z = f * B / d."""
        return (self.focal_px * self.baseline_m / self.disparity).astype(np.float32)


@dataclasses.dataclass
class _Layer:
    a: float
    b: float
    c: float
    region: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (u, v) left coords -> bool
    texture: np.ndarray  # (H, W + margin, 3) float32, indexed by left-image coordinates

    def disparity_at(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.a + self.b * u + self.c * v

    def left_u_from_right(self, u_right: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Solve u - d(u, v) = u_right for the left coordinate u."""
        return (u_right + self.a + self.c * v) / (1.0 - self.b)


def make_scene(kind: str = "planes", height: int = 480, width: int = 640, seed: int = 0,
               focal_px: float | None = None, baseline_m: float = 0.12) -> StereoScene:
    """Render one scene of the given kind (see SCENES) at height x width."""
    if kind not in SCENES:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {SCENES}")
    if height < 16 or width < 16:
        raise ValueError(f"scene size {height}x{width} is too small")
    rng = np.random.default_rng(seed)
    scale = width / REFERENCE_WIDTH
    layers = _LAYOUTS[kind](rng, height, width, scale)
    margin = int(np.ceil(max(_max_disparity(layer, height, width) for layer in layers))) + 8
    for layer in layers:
        layer.texture = _texture(rng, height, width + margin)
    left, left_disp, left_id = _render(layers, height, width, view="left")
    right, _, right_id = _render(layers, height, width, view="right")
    left = _finish(left, rng)
    right = _finish(right, rng)

    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    u_right = np.rint(u - left_disp).astype(np.int64)
    inside = u_right >= 0
    seen = np.zeros_like(inside)
    rows = np.broadcast_to(np.arange(height)[:, None], u_right.shape)
    seen[inside] = right_id[rows[inside], u_right[inside]] == left_id[inside]
    return StereoScene(left, right, left_disp.astype(np.float32), inside & seen,
                       float(focal_px if focal_px is not None else 0.8 * width), baseline_m)


def _render(layers, height, width, view):
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    best = np.full((height, width), -np.inf, np.float32)
    ident = np.full((height, width), -1, np.int32)
    for index, layer in enumerate(layers):
        u_left = u if view == "left" else layer.left_u_from_right(u, v)
        disp = layer.disparity_at(u_left, v)
        covered = layer.region(u_left, v) & (disp > best)
        sample = cv2.remap(layer.texture, u_left.astype(np.float32), v, cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_REFLECT)
        image[covered] = sample[covered]
        best[covered] = disp[covered]
        ident[covered] = index
    return image, best, ident


def _texture(rng, height, width):
    """Band-limited multi-scale noise around a random base colour (natural-image-like spectrum)."""
    grey = np.zeros((height, width), np.float32)
    for sigma, weight in ((1.0, 0.35), (2.0, 0.3), (4.0, 0.2), (8.0, 0.15)):
        noise = rng.standard_normal((height, width)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
        grey += weight * noise / (noise.std() + 1e-6)
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    tint = rng.uniform(0.7, 1.0, size=3).astype(np.float32)
    return np.clip(base + 38.0 * grey[..., None] * tint, 0, 255)


def _finish(image, rng):
    noisy = image + rng.normal(0.0, SENSOR_NOISE, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _max_disparity(layer, height, width):
    corners_u = np.array([0, width, 0, width], np.float32)
    corners_v = np.array([0, 0, height, height], np.float32)
    return float(np.max(layer.disparity_at(corners_u, corners_v)))


def _everywhere(u, v):
    return np.ones(u.shape, bool)


def _rect(x0, y0, x1, y1):
    return lambda u, v: (u >= x0) & (u < x1) & (v >= y0) & (v < y1)


def _disc(cx, cy, r):
    return lambda u, v: (u - cx) ** 2 + (v - cy) ** 2 < r * r


def _planes(rng, h, w, s):
    return [
        _Layer(12 * s, 0, 0, _everywhere, None),
        _Layer(30 * s, 0, 0, _rect(0.10 * w, 0.15 * h, 0.42 * w, 0.60 * h), None),
        _Layer(48 * s, 0, 0, _disc(0.66 * w, 0.40 * h, 0.17 * h), None),
        _Layer(70 * s, 0, 0, _rect(0.38 * w, 0.62 * h, 0.78 * w, 0.90 * h), None),
    ]


def _slanted(rng, h, w, s):
    # A ground plane whose disparity grows towards the bottom, a wall slanted in depth, a disc in front.
    return [
        _Layer(6 * s, 0, 34 * s / h, _everywhere, None),
        _Layer(20 * s, 24 * s / w, 0, _rect(0.08 * w, 0.10 * h, 0.55 * w, 0.55 * h), None),
        _Layer(56 * s, 0, 0, _disc(0.75 * w, 0.35 * h, 0.14 * h), None),
    ]


def _occlusion(rng, h, w, s):
    # A picket fence: vertical bars well in front of the background, many occlusion edges.
    layers = [_Layer(10 * s, 0, 0, _everywhere, None)]
    bar, gap = 0.06 * w, 0.10 * w
    x = 0.05 * w
    while x + bar < w:
        layers.append(_Layer(44 * s, 0, 0, _rect(x, 0.12 * h, x + bar, 0.88 * h), None))
        x += bar + gap
    return layers


def _mixed(rng, h, w, s):
    layers = [_Layer(rng.uniform(4, 14) * s, 0, rng.uniform(0, 20) * s / h, _everywhere, None)]
    for _ in range(rng.integers(3, 6)):
        d = rng.uniform(16, 90) * s
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        if rng.random() < 0.5:
            hw, hh = rng.uniform(0.06, 0.2) * w, rng.uniform(0.06, 0.2) * h
            region = _rect(cx - hw, cy - hh, cx + hw, cy + hh)
        else:
            region = _disc(cx, cy, rng.uniform(0.06, 0.18) * h)
        slope = rng.uniform(-12, 12) * s / w
        layers.append(_Layer(d, slope, 0, region, None))
    return layers


_LAYOUTS = {"planes": _planes, "slanted": _slanted, "occlusion": _occlusion, "mixed": _mixed}
