"""The stock pipeline: the seed's host-bouncing data flow, kept as the benchmark baseline and test oracle.

Same engines and the same GWC kernel as FlashStereoPipeline, but every hand-off goes through the host:
  host preprocess (images.to_planar_rgb) -> H2D float images -> feature runner
  -> all six feature outputs D2H -> numpy gwc.normalize_groups on the host -> H2D normalised features
  -> GWC kernel -> volume D2H -> every post input (six features + volume) H2D again -> post runner
  -> disparity D2H -> host resize to the camera size (images.disparity_to_camera) -> depth/points in numpy.
Host buffers are pinned and allocated once (a fair baseline: the copies run at full speed, nothing is
allocated per frame); it synchronises where the host needs the data, as the seed did.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from . import contract, cuda, gwc, images, kernels, resources
from .base import StereoPipelineBase, check_input_size
from .depth import DepthLimits, StereoCamera, StereoOutput, check_request, outputs_from_disparity
from .engines import load_engine_pair
from .pipeline import Traffic
from .runners import DEVICE

GPU_STAGES = ("h2d", "feature", "d2h_features", "h2d_features", "gwc", "d2h_volume", "h2d_post", "post", "d2h")


class StockPipeline(StereoPipelineBase):
    """left, right (uint8 images) -> disparity, with every intermediate bounced through the host."""

    def __init__(self, feat_engine_path: str | Path | None = None, post_engine_path: str | Path | None = None,
                 input_h: int | None = None, input_w: int | None = None, backend: str | None = None,
                 resize: bool = True, device_id: int = 0, config: contract.ModelConfig | None = None):
        input_h, input_w = check_input_size(input_h, input_w)
        self.device_id = device_id
        self._ctx = cuda.primary_context(device_id)
        self._lock = threading.RLock()
        self._released = False
        self._device_buffers: list[cuda.DeviceBuffer] = []
        self._pinned_buffers: list[cuda.PinnedBuffer] = []
        self.stream = cuda.Stream(device_id)
        default_feat, default_post = resources.bundled_models(".pt2")
        self.engines = load_engine_pair(feat_engine_path or default_feat, post_engine_path or default_post,
                                        backend, DEVICE, stream=self.stream.ptr, device_id=device_id,
                                        input_size=(input_h, input_w), config=config)
        try:
            self.geometry = geo = self.engines.geometry
            self.resize = resize
            self._allocate()
            self._bind()
            feat = geo.feature_outputs[contract.FEATURES_LEFT_04]
            kernel = kernels.GwcKernel(feat.shape[1] // geo.groups, geo.disparities, geo.volume_dtype, device_id)
            self._gwc_launch = kernel.prepare(*self.normalized_dev, self.volume_dev, geo.groups, *geo.quarter_size)
            self._events = {name: (cuda.Event(device_id), cuda.Event(device_id)) for name in GPU_STAGES}
            self.timings: dict[str, float] = {}
            self._traffic = Traffic()
            self._ctx.synchronize()
        except Exception:
            self.close()
            raise

    def _device(self, spec_shape, dtype) -> cuda.DeviceBuffer:
        buf = cuda.DeviceBuffer(spec_shape, dtype, self.device_id)
        self._device_buffers.append(buf)
        return buf

    def _pinned(self, spec_shape, dtype) -> cuda.PinnedBuffer:
        buf = cuda.PinnedBuffer(spec_shape, dtype, self.device_id)
        self._pinned_buffers.append(buf)
        return buf

    def _allocate(self) -> None:
        geo = self.geometry
        self.inputs_host = {n: self._pinned(s.shape, s.dtype) for n, s in geo.image_inputs.items()}
        self.inputs_dev = {n: self._device(s.shape, s.dtype) for n, s in geo.image_inputs.items()}
        self.features_dev = {n: self._device(s.shape, s.dtype) for n, s in geo.feature_outputs.items()}
        self.features_host = {n: self._pinned(s.shape, s.dtype) for n, s in geo.feature_outputs.items()}
        quarter = geo.feature_outputs[contract.FEATURES_LEFT_04].shape
        self.normalized_host = (self._pinned(quarter, np.float16), self._pinned(quarter, np.float16))
        self.normalized_dev = (self._device(quarter, np.float16), self._device(quarter, np.float16))
        volume = geo.post_inputs[contract.GWC_VOLUME]
        self.volume_dev = self._device(volume.shape, volume.dtype)
        self.volume_host = self._pinned(volume.shape, volume.dtype)
        # the post engine has its own input buffers, filled from the host as the seed did
        self.post_dev = {n: self._device(s.shape, s.dtype) for n, s in geo.post_inputs.items()}
        self.post_host = {}
        for name, spec in geo.post_inputs.items():
            if name == contract.GWC_VOLUME:
                self.post_host[name] = self.volume_host
            elif spec.dtype == self.features_host[name].dtype:
                self.post_host[name] = self.features_host[name]
            else:  # a dtype the feature engine does not produce: cast on the host
                self.post_host[name] = self._pinned(spec.shape, spec.dtype)
        self.disparity_dev = self._device(geo.disparity.shape, geo.disparity.dtype)
        self.disparity_host = self._pinned(geo.disparity.shape, geo.disparity.dtype)

    def _bind(self) -> None:
        self.engines.bind({name: buf.ptr for name, buf in {**self.inputs_dev, **self.features_dev}.items()},
                          {name: buf.ptr for name, buf in self.post_dev.items()}, self.disparity_dev.ptr,
                          lambda spec: self._device(spec.shape, spec.dtype).ptr)

    @property
    def traffic(self) -> dict[str, int]:
        return self._traffic.as_dict()

    def process(self, left: np.ndarray, right: np.ndarray, encoding: str | None = None,
                right_encoding: str | None = None, camera: StereoCamera | None = None,
                limits: DepthLimits = DepthLimits(), want_depth: bool = False, want_points: bool = False,
                points_stride: int = 1) -> StereoOutput:
        """One frame the stock way; `timings` mixes CUDA-event (device) and host-clock (host) stages."""
        left, right, enc_left, enc_right = images.check_pair(left, right, encoding, right_encoding)
        size = tuple(left.shape[:2])
        images.check_size(size, self.input_size, self.resize)
        check_request(size, camera, want_depth, want_points, points_stride, limits)  # before the engines run
        with self._lock:
            self._check_open()
            self._ctx.make_current()
            return self._frame(left, right, enc_left, enc_right, size, camera, limits, want_depth, want_points,
                               points_stride)

    def _frame(self, left, right, enc_left, enc_right, size, camera, limits, want_depth, want_points, stride):
        geo, s, ev = self.geometry, self.stream, self._events
        traffic, host = Traffic(), {}
        start = time.perf_counter()
        images.to_planar_rgb(left, enc_left, self.input_size, out=self.inputs_host[contract.LEFT].array)
        images.to_planar_rgb(right, enc_right, self.input_size, out=self.inputs_host[contract.RIGHT].array)
        host["preprocess"] = time.perf_counter() - start

        ev["h2d"][0].record(s)
        for name in contract.FEATURE_INPUTS:
            traffic.add_h2d(self.inputs_dev[name].copy_from_host_async(self.inputs_host[name], s))
        ev["h2d"][1].record(s)
        ev["feature"][0].record(s)
        self.engines.feature.enqueue(s.ptr)
        ev["feature"][1].record(s)
        ev["d2h_features"][0].record(s)
        for name in contract.FEATURE_OUTPUTS:
            traffic.add_d2h(self.features_dev[name].copy_to_host_async(self.features_host[name], s))
        ev["d2h_features"][1].record(s)
        s.synchronize()

        t = time.perf_counter()
        for buf, name in zip(self.normalized_host, (contract.FEATURES_LEFT_04, contract.FEATURES_RIGHT_04)):
            buf.array[...] = gwc.normalize_groups(self.features_host[name].array, geo.groups)
        host["norm"] = time.perf_counter() - t

        ev["h2d_features"][0].record(s)
        for dev, pinned in zip(self.normalized_dev, self.normalized_host):
            traffic.add_h2d(dev.copy_from_host_async(pinned, s))
        ev["h2d_features"][1].record(s)
        ev["gwc"][0].record(s)
        self._gwc_launch.run(s)
        ev["gwc"][1].record(s)
        ev["d2h_volume"][0].record(s)
        traffic.add_d2h(self.volume_dev.copy_to_host_async(self.volume_host, s))
        ev["d2h_volume"][1].record(s)
        s.synchronize()

        t = time.perf_counter()
        for name, pinned in self.post_host.items():
            if name != contract.GWC_VOLUME and pinned is not self.features_host[name]:
                pinned.array[...] = self.features_host[name].array  # astype on the host
        host["cast"] = time.perf_counter() - t
        ev["h2d_post"][0].record(s)
        for name in self.post_dev:
            traffic.add_h2d(self.post_dev[name].copy_from_host_async(self.post_host[name], s))
        ev["h2d_post"][1].record(s)
        ev["post"][0].record(s)
        self.engines.post.enqueue(s.ptr)
        ev["post"][1].record(s)
        ev["d2h"][0].record(s)
        traffic.add_d2h(self.disparity_dev.copy_to_host_async(self.disparity_host, s))
        ev["d2h"][1].record(s)
        s.synchronize()

        t = time.perf_counter()
        engine_disp = self.disparity_host.array.reshape(self.input_size).astype(np.float32)
        raw = images.disparity_to_camera(engine_disp, size)  # engine_disp is already a fresh copy
        host["postprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        output = outputs_from_disparity(raw, left, enc_left, camera, limits, want_depth, want_points, stride)
        host["depth_points"] = time.perf_counter() - t
        end = time.perf_counter()

        timings = {name: a.elapsed_ms(b) for name, (a, b) in ev.items()}
        timings.update({name: seconds * 1e3 for name, seconds in host.items()})
        timings["total"] = (end - start) * 1e3  # host clock: the frame includes host stages
        self.timings = timings
        self._traffic = traffic
        return output

    def intermediates(self) -> dict[str, np.ndarray]:
        """Copies of the last frame's host-side tensors, keyed as FlashStereoPipeline.intermediates()."""
        with self._lock:
            out = {name: buf.array.copy() for name, buf in self.inputs_host.items()}
            out.update({name: buf.array.copy() for name, buf in self.features_host.items()})
            out["normalized_left"] = self.normalized_host[0].array.copy()
            out["normalized_right"] = self.normalized_host[1].array.copy()
            out[contract.GWC_VOLUME] = self.volume_host.array.copy()
            out["disparity_engine"] = self.disparity_host.array.copy()
            return out

    def memory_bytes(self) -> dict[str, int]:
        device = sum(b.nbytes for b in self._device_buffers) + self.engines.device_bytes()
        return {"device": int(device), "host": int(sum(b.nbytes for b in self._pinned_buffers))}

    def close(self) -> None:
        if getattr(self, "_released", True):
            return
        self._released = self._closed = True
        try:
            self._ctx.make_current()
            self.stream.synchronize()
        except Exception:  # closing after a device error must still release what it can
            pass
        if hasattr(self, "engines"):
            self.engines.close()
        for buf in self._device_buffers + self._pinned_buffers:
            buf.close()
        self._device_buffers, self._pinned_buffers = [], []
        for pair in getattr(self, "_events", {}).values():
            for event in pair:
                event.close()
        self.stream.close()
