"""The GPU-resident pipeline: two uint8 images in, one disparity out, everything between on the device.

Per frame, on one CUDA stream (DESIGN.md, "Data flow"):
  host images -> pinned staging -> one H2D per image (uint8, camera size)
  preprocess kernel -> feature engine input          (resize when the camera size != engine size)
  feature runner    -> persistent feature buffers
  group_norm kernel -> normalised 1/4 features (half)
  gwc kernel        -> gwc_volume (+ cast kernels where a post input's dtype differs)
  post runner       reads the feature buffers and the volume through the same device pointers
  resize_disparity  -> camera-size disparity, value-scaled, minus the principal-point offset
  [depth_image, point_cloud kernels only when asked]
  D2H of the disparity (and depth/points when asked) into pinned memory; one synchronisation.
Every stage boundary is a CUDA event. With use_cuda_graph=True the whole sequence is captured once per
camera setup (after a warm-up frame) and replayed. Buffers are allocated at load and when the camera
setup changes, never per frame.
"""
from __future__ import annotations

import dataclasses
import gc
import threading
import warnings
from pathlib import Path

import numpy as np

from . import contract, cuda, images, kernels, resources
from .depth import DepthLimits, StereoCamera, StereoOutput
from .engines import load_engine_pair
from .errors import ModelError, StereoInputError
from .runners import DEVICE

STAGES = ("h2d", "preprocess", "feature", "norm", "gwc", "post", "postprocess", "depth_points", "d2h")


class Traffic:
    """Host<->device bytes and copies of one frame, counted at every copy the pipeline issues."""

    def __init__(self):
        self.h2d = self.d2h = self.h2d_count = self.d2h_count = 0

    def add_h2d(self, nbytes: int) -> None:
        self.h2d += int(nbytes)
        self.h2d_count += 1

    def add_d2h(self, nbytes: int) -> None:
        self.d2h += int(nbytes)
        self.d2h_count += 1

    def as_dict(self) -> dict[str, int]:
        return {"h2d": self.h2d, "d2h": self.d2h, "h2d_count": self.h2d_count, "d2h_count": self.d2h_count}


@dataclasses.dataclass(frozen=True)
class FramePlan:
    """Everything that decides which operations a frame issues (a graph is captured per plan)."""

    size: tuple[int, int]
    encodings: tuple[str, str]
    camera: StereoCamera | None
    limits: DepthLimits
    want_depth: bool
    want_points: bool
    points_stride: int


class _CameraBuffers:
    """Buffers that depend on the camera size and encodings: staging, device images, outputs."""

    def __init__(self, pipe: "FlashStereoPipeline", size: tuple[int, int], encodings: tuple[str, str]):
        self.size, self.encodings = size, encodings
        h, w = size
        self.channels = tuple(images.ENCODINGS[e][0] for e in encodings)
        self.stage = tuple(pipe._pinned((h, w, c), np.uint8) for c in self.channels)
        self.image = tuple(pipe._device((h, w, c), np.uint8) for c in self.channels)
        self.steps = tuple(w * c for c in self.channels)
        engine = pipe.input_size
        self.resize = tuple(size) != tuple(engine)
        if self.resize:  # camera -> engine for the images, engine -> camera for the disparity
            self.image_tables = (pipe._table(w, engine[1]), pipe._table(h, engine[0]))
            self.disp_tables = (pipe._table(engine[1], w), pipe._table(engine[0], h))
        else:
            self.image_tables = self.disp_tables = (0, 0)
        self.disparity = pipe._device((h, w), np.float32)
        self.disparity_host = pipe._pinned((h, w), np.float32)
        self.depth = self.depth_host = self.points = self.points_host = None
        self.points_stride = None

    def outputs_for(self, pipe: "FlashStereoPipeline", plan: FramePlan) -> None:
        """Allocate depth/points buffers the first time a plan asks for them (or a new stride)."""
        if (plan.want_depth or plan.want_points) and self.depth is None:
            self.depth = pipe._device(self.size, np.float32)
            self.depth_host = pipe._pinned(self.size, np.float32)
        if plan.want_points and self.points_stride != plan.points_stride:
            for buf in (self.points, self.points_host):
                pipe._forget(buf)
            shape = kernels.points_shape(self.size, plan.points_stride) + (4,)
            self.points = pipe._device(shape, np.float32)
            self.points_host = pipe._pinned(shape, np.float32)
            self.points_stride = plan.points_stride

    def buffers(self):
        return [b for b in (*self.stage, *self.image, self.disparity, self.disparity_host, self.depth,
                            self.depth_host, self.points, self.points_host) if b is not None]


