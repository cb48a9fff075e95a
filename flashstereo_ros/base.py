"""What every pipeline (CPU, GPU-resident, stock) shares: the seed's `infer` on top of `process`."""
from __future__ import annotations

import numpy as np

from .contract import Geometry


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
