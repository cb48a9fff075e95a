"""Image checks and host-side conversions shared by every pipeline.

An input image is a uint8 numpy array, (H, W) or (H, W, C), with an encoding that says what the
channels hold. The GPU pipeline does the conversion in kernels/preprocess.cu; the CPU and stock
pipelines use `to_planar_rgb` here, which is the same bilinear (half-pixel-centre) arithmetic.
"""
from __future__ import annotations

import cv2
import numpy as np

from .errors import StereoInputError

# encoding -> (channels, index of R, G, B in the pixel); mono replicates its one channel
ENCODINGS = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
    "8UC1": (1, (0, 0, 0)),
}
DEFAULT_ENCODING_FOR_CHANNELS = {1: "mono8", 3: "rgb8", 4: "rgba8"}


def guess_encoding(image: np.ndarray) -> str:
    """rgb8/rgba8/mono8 from the array's shape (the seed API takes RGB arrays)."""
    channels = 1 if image.ndim == 2 else image.shape[2] if image.ndim == 3 else 0
    if channels not in DEFAULT_ENCODING_FOR_CHANNELS:
        raise StereoInputError(f"image must be (H,W) or (H,W,1|3|4), got shape {image.shape}")
    return DEFAULT_ENCODING_FOR_CHANNELS[channels]


def check_image(image, encoding: str | None, what: str = "image") -> tuple[np.ndarray, str]:
    """Validate one image; return it as (H, W, C) uint8 and its encoding."""
    if not isinstance(image, np.ndarray):
        raise StereoInputError(f"{what} must be a numpy array, got {type(image).__name__}")
    image = np.asarray(image)  # a subclass such as np.matrix (which cannot become 3-D) as a plain view
    if image.dtype != np.uint8:
        raise StereoInputError(f"{what} must be uint8 (8-bit images), got dtype {image.dtype}")
    encoding = encoding or guess_encoding(image)
    if encoding not in ENCODINGS:
        raise StereoInputError(f"{what} encoding '{encoding}' is not supported; use one of {sorted(ENCODINGS)}")
    channels = ENCODINGS[encoding][0]
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise StereoInputError(f"{what} has shape {image.shape} but encoding '{encoding}' needs {channels} channel(s)")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise StereoInputError(f"{what} is empty ({image.shape[0]}x{image.shape[1]})")
    return image, encoding


def check_pair(left, right, encoding: str | None = None, right_encoding: str | None = None):
    """Validate a stereo pair: both uint8, same size, supported encodings. Returns (left, right, enc_l, enc_r)."""
    left, enc_left = check_image(left, encoding, "left image")
    right, enc_right = check_image(right, right_encoding or encoding, "right image")
    if left.shape[:2] != right.shape[:2]:
        raise StereoInputError(f"left image is {left.shape[1]}x{left.shape[0]} but right image is "
                               f"{right.shape[1]}x{right.shape[0]}: a rectified pair has one size")
    return left, right, enc_left, enc_right


def check_size(camera: tuple[int, int], engine: tuple[int, int], resize: bool) -> None:
    """Raise when the camera size differs from the engine size and resizing is off."""
    if camera != engine and not resize:
        raise StereoInputError(f"image size {camera[1]}x{camera[0]} differs from the engine's {engine[1]}x{engine[0]} "
                               "and resizing is disabled (resize=False, --no-resize): allow resizing or build "
                               "engines for this size")
    if camera[0] < 2 or camera[1] < 2:
        raise StereoInputError(f"image size {camera[1]}x{camera[0]} is too small")


def to_planar_rgb(image: np.ndarray, encoding: str, size: tuple[int, int], out: np.ndarray | None = None,
                  dtype=np.float32) -> np.ndarray:
    """(H,W,C) uint8 -> (1,3,h,w) RGB 0..255 at size=(h,w), bilinear with half-pixel centres."""
    channels, order = ENCODINGS[encoding]
    h, w = size
    rgb = image[:, :, list(order)] if channels != 1 else np.repeat(image, 3, axis=2)
    rgb = rgb.astype(np.float32)
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    planar = np.ascontiguousarray(rgb.transpose(2, 0, 1))[None]
    if out is None:
        return planar.astype(dtype, copy=False)
    out[...] = planar
    return out


def disparity_to_camera(disparity: np.ndarray, camera: tuple[int, int]) -> np.ndarray:
    """Engine-size disparity (h,w) -> camera size, values rescaled by the width ratio."""
    h, w = disparity.shape
    if (h, w) == tuple(camera):
        return disparity
    scale = camera[1] / w
    return cv2.resize(disparity, (camera[1], camera[0]), interpolation=cv2.INTER_LINEAR) * np.float32(scale)