@dataclasses.dataclass
class _Launches:
    """The prepared kernel launches of one plan."""

    preprocess: tuple
    disparity: kernels.Launch | None  # None: the engine's disparity is already the camera disparity
    depth: kernels.Launch | None
    points: kernels.Launch | None


class FlashStereoPipeline:
    """left, right (uint8 images) -> disparity (float32, camera resolution, pixels), GPU-resident."""

    def __init__(self, feat_engine_path: str | Path | None = None, post_engine_path: str | Path | None = None,
                 input_h: int | None = None, input_w: int | None = None, backend: str | None = None,
                 resize: bool = True, use_cuda_graph: bool = False, device_id: int = 0,
                 config: contract.ModelConfig | None = None):
        self._closed = True
        self.device_id = device_id
        self._ctx = cuda.primary_context(device_id)
        self._lock = threading.RLock()
        self._device_buffers: list[cuda.DeviceBuffer] = []
        self._pinned_buffers: list[cuda.PinnedBuffer] = []
        self.stream = cuda.Stream(device_id)
        default_feat, default_post = resources.bundled_models(".pt2")
        self.engines = load_engine_pair(feat_engine_path or default_feat, post_engine_path or default_post,
                                        backend, DEVICE, stream=self.stream.ptr, device_id=device_id,
                                        input_size=(input_h, input_w), config=config)
        self._closed = False
        try:
            self.geometry = self.engines.geometry
            self.resize = resize
            self._allocate_engine_buffers()
            self._bind()
            self._build_kernels()
            self._events = [cuda.Event(device_id) for _ in range(len(STAGES) + 1)]
            self._outer = (cuda.Event(device_id), cuda.Event(device_id))  # around a graph launch
            self._camera: _CameraBuffers | None = None
            self._plan: FramePlan | None = None
            self._launches: _Launches | None = None
            self.timings: dict[str, float] = {}
            self._traffic = Traffic()
            self.graph_mode = self._graph_mode() if use_cuda_graph else None
            self._graph = None
            self._graph_plan: FramePlan | None = None
            self._graph_traffic: Traffic | None = None
            self._ctx.synchronize()  # weights the runners uploaded on other streams are in place
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------------------------------- setup
    def _device(self, shape, dtype) -> cuda.DeviceBuffer:
        buf = cuda.DeviceBuffer(shape, dtype, self.device_id)
        self._device_buffers.append(buf)
        return buf

    def _pinned(self, shape, dtype) -> cuda.PinnedBuffer:
        buf = cuda.PinnedBuffer(shape, dtype, self.device_id)
        self._pinned_buffers.append(buf)
        return buf

    def _forget(self, buf) -> None:
        if buf is None:
            return
        for pool in (self._device_buffers, self._pinned_buffers):
            if any(b is buf for b in pool):
                pool[:] = [b for b in pool if b is not buf]
        buf.close()

    def _table(self, src: int, dst: int) -> cuda.DeviceBuffer:
        table = kernels.linear_resize_table(src, dst)
        buf = self._device(table.shape, table.dtype)
        buf.upload(table)
        return buf

    def _allocate_engine_buffers(self) -> None:
        geo = self.geometry
        self.inputs = {name: self._device(spec.shape, spec.dtype) for name, spec in geo.image_inputs.items()}
        self.features = {name: self._device(spec.shape, spec.dtype) for name, spec in geo.feature_outputs.items()}
        left, right = geo.feature_outputs[contract.FEATURES_LEFT_04], geo.feature_outputs[contract.FEATURES_RIGHT_04]
        if left.dtype != right.dtype:
            raise ModelError(f"features_left_04 ({left.dtype}) and features_right_04 ({right.dtype}) differ in "
                             "dtype; the norm kernel takes both sides in one dtype")
        self.normalized = (self._device(left.shape, np.float16), self._device(right.shape, np.float16))
        self.volume = self._device(geo.post_inputs[contract.GWC_VOLUME].shape, geo.volume_dtype)
        # a post input is the feature buffer itself unless its dtype differs (then a buffer + cast kernel)
        self.post_inputs: dict[str, cuda.DeviceBuffer] = {}
        self._casts: list[tuple[cuda.DeviceBuffer, cuda.DeviceBuffer]] = []
        for name in contract.FEATURE_OUTPUTS:
            spec = geo.post_inputs[name]
            if spec.dtype == self.features[name].dtype:
                self.post_inputs[name] = self.features[name]
            else:
                self.post_inputs[name] = self._device(spec.shape, spec.dtype)
                self._casts.append((self.features[name], self.post_inputs[name]))
        self.post_inputs[contract.GWC_VOLUME] = self.volume
        self.disparity = self._device(geo.disparity.shape, geo.disparity.dtype)
        self._scratch: dict[str, cuda.DeviceBuffer] = {}

    def _bind(self) -> None:
        feature, post, geo = self.engines.feature, self.engines.post, self.geometry
        for name, spec in geo.image_inputs.items():
            feature.bind(spec.name, self.inputs[name].ptr)
        for name, spec in geo.feature_outputs.items():
            feature.bind(spec.name, self.features[name].ptr)
        for name, spec in geo.post_inputs.items():
            post.bind(spec.name, self.post_inputs[name].ptr)
        post.bind(geo.disparity.name, self.disparity.ptr)
        for runner, specs in ((feature, geo.feature_outputs), (post, {contract.DISPARITY: geo.disparity})):
            bound = {spec.name for spec in specs.values()}
            for name, spec in runner.outputs.items():
                if name not in bound:  # outputs outside the contract still need somewhere to go
                    self._scratch[name] = self._device(spec.shape, spec.dtype)
                    runner.bind(name, self._scratch[name].ptr)

    def _build_kernels(self) -> None:
        geo, dev = self.geometry, self.device_id
        left_in = geo.image_inputs[contract.LEFT]
        self._preprocess = kernels.PreprocessKernel(left_in.dtype, dev)
        if geo.image_inputs[contract.RIGHT].dtype != left_in.dtype:
            raise ModelError("the feature engine's left and right inputs differ in dtype")
        channels = geo.feature_channels
        group_channels = channels // geo.groups
        feat = geo.feature_outputs[contract.FEATURES_LEFT_04]
        quarter = geo.quarter_size
        norm = kernels.GroupNormKernel(group_channels, feat.dtype, dev)
        self._norm_launch = norm.prepare(self.features[contract.FEATURES_LEFT_04], self.features[contract.FEATURES_RIGHT_04],
                                         *self.normalized, geo.groups, quarter[0] * quarter[1])
        gwc = kernels.GwcKernel(group_channels, geo.disparities, geo.volume_dtype, dev)
        self._gwc_launch = gwc.prepare(*self.normalized, self.volume, geo.groups, *quarter)
        self._cast_launches = [kernels.CastKernel(src.dtype, dst.dtype, dev).prepare(src, dst, src.size)
                               for src, dst in self._casts]
        self._disp_kernel = kernels.DisparityResizeKernel(geo.disparity.dtype, dev)
        self._depth_kernels: kernels.DepthPointsKernels | None = None

    def _graph_mode(self) -> str | None:
        modes = {self.engines.feature.graph_capture, self.engines.post.graph_capture}
        if None in modes:
            warnings.warn(f"use_cuda_graph=True but the {'/'.join(self.engines.backends)} runner cannot be captured "
                          "in a CUDA graph (ONNX Runtime); running without a graph", RuntimeWarning, stacklevel=3)
            return None
        return "torch" if "torch" in modes else "cuda"

    # ------------------------------------------------------------------------------------- API
    @property
    def input_size(self) -> tuple[int, int]:
        return self.geometry.height, self.geometry.width

    @property
    def traffic(self) -> dict[str, int]:
        """Host<->device bytes and copy counts of the last frame."""
        return self._traffic.as_dict()

    def infer(self, left: np.ndarray, right: np.ndarray, encoding: str | None = None,
              right_encoding: str | None = None) -> np.ndarray:
        """Disparity of a rectified pair, in pixels of the input images, at their resolution."""
        return self.process(left, right, encoding, right_encoding).disparity

    def process(self, left: np.ndarray, right: np.ndarray, encoding: str | None = None,
                right_encoding: str | None = None, camera: StereoCamera | None = None,
                limits: DepthLimits = DepthLimits(), want_depth: bool = False, want_points: bool = False,
                points_stride: int = 1) -> StereoOutput:
        """One frame: disparity (published convention when camera is given), and depth/points on request."""
        left, right, enc_left, enc_right = images.check_pair(left, right, encoding, right_encoding)
        size = tuple(left.shape[:2])
        images.check_size(size, self.input_size, self.resize)
        plan = make_plan(size, (enc_left, enc_right), camera, limits, want_depth, want_points, points_stride)
        with self._lock:
            self._check_open()
            self._ctx.make_current()
            cam = self._camera_for(plan)
            np.copyto(cam.stage[0].array, left)
            np.copyto(cam.stage[1].array, right)
            if self.graph_mode is None:
                self._traffic = self._issue(plan, capturing=False)
                self.stream.synchronize()
                self._read_timings(graph=False)
            else:
                self._run_graph(plan)
            return self._outputs(plan, cam)

    def intermediates(self) -> dict[str, np.ndarray]:
        """Host copies of the last frame's device tensors (tests and debugging; blocking, not counted as traffic)."""
        with self._lock:
            self._check_open()
            self._ctx.make_current()
            self.stream.synchronize()
            out = {name: buf.download(self.stream) for name, buf in self.inputs.items()}
            out.update({name: buf.download(self.stream) for name, buf in self.features.items()})
            out["normalized_left"] = self.normalized[0].download(self.stream)
            out["normalized_right"] = self.normalized[1].download(self.stream)
            out[contract.GWC_VOLUME] = self.volume.download(self.stream)
            out["disparity_engine"] = self.disparity.download(self.stream)
            for src, dst in self._casts:
                name = next(n for n, b in self.post_inputs.items() if b is dst)
                out[f"post:{name}"] = dst.download(self.stream)
            return out

    def poison(self) -> None:
        """Fill every buffer a frame writes with NaN (0xFF for uint8), so tests can prove the next frame
        overwrites all of it."""
        with self._lock:
            self._check_open()
            self._ctx.make_current()
            for buf in self._device_buffers:
                if buf.dtype in cuda.NAN_BITS and not self._is_table(buf):
                    buf.fill_nan_async(self.stream)
            for buf in self._pinned_buffers:
                if buf.dtype.kind == "f":
                    buf.array.fill(np.nan)
            self.stream.synchronize()

    def memory_bytes(self) -> dict[str, int]:
        """Device bytes (our buffers + the runners' own) and pinned host bytes held by this pipeline."""
        device = sum(b.nbytes for b in self._device_buffers)
        if not self._closed:
            device += self.engines.device_bytes()
        return {"device": int(device), "host": int(sum(b.nbytes for b in self._pinned_buffers))}

    def close(self) -> None:
        """Release the graph, the runners and every buffer; idempotent."""
        if getattr(self, "_released", False):
            return
        with self._lock:
            self._released = self._closed = True
            try:
                self._ctx.make_current()
                self.stream.synchronize()
            except Exception:  # closing after a device error must still release what it can
                pass
            try:
                self._drop_graph()
            except Exception:
                self._graph = None
            if hasattr(self, "engines"):
                self.engines.close()
            for buf in self._device_buffers + self._pinned_buffers:
                buf.close()
            self._device_buffers, self._pinned_buffers = [], []
            for event in getattr(self, "_events", []) + list(getattr(self, "_outer", ())):
                event.close()
            self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- frame
    def _check_open(self) -> None:
        if self._closed:
            raise StereoInputError("this pipeline is closed")

    def _is_table(self, buf) -> bool:
        cam = self._camera
        return cam is not None and any(buf is t for t in (*cam.image_tables, *cam.disp_tables))

    def _camera_for(self, plan: FramePlan) -> _CameraBuffers:
        cam = self._camera
        if cam is None or cam.size != plan.size or cam.channels != tuple(images.ENCODINGS[e][0] for e in plan.encodings):
            self._drop_graph()
            if cam is not None:
                self.stream.synchronize()
                for buf in cam.buffers() + [t for t in (*cam.image_tables, *cam.disp_tables) if t]:
                    self._forget(buf)
            cam = self._camera = _CameraBuffers(self, plan.size, plan.encodings)
            self._plan = None
        if plan != self._plan:
            cam.outputs_for(self, plan)
            self._launches = self._prepare(plan, cam)
            self._plan = plan
        return cam

    def _prepare(self, plan: FramePlan, cam: _CameraBuffers) -> _Launches:
        geo = self.geometry
        engine = self.input_size
        pre = tuple(self._preprocess.prepare(cam.image[i], plan.size, cam.steps[i], plan.encodings[i],
                                             self.inputs[name], engine, *cam.image_tables)
                    for i, name in enumerate(contract.FEATURE_INPUTS))
        offset = plan.camera.cx_offset if plan.camera is not None and plan.camera.cx_offset else None
        disp_2d = int(np.prod(geo.disparity.shape)) == engine[0] * engine[1]
        if not cam.resize and offset is None and geo.disparity.dtype == np.float32 and disp_2d:
            disparity = None  # the engine's buffer is the camera disparity: no kernel, D2H straight from it
        else:
            disparity = self._disp_kernel.prepare(self.disparity, engine, cam.disparity, plan.size, offset,
                                                  *cam.disp_tables)
        depth = points = None
        if plan.want_depth or plan.want_points:
            if self._depth_kernels is None:
                self._depth_kernels = kernels.DepthPointsKernels(self.device_id)
            source = self._camera_disparity(cam, disparity)
            camera, limits = plan.camera, plan.limits
            depth = self._depth_kernels.prepare_depth(source, cam.size[0] * cam.size[1], camera.focal_baseline,
                                                      limits.min_disparity, limits.min_depth, limits.max_depth,
                                                      cam.depth)
            if plan.want_points:
                points = self._depth_kernels.prepare_points(cam.depth, cam.size, cam.image[0], cam.steps[0],
                                                            plan.encodings[0], plan.points_stride, camera.cx,
                                                            camera.cy, camera.fx, camera.fy, cam.points)
        return _Launches(pre, disparity, depth, points)

    def _camera_disparity(self, cam: _CameraBuffers, disparity_launch) -> cuda.DeviceBuffer:
        return self.disparity if disparity_launch is None else cam.disparity

    def _issue(self, plan: FramePlan, capturing: bool) -> Traffic:
        """Enqueue one frame on the stream (eagerly, or into a graph capture). No host synchronisation."""
        s, ev, cam, run = self.stream, self._events, self._camera, self._launches
        traffic = Traffic()
        ev[0].record(s, capturing)
        for i in range(2):
            traffic.add_h2d(cam.image[i].copy_from_host_async(cam.stage[i], s))
        ev[1].record(s, capturing)
        for launch in run.preprocess:
            launch.run(s)
        ev[2].record(s, capturing)
        self.engines.feature.enqueue(s.ptr)
        ev[3].record(s, capturing)
        self._norm_launch.run(s)
        ev[4].record(s, capturing)
        self._gwc_launch.run(s)
        for launch in self._cast_launches:
            launch.run(s)
        ev[5].record(s, capturing)
        self.engines.post.enqueue(s.ptr)
        ev[6].record(s, capturing)
        if run.disparity is not None:
            run.disparity.run(s)
        ev[7].record(s, capturing)
        if run.depth is not None:
            run.depth.run(s)
        if run.points is not None:
            run.points.run(s)
        ev[8].record(s, capturing)
        source = self._camera_disparity(cam, run.disparity)
        traffic.add_d2h(source.copy_to_host_async(cam.disparity_host, s, cam.disparity_host.nbytes))
        if plan.want_depth:
            traffic.add_d2h(cam.depth.copy_to_host_async(cam.depth_host, s))
        if plan.want_points:
            traffic.add_d2h(cam.points.copy_to_host_async(cam.points_host, s))
        ev[9].record(s, capturing)
        return traffic

    def _read_timings(self, graph: bool) -> None:
        ev = self._events
        timings: dict[str, float] = {}
        try:
            for i, stage in enumerate(STAGES):
                timings[stage] = ev[i].elapsed_ms(ev[i + 1])
            timings["total"] = ev[0].elapsed_ms(ev[-1])
        except cuda.CudaError:
            if not graph:
                raise
            timings = {}  # events inside a replayed graph could not be read: keep the launch's total
        if graph:
            timings["total"] = self._outer[0].elapsed_ms(self._outer[1])
        self.timings = timings

    def _outputs(self, plan: FramePlan, cam: _CameraBuffers) -> StereoOutput:
        out = StereoOutput(cam.disparity_host.array.copy())
        if plan.want_depth:
            out.depth = cam.depth_host.array.copy()
        if plan.want_points:
            out.points = cam.points_host.array.copy()
        return out

    # ------------------------------------------------------------------------------------- graphs
    def _run_graph(self, plan: FramePlan) -> None:
        if self._graph is None or self._graph_plan != plan:
            self._drop_graph()
            self._traffic = self._issue(plan, capturing=False)  # the warm-up frame is this frame
            self.stream.synchronize()
            self._read_timings(graph=False)
            self._capture(plan, self._traffic)
            return
        self._outer[0].record(self.stream)
        self._graph.launch(self.stream)
        self._outer[1].record(self.stream)
        self.stream.synchronize()
        self._traffic = self._graph_traffic
        self._read_timings(graph=True)

    def _capture(self, plan: FramePlan, traffic: Traffic) -> None:
        was_enabled = gc.isenabled()
        gc.disable()  # a finalizer freeing memory in mid-capture would invalidate it
        try:
            if self.graph_mode == "torch":
                graph = _TorchGraph(self)
                graph.capture(lambda: self._issue(plan, capturing=True))
            else:
                graph = cuda.CudaGraph(self.device_id)
                graph.begin_capture(self.stream)
                try:
                    self._issue(plan, capturing=True)
                except Exception:
                    graph.abort_capture()
                    raise
                graph.end_capture()
        finally:
            if was_enabled:
                gc.enable()
        self._graph, self._graph_plan, self._graph_traffic = graph, plan, traffic

    def _drop_graph(self) -> None:
        graph, self._graph, self._graph_plan = getattr(self, "_graph", None), None, None
        if graph is not None:
            self.stream.synchronize()
            graph.close()


