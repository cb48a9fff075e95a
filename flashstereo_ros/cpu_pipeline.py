"""The CPU pipeline: both stages in ONNX Runtime, the volume with the numpy reference.

Same API as FlashStereoPipeline, for machines without a GPU (and the CI path). Host buffers are
allocated once and bound to ONNX Runtime, so a frame allocates only numpy temporaries; as those buffers
are shared by every frame, one frame runs at a time (calls from several threads take turns).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from . import contract, gwc, images, resources
from .base import StereoPipelineBase, check_count, check_input_size
from .depth import DepthLimits, StereoCamera, StereoOutput, check_request, outputs_from_disparity
from .engines import load_engine_pair
from .runners import HOST


class CpuStereoPipeline(StereoPipelineBase):
    """left, right (uint8 images) -> disparity (float32, camera resolution, pixels), all on the CPU."""

    def __init__(self, feat_engine_path: str | Path | None = None, post_engine_path: str | Path | None = None,
                 input_h: int | None = None, input_w: int | None = None, backend: str | None = None,
                 resize: bool = True, threads: int | None = None, config: contract.ModelConfig | None = None):
        input_size = check_input_size(input_h, input_w)
        threads = check_count(threads, "threads")
        self._lock = threading.RLock()
        default_feat, default_post = resources.bundled_models(".onnx")
        self.engines = load_engine_pair(feat_engine_path or default_feat, post_engine_path or default_post,
                                        backend, HOST, input_size=input_size, config=config, threads=threads)
        self.geometry = geo = self.engines.geometry
        self.resize = resize
        self.buffers: dict[str, np.ndarray] = {}
        for name, spec in list(geo.image_inputs.items()) + list(geo.feature_outputs.items()):
            self.buffers[name] = np.zeros(spec.shape, spec.dtype)
        # a post input whose dtype differs from the feature output gets its own buffer and a cast
        self.post_buffers = {name: (self.buffers[name] if spec.dtype == self.buffers[name].dtype
                                    else np.zeros(spec.shape, spec.dtype))
                             for name, spec in geo.post_inputs.items() if name != contract.GWC_VOLUME}
        self.post_buffers[contract.GWC_VOLUME] = np.zeros(geo.post_inputs[contract.GWC_VOLUME].shape,
                                                          geo.volume_dtype)
        self.disparity = np.zeros(geo.disparity.shape, geo.disparity.dtype)
        self._bind()
        self.timings: dict[str, float] = {}
        self.normalized: tuple[np.ndarray, np.ndarray] | None = None

    def _bind(self) -> None:
        self.engines.bind({name: buf.ctypes.data for name, buf in self.buffers.items()},
                          {name: buf.ctypes.data for name, buf in self.post_buffers.items()},
                          self.disparity.ctypes.data, self._scratch)

    def _scratch(self, spec: contract.TensorSpec) -> int:
        buffer = self.buffers.setdefault(f"scratch:{spec.name}", np.zeros(spec.shape, spec.dtype))
        return buffer.ctypes.data

    def process(self, left: np.ndarray, right: np.ndarray, encoding: str | None = None,
                right_encoding: str | None = None, camera: StereoCamera | None = None,
                limits: DepthLimits = DepthLimits(), want_depth: bool = False, want_points: bool = False,
                points_stride: int = 1) -> StereoOutput:
        """One frame: disparity (published convention when camera is given), and depth/points on request."""
        left, right, enc_left, enc_right = images.check_pair(left, right, encoding, right_encoding)
        size = left.shape[:2]
        images.check_size(size, self.input_size, self.resize)
        check_request(size, camera, want_depth, want_points, points_stride, limits)  # before the engines run
        with self._lock:
            self._check_open()
            return self._frame(left, right, enc_left, enc_right, size, camera, limits, want_depth, want_points,
                               points_stride)

    def _frame(self, left, right, enc_left, enc_right, size, camera, limits, want_depth, want_points, stride):
        geo, stamps = self.geometry, [time.perf_counter()]
        images.to_planar_rgb(left, enc_left, self.input_size, out=self.buffers[contract.LEFT])
        images.to_planar_rgb(right, enc_right, self.input_size, out=self.buffers[contract.RIGHT])
        stamps.append(time.perf_counter())
        self.engines.feature.enqueue(0)
        stamps.append(time.perf_counter())
        left_n = gwc.normalize_groups(self.buffers[contract.FEATURES_LEFT_04], geo.groups)
        right_n = gwc.normalize_groups(self.buffers[contract.FEATURES_RIGHT_04], geo.groups)
        self.normalized = (left_n, right_n)
        stamps.append(time.perf_counter())
        volume = self.post_buffers[contract.GWC_VOLUME]
        volume[...] = gwc.gwc_volume(left_n, right_n, geo.groups, geo.disparities, volume.dtype)
        for name, buffer in self.post_buffers.items():
            if name != contract.GWC_VOLUME and buffer is not self.buffers[name]:
                buffer[...] = self.buffers[name]
        stamps.append(time.perf_counter())
        self.engines.post.enqueue(0)
        stamps.append(time.perf_counter())
        raw = images.disparity_to_camera(self.disparity.reshape(self.input_size).astype(np.float32), size)
        stamps.append(time.perf_counter())
        output = outputs_from_disparity(raw, left, enc_left, camera, limits, want_depth, want_points, stride)
        stamps.append(time.perf_counter())
        stages = ("preprocess", "feature", "norm", "gwc", "post", "postprocess", "depth_points")
        self.timings = {stage: (b - a) * 1e3 for stage, a, b in zip(stages, stamps, stamps[1:])}
        self.timings["total"] = (stamps[-1] - stamps[0]) * 1e3
        return output

    def memory_bytes(self) -> dict[str, int]:
        host = sum(b.nbytes for b in self.buffers.values()) + self.disparity.nbytes
        host += sum(b.nbytes for n, b in self.post_buffers.items() if b is not self.buffers.get(n))
        return {"host": host, "device": 0}

    def close(self) -> None:
        """Release the runners (after the frame in progress, if any); idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.engines.close()
