"""The GPU-resident pipeline: two uint8 images in, one disparity out, everything between on the device.

Per frame, on one CUDA stream (DESIGN.md, "Data flow"):
  host images -> pinned staging -> one H2D per image (uint8, camera size); large images are staged by
                                    two threads at once (the right one on a helper thread)
  preprocess kernel -> feature engine input          (resize when the camera size != engine size)
  feature runner    -> persistent feature buffers
  group_norm kernel -> normalised 1/4 features (half)
  gwc kernel        -> gwc_volume (+ cast kernels where a post input's dtype differs)
  post runner       reads the feature buffers and the volume through the same device pointers
  resize_disparity  -> camera-size disparity, value-scaled, minus the principal-point offset
  [depth_image, point_cloud kernels only when asked]
  D2H of the disparity (and depth/points when asked) into pinned memory; one wait, on the frame's event.
process() is submit() + result(): submit() issues a frame and returns at once, so a caller can stage and
issue frame N+1 while the GPU still runs frame N (on this stream, in order; PipelinedStereo spreads
frames over several pipelines so that their GPU work overlaps too).
Every stage boundary is a CUDA event; the stage times are read from them when `timings` is first read
after a frame. With use_cuda_graph=True the device work between the uploads and the downloads is
captured once per camera setup (after a warm-up frame) and replayed. Buffers are allocated at load and
when the camera setup changes, never per frame.

Each output (the disparity; depth and points when asked) is downloaded into one of a few pinned host
arrays and returned as it is, without a host copy: an array is reused for a later frame only once nothing
outside the pipeline (a pending frame included) references it or any view of it, so the caller owns what
it was given for as long as it keeps it (also past close()). A caller that keeps every output gets
copies once those arrays are all held.
"""
from __future__ import annotations

import dataclasses
import gc
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from . import contract, cuda, images, kernels, resources
from .base import StereoPipelineBase, check_input_size
from .depth import DepthLimits, StereoCamera, StereoOutput, check_request
from .engines import load_engine_pair
from .errors import ModelError
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


OUTPUT_SLOTS = 4  # pinned arrays per output a pipeline hands out before it falls back to copies
PARALLEL_STAGING_BYTES = 1 << 18  # from this image size on, a helper thread stages the right image


class _Stager:
    """A helper thread that copies the right image into pinned staging memory while the calling thread
    copies the left one: numpy releases the GIL while it copies, so both copies run at once. Two locks
    used as binary semaphores hand the job over (cheaper than Events)."""

    def __init__(self):
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._job: tuple | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="flashstereo-staging", daemon=True)
        self._thread.start()

    def start(self, dst: np.ndarray, src: np.ndarray) -> None:
        self._job = (dst, src)
        self._go.release()

    def wait(self) -> None:
        self._done.acquire()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        self._job = None
        self._go.release()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self._go.acquire()
            job = self._job
            if job is None:
                return
            try:
                np.copyto(*job)
            except BaseException as exc:  # handed to the caller by wait()
                self._error = exc
            finally:
                self._done.release()


class _HostSlot:
    """A pinned host array that a frame's output is downloaded into and returned as.

    `in_use()` is true while anything besides this slot references the array, or the numpy array that
    every view of it names as its base (numpy collapses a view's base to that one): the caller's output
    or any slice, transpose or memoryview of it."""

    def __init__(self, buf: cuda.PinnedBuffer):
        self.buf = buf
        self.array = buf.array
        self._owner = self.array.base if isinstance(self.array.base, np.ndarray) else self.array
        self._idle = self._counts()

    def _counts(self) -> tuple[int, int]:
        return sys.getrefcount(self.array), sys.getrefcount(self._owner)

    def in_use(self) -> bool:
        return self._counts() != self._idle

    def release(self, pipe: "FlashStereoPipeline") -> None:
        """Free the memory now, or, while the caller still holds the array, once it lets go of it."""
        if self.in_use():
            pipe._disown(self.buf)
            self.buf.free_with(self._owner)
        else:
            pipe._forget(self.buf)