class _TorchGraph:
    """torch.cuda.graph capture on a torch ExternalStream wrapping our stream (torch's allocator then
    takes the runner's intermediates from the graph's private pool)."""

    def __init__(self, pipe: FlashStereoPipeline):
        import torch

        self._torch = torch
        self._stream = torch.cuda.ExternalStream(pipe.stream.ptr, device=torch.device("cuda", pipe.device_id))
        self._graph = torch.cuda.CUDAGraph()

    def capture(self, issue) -> None:
        torch = self._torch
        with torch.cuda.graph(self._graph, stream=self._stream, capture_error_mode="thread_local"):
            issue()

    def launch(self, stream) -> None:
        with self._torch.cuda.stream(self._stream):
            self._graph.replay()

    def close(self) -> None:
        self._graph.reset()
        self._graph = None


def make_plan(size, encodings, camera: StereoCamera | None, limits: DepthLimits, want_depth: bool,
              want_points: bool, points_stride: int) -> FramePlan:
    """Validate a frame's options the way depth.outputs_from_disparity does, and freeze them."""
    if camera is None and (want_depth or want_points):
        raise StereoInputError("depth and points need the stereo camera (CameraInfo of both sides)")
    if camera is not None and (camera.height, camera.width) != tuple(size):
        raise StereoInputError(f"disparity {tuple(size)} does not match the camera's {camera.height}x{camera.width}")
    if want_points and points_stride < 1:
        raise StereoInputError(f"points stride must be >= 1, got {points_stride}")
    return FramePlan(tuple(size), tuple(encodings), camera, limits, bool(want_depth), bool(want_points),
                     int(points_stride) if want_points else 1)
