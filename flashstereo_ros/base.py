"""What every pipeline (CPU, GPU-resident, stock) shares: `infer` and `submit` on top of `process`."""
from __future__ import annotations

import numpy as np

from .contract import Geometry
from .depth import StereoOutput


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
    returning a `depth.StereoOutput`."""

    geometry: Geometry

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