class _OutputRing:
    """Up to OUTPUT_SLOTS pinned arrays for one output (disparity, depth or points), handed to the caller
    without a host copy; when all are still held, a pinned staging buffer and a copy (allocated on first need)."""

    def __init__(self, pipe: "FlashStereoPipeline", shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.slots: list[_HostSlot] = []
        self.staging: cuda.PinnedBuffer | None = None

    def acquire(self, pipe: "FlashStereoPipeline") -> _HostSlot | None:
        """A free slot (a new one while fewer than OUTPUT_SLOTS exist), or None: copy out of `staging`."""
        for slot in self.slots:
            if not slot.in_use():
                return slot
        if len(self.slots) < OUTPUT_SLOTS:
            slot = _HostSlot(pipe._pinned(self.shape, self.dtype))
            self.slots.append(slot)
            return slot
        if self.staging is None:
            self.staging = pipe._pinned(self.shape, self.dtype)
        return None

    def destination(self, slot: _HostSlot | None) -> cuda.PinnedBuffer:
        """Where this frame's download goes."""
        return slot.buf if slot is not None else self.staging

    def output(self, slot: _HostSlot | None) -> np.ndarray:
        """What the caller gets: the slot's array itself, or a copy out of the staging buffer."""
        return slot.array if slot is not None else self.staging.array.copy()

    def held(self, buf) -> bool:
        """True for a slot's buffer that the caller still holds (poison() must leave it alone)."""
        return any(slot.buf is buf and slot.in_use() for slot in self.slots)

    def buffers(self) -> list:
        return [slot.buf for slot in self.slots] + ([self.staging] if self.staging is not None else [])

    def release(self, pipe: "FlashStereoPipeline") -> None:
        for slot in self.slots:
            slot.release(pipe)
        pipe._forget(self.staging)
        self.slots, self.staging = [], None


class _CameraBuffers:
    """Buffers that depend on the camera size and encodings: staging, device images, outputs."""

    def __init__(self, pipe: "FlashStereoPipeline", size: tuple[int, int], encodings: tuple[str, str]):
        self.size, self.encodings = size, encodings
        h, w = size
        self.channels = tuple(images.ENCODINGS[e][0] for e in encodings)
        self.stage = tuple(pipe._pinned((h, w, c), np.uint8) for c in self.channels)
        self.stage_arrays = tuple(buf.array for buf in self.stage)
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
        self.rings = {"disparity": _OutputRing(pipe, (h, w), np.float32)}  # output name -> its host arrays
        self.depth = self.points = None
        self.points_stride = None

    def outputs_for(self, pipe: "FlashStereoPipeline", plan: FramePlan) -> None:
        """Allocate depth/points buffers the first time a plan asks for them (or a new stride). Each field
        names a live buffer or None at every step, so a failed allocation leaves nothing freed in use."""
        if (plan.want_depth or plan.want_points) and "depth" not in self.rings:
            if self.depth is None:
                self.depth = pipe._device(self.size, np.float32)
            self.rings["depth"] = _OutputRing(pipe, self.size, np.float32)
        if plan.want_points and self.points_stride != plan.points_stride:
            if self.points is not None:
                pipe.stream.synchronize()  # a frame in flight may still download the old cloud
            old, self.points, self.points_stride = self.points, None, None
            pipe._forget(old)
            ring = self.rings.pop("points", None)
            if ring is not None:
                ring.release(pipe)
            shape = kernels.points_shape(self.size, plan.points_stride) + (4,)
            self.points = pipe._device(shape, np.float32)
            self.rings["points"] = _OutputRing(pipe, shape, np.float32)
            self.points_stride = plan.points_stride

    def acquire(self, pipe: "FlashStereoPipeline", plan: FramePlan) -> dict[str, _HostSlot | None]:
        """A host slot (None: staging + copy) for each output the frame downloads."""
        wanted = ("disparity",) + ("depth",) * plan.want_depth + ("points",) * plan.want_points
        return {name: self.rings[name].acquire(pipe) for name in wanted}

    def held(self, buf) -> bool:
        return any(ring.held(buf) for ring in self.rings.values())

    def release_outputs(self, pipe: "FlashStereoPipeline") -> None:
        """Free the host output arrays (those the caller still holds live on until it drops them)."""
        for ring in self.rings.values():
            ring.release(pipe)
        self.rings = {}

    def release(self, pipe: "FlashStereoPipeline") -> None:
        """Free every buffer."""
        self.release_outputs(pipe)
        for buf in (*self.stage, *self.image, self.disparity, self.depth, self.points,
                    *(t for t in (*self.image_tables, *self.disp_tables) if t)):
            pipe._forget(buf)


@dataclasses.dataclass
class _Launches:
    """The prepared kernel launches of one plan."""

    preprocess: tuple
    disparity: kernels.Launch | None  # None: the engine's disparity is already the camera disparity
    depth: kernels.Launch | None
    points: kernels.Launch | None


class FlashStereoPipeline(StereoPipelineBase):
    """left, right (uint8 images) -> disparity (float32, camera resolution, pixels), GPU-resident."""

    def __init__(self, feat_engine_path: str | Path | None = None, post_engine_path: str | Path | None = None,
                 input_h: int | None = None, input_w: int | None = None, backend: str | None = None,
                 resize: bool = True, use_cuda_graph: bool = False, device_id: int = 0,
                 config: contract.ModelConfig | None = None):
        input_h, input_w = check_input_size(input_h, input_w)
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
            self._camera: _CameraBuffers | None = None
            self._plan: FramePlan | None = None
            self._plan_key: tuple | None = None  # the process() arguments self._plan was made from
            self._launches: _Launches | None = None
            self._timings: dict[str, float] = {}
            self._timings_pending = False  # a frame's events are recorded but not read yet
            self._traffic = Traffic()
            self.graph_mode = self._graph_mode() if use_cuda_graph else None
            self._graph = None
            self._graph_plan: FramePlan | None = None
            self._stager: _Stager | None = None
            self._uploaded = cuda.Event(device_id, timing=False)  # after a frame's uploads: staging is free
            self._uploads_recorded = False
            self._free_events: list[cuda.Event] = []  # "frame done" events that no pending frame holds
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
        self._disown(buf)
        buf.close()

    def _disown(self, buf) -> None:
        """Stop accounting for a buffer without freeing it (a disparity array the caller still holds)."""
        for pool in (self._device_buffers, self._pinned_buffers):
            if any(b is buf for b in pool):
                pool[:] = [b for b in pool if b is not buf]

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
        for name, spec in geo.post_inputs.items():
            if name == contract.GWC_VOLUME:
                continue
            if spec.dtype == self.features[name].dtype:
                self.post_inputs[name] = self.features[name]
            else:
                self.post_inputs[name] = self._device(spec.shape, spec.dtype)
                self._casts.append((self.features[name], self.post_inputs[name]))
        self.post_inputs[contract.GWC_VOLUME] = self.volume
        self.disparity = self._device(geo.disparity.shape, geo.disparity.dtype)

    def _bind(self) -> None:
        self.engines.bind({name: buf.ptr for name, buf in {**self.inputs, **self.features}.items()},
                          {name: buf.ptr for name, buf in self.post_inputs.items()}, self.disparity.ptr,
                          lambda spec: self._device(spec.shape, spec.dtype).ptr)

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
        self._norm_launch = norm.prepare(self.features[contract.FEATURES_LEFT_04],
                                         self.features[contract.FEATURES_RIGHT_04], *self.normalized, geo.groups,
                                         quarter[0] * quarter[1])
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
    def traffic(self) -> dict[str, int]:
        """Host<->device bytes and copy counts of the last frame."""
        return self._traffic.as_dict()

    def process(self, left: np.ndarray, right: np.ndarray, encoding: str | None = None,
                right_encoding: str | None = None, camera: StereoCamera | None = None,
                limits: DepthLimits = DepthLimits(), want_depth: bool = False, want_points: bool = False,
                points_stride: int = 1) -> StereoOutput:
        """One frame: disparity (published convention when camera is given), and depth/points on request."""
        return self.submit(left, right, encoding, right_encoding, camera, limits, want_depth, want_points,
                           points_stride).result()

    def submit(self, left: np.ndarray, right: np.ndarray, encoding: str | None = None,
               right_encoding: str | None = None, camera: StereoCamera | None = None,
               limits: DepthLimits = DepthLimits(), want_depth: bool = False, want_points: bool = False,
               points_stride: int = 1) -> "PendingFrame":
        """Issue one frame (the arguments of process()) and return without waiting for the GPU;
        `result()` of the returned frame waits for it. Frames run in submission order on this pipeline's
        stream, so the host work of the next frame (checks, staging, launches) overlaps the GPU work of
        the frames before it. Submitting waits only for the previous frame's uploads (the staging memory
        is reused) and, once per camera setup in graph mode, for the frame the graph is captured after."""
        left, right, enc_left, enc_right = images.check_pair(left, right, encoding, right_encoding)
        key = (left.shape[:2], enc_left, enc_right, camera, limits, want_depth, want_points, points_stride,
               self.resize)
        with self._lock:
            self._check_open()
            self._ctx.make_current()
            if key == self._plan_key:  # the common case: the same camera setup and options as the last frame
                plan, cam = self._plan, self._camera
            else:
                self._plan_key = None
                plan = self._plan_for(key)
                cam = self._camera_for(plan)
                self._plan_key = key
            # no graph for this plan (_camera_for dropped the last one): this frame runs eagerly, then is captured
            graph = self._graph if self._graph_plan is plan else None
            slots = cam.acquire(self, plan)
            self._timings_pending, self._timings = False, {}  # the events are this frame's from here on
            traffic = self._issue_inputs(cam, left, right)
            if graph is not None:
                graph.launch(self.stream)
            else:
                self._issue_body(plan, capturing=False)
            self._issue_outputs(cam, slots, traffic)
            self._timings_pending = True
            self._traffic = traffic
            done = self._free_events.pop() if self._free_events else cuda.Event(self.device_id, timing=False)
            done.record(self.stream)
            frame = PendingFrame(self, slots, done)
            if graph is None and self.graph_mode is not None:
                self._wait(frame)
                self._capture(plan)
            elif any(slot is None for slot in slots.values()):
                self._wait(frame)  # copy its output out of the shared staging buffer before a later frame
            return frame

    @property
    def timings(self) -> dict[str, float]:
        """Per-stage milliseconds of the newest submitted frame (from its CUDA events, read on first access,
        after waiting for that frame), + total."""
        with self._lock:
            if self._timings_pending and not self._closed:
                self._events[-1].synchronize()  # the newest submitted frame (others may still be in flight)
                self._timings = self._read_timings()
                self._timings_pending = False
            return self._timings

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
                if buf.dtype.kind == "f" and not self._held_by_caller(buf):
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
                try:
                    self.engines.close()
                except Exception as exc:  # a dead context: release our own resources all the same
                    warnings.warn(f"closing the engines failed: {type(exc).__name__}: {exc}", RuntimeWarning,
                                  stacklevel=2)
            if getattr(self, "_camera", None) is not None:
                self._camera.release_outputs(self)  # arrays the caller holds stay valid
            for buf in self._device_buffers + self._pinned_buffers:
                buf.close()
            self._device_buffers, self._pinned_buffers = [], []
            for event in (*getattr(self, "_events", []), *getattr(self, "_free_events", []),
                          *([self._uploaded] if hasattr(self, "_uploaded") else [])):
                event.close()
            self._free_events = []
            if getattr(self, "_stager", None) is not None:
                self._stager.close()
                self._stager = None
            self.stream.close()

    def _wait(self, frame: "PendingFrame") -> None:
        """Wait for a submitted frame, then hand its outputs to it (once; any thread)."""
        event = frame._event
        if event is None:
            return
        event.synchronize()  # outside the lock when called from result(): other threads may submit meanwhile
        with self._lock:
            if frame._event is None:
                return
            frame._finish()
            if self._closed:
                event.close()
            else:
                self._free_events.append(event)

    # ------------------------------------------------------------------------------------- frame
    def _is_table(self, buf) -> bool:
        cam = self._camera
        return cam is not None and any(buf is t for t in (*cam.image_tables, *cam.disp_tables))

    def _held_by_caller(self, buf) -> bool:
        cam = self._camera
        return cam is not None and cam.held(buf)

    def _plan_for(self, key: tuple) -> FramePlan:
        """The plan of a frame whose process() arguments differ from the last frame's (validated here)."""
        size, enc_left, enc_right, camera, limits, want_depth, want_points, points_stride, _ = key
        size = tuple(size)
        images.check_size(size, self.input_size, self.resize)
        plan = make_plan(size, (enc_left, enc_right), camera, limits, want_depth, want_points, points_stride)
        if plan == self._plan:
            plan = self._plan  # same plan, other spelling: keep the object (and the graph captured for it)
        return plan

    def _camera_for(self, plan: FramePlan) -> _CameraBuffers:
        cam = self._camera
        if plan is self._plan:
            return cam
        self._plan = self._launches = None  # until `plan` is ready: a failure below leaves no stale shortcut
        self._drop_graph()
        channels = tuple(images.ENCODINGS[e][0] for e in plan.encodings)
        if cam is None or cam.size != plan.size or cam.channels != channels:
            if cam is not None:
                self.stream.synchronize()
                self._camera = None
                cam.release(self)
            cam = self._camera = self._allocating(lambda: _CameraBuffers(self, plan.size, plan.encodings))
        cam.outputs_for(self, plan)
        self._launches = self._prepare(plan, cam)
        self._plan = plan
        return cam

    def _allocating(self, build):
        """build(), freeing what it allocated when it fails (out of memory at a new camera size)."""
        marks = len(self._device_buffers), len(self._pinned_buffers)
        try:
            return build()
        except Exception:
            for buf in self._device_buffers[marks[0]:] + self._pinned_buffers[marks[1]:]:
                self._forget(buf)
            raise

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

    def _issue_inputs(self, cam: _CameraBuffers, left: np.ndarray, right: np.ndarray) -> Traffic:
        """Stage the images in pinned memory (the right one on a helper thread while this one stages the
        left) and upload them. Always eager (a graph starts after the uploads)."""
        s, ev = self.stream, self._events
        if self._uploads_recorded:
            self._uploaded.synchronize()  # a frame still in flight may not have read the staging memory yet
        traffic = Traffic()
        stager = None
        if right.nbytes >= PARALLEL_STAGING_BYTES:
            stager = self._stager = self._stager or _Stager()
            stager.start(cam.stage_arrays[1], right)
        try:
            np.copyto(cam.stage_arrays[0], left)
            ev[0].record(s)
            traffic.add_h2d(cam.image[0].copy_from_host_async(cam.stage[0], s))
        finally:
            if stager is not None:
                stager.wait()
        if stager is None:
            np.copyto(cam.stage_arrays[1], right)
        traffic.add_h2d(cam.image[1].copy_from_host_async(cam.stage[1], s))
        self._uploaded.record(s)
        self._uploads_recorded = True
        return traffic

    def _issue_body(self, plan: FramePlan, capturing: bool) -> None:
        """Enqueue the device work between the uploads and the downloads (eagerly, or into a graph capture)."""
        s, ev, run = self.stream, self._events, self._launches
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

    def _issue_outputs(self, cam: _CameraBuffers, slots: dict, traffic: Traffic) -> None:
        """The frame's downloads (always eager: their pinned destinations change per frame)."""
        sources = {"disparity": self._camera_disparity(cam, self._launches.disparity), "depth": cam.depth,
                   "points": cam.points}
        for name, slot in slots.items():
            host = cam.rings[name].destination(slot)
            traffic.add_d2h(sources[name].copy_to_host_async(host, self.stream, host.nbytes))
        self._events[9].record(self.stream)

    def _read_timings(self) -> dict[str, float]:
        ev = self._events
        try:
            times = cuda.elapsed_times(ev)
            timings = dict(zip(STAGES, times))
        except cuda.CudaError:
            if self.graph_mode is None:
                raise
            timings = {}  # events inside a replayed graph could not be read: keep the frame's total
        timings["total"] = ev[0].elapsed_ms(ev[-1])
        return timings

    # ------------------------------------------------------------------------------------- graphs
    def _capture(self, plan: FramePlan) -> None:
        """Capture the device work of `plan` (the frame just run eagerly was its warm-up). An engine may hold
        work a graph cannot take (TensorRT: weight streaming, some plugins; its enqueue then fails while
        capturing): the pipeline warns once and runs every frame eagerly from then on."""
        was_enabled = gc.isenabled()
        gc.disable()  # a finalizer freeing memory in mid-capture would invalidate it
        try:
            if self.graph_mode == "torch":
                graph = _TorchGraph(self)
                graph.capture(lambda: self._issue_body(plan, capturing=True))
            else:
                graph = cuda.CudaGraph(self.device_id)
                graph.begin_capture(self.stream)
                try:
                    self._issue_body(plan, capturing=True)
                except Exception:
                    graph.abort_capture()
                    raise
                graph.end_capture()
        except Exception as exc:
            warnings.warn(f"CUDA graph capture of the {'/'.join(self.engines.backends)} engines failed "
                          f"({type(exc).__name__}: {exc}); running without a graph", RuntimeWarning, stacklevel=4)
            self.graph_mode = None
            self.stream.synchronize()  # a capture that broke off leaves nothing queued; raises if the stream is bad
            return
        finally:
            if was_enabled:
                gc.enable()
        self._graph, self._graph_plan = graph, plan

    def _drop_graph(self) -> None:
        graph, self._graph, self._graph_plan = getattr(self, "_graph", None), None, None
        if graph is not None:
            self.stream.synchronize()
            graph.close()


class PendingFrame:
    """A frame submitted to a FlashStereoPipeline. `result()` waits for it (the first time) and returns its
    StereoOutput; until then its output arrays are not handed to any other frame."""

    def __init__(self, pipe: FlashStereoPipeline, slots: dict[str, _HostSlot | None], event: cuda.Event):
        self._pipe, self._event = pipe, event
        self._outputs = [(name, pipe._camera.rings[name], slot) for name, slot in slots.items()]
        self._held = [slot.array for slot in slots.values() if slot is not None]  # keeps the slots in use
        self._output: StereoOutput | None = None

    def done(self) -> bool:
        """True once result() returns without waiting."""
        event = self._event  # (None once finished, possibly by another thread)
        return event is None or event.query()

    def result(self) -> StereoOutput:
        if self._output is None:
            self._pipe._wait(self)
        return self._output

    def _finish(self) -> None:
        arrays = {name: ring.output(slot) for name, ring, slot in self._outputs}
        self._output = StereoOutput(arrays["disparity"], arrays.get("depth"), arrays.get("points"))
        self._event, self._outputs, self._held = None, (), ()


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
        # Launch torch's executable graph on our stream with the driver: replay() needs torch's current
        # stream set (a stream context per frame) and only adds the RNG offsets of graphs that draw
        # random numbers, which inference programs do not. Older torch without the handle: replay().
        raw = getattr(self._graph, "raw_cuda_graph_exec", None)
        self._exec = None
        if raw is not None:
            try:
                self._exec = cuda.driver.CUgraphExec(int(raw()))
            except Exception:  # a torch or cuda-python that cannot hand the handle over: use replay()
                self._exec = None

    def launch(self, stream) -> None:
        if self._exec is not None:
            cuda.check(cuda.driver.cuGraphLaunch(self._exec, stream.handle), "cuGraphLaunch")
            return
        with self._torch.cuda.stream(self._stream):
            self._graph.replay()

    def close(self) -> None:
        self._exec = None
        self._graph.reset()
        self._graph = None


def make_plan(size, encodings, camera: StereoCamera | None, limits: DepthLimits, want_depth: bool,
              want_points: bool, points_stride: int) -> FramePlan:
    """Validate a frame's options (as every pipeline does) and freeze them."""
    check_request(size, camera, want_depth, want_points, points_stride, limits)
    return FramePlan(tuple(size), tuple(encodings), camera, limits, bool(want_depth), bool(want_points),
                     int(points_stride) if want_points else 1)
