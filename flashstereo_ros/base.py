"""What every pipeline (CPU, GPU-resident, stock) shares: `infer` and `submit` on top of `process`, the
context manager, the closed check, and the checks of the constructor arguments."""
from __future__ import annotations

import numbers

import numpy as np

from .contract import Geometry
from .depth import StereoOutput
from .errors import StereoInputError


def check_count(value, name: str) -> int | None:
    """None, or a positive integer (numpy integers too) as an int: TypeError for a str, float or bool,
    ValueError below 1, so that a wrong argument is named here and not deep inside a backend."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer or None, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value}")
    return int(value)


def check_input_size(input_h, input_w) -> tuple[int | None, int | None]:
    """The (input_h, input_w) constructor arguments, checked; None leaves a side to the engines."""
    return check_count(input_h, "input_h"), check_count(input_w, "input_w")


class CompletedFrame:
    """A frame computed when it was submitted (a pipeline with no asynchronous work to overlap)."""

    def __init__(self, output: StereoOutput):
        self._output = output

    def done(self) -> bool:
        return True

    def result(self) -> StereoOutput:
        return self._output


class StereoPipelineBase:
    """Subclasses set `geometry` at load and implement `process(left, right, encoding, right_encoding, ...)`
    returning a `depth.StereoOutput`, and `close()`, which sets `_closed`."""

    geometry: Geometry
    _closed = False

    @property
    def input_size(self) -> tuple[int, int]:
        """The engines' (height, width)."""
        return self.geometry.height, self.geometry.width

    def infer(self, left: np.ndarray, right: np.ndarray, encoding: str | None = None,
              right_encoding: str | None = None) -> np.ndarray:
        """Disparity of a rectified pair, in pixels of the input images, at their resolution."""
        return self.process(left, right, encoding, right_encoding).disparity

    def submit(self, left: np.ndarray, right: np.ndarray, *args, **kwargs):
        """process()'s frame as an object with result() and done(); here computed at once (the GPU-resident
        pipeline returns before its GPU work is done)."""
        return CompletedFrame(self.process(left, right, *args, **kwargs))

    def _check_open(self) -> None:
        if self._closed:
            raise StereoInputError("this pipeline is closed; create a new pipeline to process more frames")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
