"""The GPU pipelines' host logic on a machine without a GPU, against an emulated CUDA driver.

`EmulatedDriver` stands in for cuda.bindings.driver: "device" memory is host memory, stream work runs in
issue order (or is recorded while a stream is captured and run at graph launch; with `deferred`, it is
queued per stream and runs only when the host waits for it), and each kernel launch
is decoded from its real argument array (kernels.SIGNATURES) and computed with the numpy references
(gwc.py, depth.py, the resize tables). The kernels are still compiled with the real NVRTC. The engines run
in ONNX Runtime on those host addresses. What this proves: buffer planning, binding, argument packing,
launch order, traffic counting, plan/graph bookkeeping and the host API, not the CUDA kernels (the GPU
tests, marked `gpu`, prove those on the device).
"""
import ctypes
import importlib.util
import itertools
import time
import types
import warnings

import numpy as np
import pytest

from flashstereo_ros import contract, cuda, depth, gwc, images, kernels, resources, synthetic
from flashstereo_ros.depth import DepthLimits, StereoCamera
from flashstereo_ros.errors import StereoInputError

from conftest import post_model_without

pytestmark = pytest.mark.skipif(cuda.driver is None or importlib.util.find_spec("onnxruntime") is None,
                                reason="needs cuda-python (for its enums and NVRTC) and onnxruntime")

SMALL = (64, 128)


def _view(address: int, dtype, count: int) -> np.ndarray:
    dtype = np.dtype(dtype)
    raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(int(address))
    return np.frombuffer(raw, np.uint8).view(dtype)


def _apply_table(table_addr: int, n: int, src: np.ndarray, axis: int) -> np.ndarray:
    """The device resize table at `table_addr` applied along an axis (kernels.apply_resize_table)."""
    return kernels.apply_resize_table(_view(table_addr, np.int32, 4 * n).copy(), src, axis)


class EmulatedDriver:
    """The subset of cuda.bindings.driver that flashstereo_ros uses, on host memory."""

    def __init__(self, real):
        self.CUresult = real.CUresult
        self.CUdevice_attribute = real.CUdevice_attribute
        self.CUstreamCaptureMode = real.CUstreamCaptureMode
        self.ok = real.CUresult.CUDA_SUCCESS
        self.memory: dict[int, ctypes.Array] = {}
        self.images: dict[bytes, tuple[str, dict]] = {}
        self.modules: dict[int, tuple[str, dict]] = {}
        self.functions: dict[int, tuple[str, str, dict]] = {}
        self.capturing: dict[int, list] = {}
        self.graphs: dict[int, list] = {}
        self.event_times: dict[int, float] = {}
        self.log: list[tuple] = []  # ("launch", name) / ("h2d"|"d2h"|"d2d", bytes) / ("graph_launch",)
        self._ids = itertools.count(1)
        self.deferred = False  # True: stream work waits in `queues` until a synchronisation runs it
        self.queues: dict[int, list] = {}
        self.event_records: dict[int, tuple[int, int]] = {}  # event -> (stream, record number) of its last record
        self.events_reached: dict[int, int] = {}  # event -> record number that has run

    # -- context and device
    def cuInit(self, flags):
        return (self.ok,)

    def cuDeviceGetCount(self):
        return (self.ok, 1)

    def cuDeviceGet(self, ordinal):
        return (self.ok, ordinal)

    def cuDevicePrimaryCtxRetain(self, device):
        return (self.ok, 1000 + device)

    def cuCtxSetCurrent(self, ctx):
        return (self.ok,)

    def cuCtxSynchronize(self):
        self.run_queued()
        return (self.ok,)

    def cuDeviceGetAttribute(self, attr, device):
        major = attr == self.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        return (self.ok, 9 if major else 0)

    def cuDeviceGetName(self, length, device):
        return (self.ok, b"emulated")

    def cuMemGetInfo(self):
        return (self.ok, 1 << 34, 1 << 35)

    def cuGetErrorName(self, status):
        return (self.ok, status.name.encode())

    def cuGetErrorString(self, status):
        return (self.ok, b"emulated")

    # -- memory
    def _alloc(self, nbytes):
        block = (ctypes.c_uint8 * nbytes)()
        address = ctypes.addressof(block)
        self.memory[address] = block
        return (self.ok, address)

    def cuMemAlloc(self, nbytes):
        return self._alloc(nbytes)

    def cuMemHostAlloc(self, nbytes, flags):
        return self._alloc(nbytes)

    def cuMemFree(self, address):
        self.run_queued()  # like the driver's, a free waits for the work before it
        self.memory.pop(int(address), None)
        return (self.ok,)

    cuMemFreeHost = cuMemFree

    def _on(self, stream, work):
        if int(stream) in self.capturing:
            self.capturing[int(stream)].append(work)
        elif self.deferred:
            self.queues.setdefault(int(stream), []).append(work)
        else:
            work()
        return (self.ok,)

    def pending(self) -> int:
        """Stream work issued and not run yet (deferred mode)."""
        return sum(len(q) for q in self.queues.values())

    def run_queued(self, stream=None, until=None):
        """Run a stream's queued work (every stream's when None), or only until `until()` holds."""
        for key in [int(stream)] if stream is not None else list(self.queues):
            queue = self.queues.get(key, [])
            while queue and not (until is not None and until()):
                queue.pop(0)()

    def _copy(self, kind, dst, src, nbytes, stream):
        def work():
            self.log.append((kind, nbytes))
            ctypes.memmove(int(dst), int(src), nbytes)
        return self._on(stream, work)

    def cuMemcpyHtoDAsync(self, dst, src, nbytes, stream):
        return self._copy("h2d", dst, src, nbytes, stream)

    def cuMemcpyDtoHAsync(self, dst, src, nbytes, stream):
        return self._copy("d2h", dst, src, nbytes, stream)

    def cuMemcpyDtoDAsync(self, dst, src, nbytes, stream):
        return self._copy("d2d", dst, src, nbytes, stream)

    def cuMemcpyHtoD(self, dst, src, nbytes):
        ctypes.memmove(int(dst), int(src), nbytes)
        return (self.ok,)

    def cuMemcpyDtoH(self, dst, src, nbytes):
        ctypes.memmove(int(dst), int(src), nbytes)
        return (self.ok,)

    def _fill(self, dtype, address, value, count, stream):
        return self._on(stream, lambda: _view(address, dtype, count).fill(value))

    def cuMemsetD32Async(self, address, value, count, stream):
        return self._fill(np.uint32, address, value, count, stream)

    def cuMemsetD16Async(self, address, value, count, stream):
        return self._fill(np.uint16, address, value, count, stream)

    def cuMemsetD8Async(self, address, value, count, stream):
        return self._fill(np.uint8, address, value, count, stream)

    # -- streams, events, graphs
    def cuStreamCreate(self, flags):
        return (self.ok, next(self._ids))

    def cuStreamDestroy(self, stream):
        return (self.ok,)

    def cuStreamSynchronize(self, stream):
        self.run_queued(stream)
        return (self.ok,)

    def cuEventCreate(self, flags):
        return (self.ok, next(self._ids))

    def cuEventDestroy(self, event):
        return (self.ok,)

    def _event_reached(self, event) -> bool:
        record = self.event_records.get(int(event))
        return record is None or self.events_reached.get(int(event), 0) >= record[1]

    def cuEventSynchronize(self, event):
        record = self.event_records.get(int(event))
        if record is not None:
            self.run_queued(record[0], until=lambda: self._event_reached(event))
        return (self.ok,)

    def cuEventQuery(self, event):
        return (self.ok if self._event_reached(event) else self.CUresult.CUDA_ERROR_NOT_READY,)

    def cuEventRecord(self, event, stream):
        number = next(self._ids)
        if int(stream) not in self.capturing:
            self.event_records[int(event)] = (int(stream), number)

        def work():
            self.event_times[int(event)] = time.perf_counter()
            self.events_reached[int(event)] = number
        return self._on(stream, work)

    def cuEventRecordWithFlags(self, event, stream, flags):
        return self.cuEventRecord(event, stream)

    def cuEventElapsedTime(self, start, end):
        return (self.ok, (self.event_times[int(end)] - self.event_times[int(start)]) * 1e3)

    def cuStreamBeginCapture(self, stream, mode):
        self.capturing[int(stream)] = []
        return (self.ok,)

    def cuStreamEndCapture(self, stream):
        graph = next(self._ids)
        self.graphs[graph] = self.capturing.pop(int(stream))
        return (self.ok, graph)

    def cuGraphInstantiate(self, graph, flags):
        return (self.ok, graph)

    def cuGraphLaunch(self, graph, stream):
        def work():
            self.log.append(("graph_launch",))
            for node in self.graphs[int(graph)]:
                node()
        return self._on(stream, work)

    def cuGraphDestroy(self, graph):
        return (self.ok,)

    cuGraphExecDestroy = cuGraphDestroy

    # -- modules and kernels
    def cuModuleLoadData(self, image):
        module = next(self._ids)
        self.modules[module] = self.images[bytes(image)]
        return (self.ok, module)

    def cuModuleGetFunction(self, module, name):
        function = next(self._ids)
        source, defines = self.modules[module]
        self.functions[function] = (source, name.decode(), defines)
        return (self.ok, function)

    def cuFuncGetAttribute(self, attr, function):
        return (self.ok, 0)

    def cuOccupancyMaxActiveBlocksPerMultiprocessor(self, function, threads, shared):
        return (self.ok, 4)

    def cuLaunchKernel(self, function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        source, name, defines = self.functions[int(function)]
        kinds = kernels.SIGNATURES[name]
        pointers = (ctypes.c_void_p * len(kinds)).from_address(params)
        ctype = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "u64": ctypes.c_uint64, "f32": ctypes.c_float}
        args = [ctype[k].from_address(pointers[i]).value or 0 for i, k in enumerate(kinds)]

        def work():
            self.log.append(("launch", name))
            EMULATED[name](defines, (gx, gy, gz), *args)
        return self._on(stream, work)


def _dtype(defines, key, half_default=0):
    return np.float16 if int(defines.get(key, half_default)) else np.float32


def _k_preprocess(defines, grid, src, src_h, src_w, step, channels, r, g, b, xtab, ytab, resize, dst, h, w):
    raw = _view(src, np.uint8, src_h * step).reshape(src_h, step)[:, :src_w * channels].reshape(src_h, src_w, channels)
    planes = np.stack([raw[..., o] for o in (r, g, b)]).astype(np.float32)
    if resize:
        planes = _apply_table(ytab, h, _apply_table(xtab, w, planes, 2), 1)
    _view(dst, _dtype(defines, "OUT_HALF"), 3 * h * w)[:] = planes.reshape(-1)


def _k_group_norm(defines, grid, in_l, in_r, out_l, out_r, groups, plane):
    channels = groups * int(defines["GROUP_CHANNELS"])
    for src, dst in ((in_l, out_l), (in_r, out_r)):
        x = _view(src, _dtype(defines, "IN_HALF"), channels * plane).reshape(1, channels, 1, plane)
        _view(dst, np.float16, channels * plane)[:] = gwc.normalize_groups(x, groups).reshape(-1)


def _k_gwc(defines, grid, left, right, vol, groups, h, w):
    cg, d = int(defines["GROUP_CHANNELS"]), int(defines["DISPARITIES"])
    count = groups * cg * h * w
    lf = _view(left, np.float16, count).reshape(1, groups * cg, h, w)
    rf = _view(right, np.float16, count).reshape(1, groups * cg, h, w)
    out = _dtype(defines, "OUT_HALF", 1)
    _view(vol, out, groups * d * h * w)[:] = gwc.gwc_volume(lf, rf, groups, d, out).reshape(-1)


def _k_resize_disparity(defines, grid, src, sh, sw, xtab, ytab, resize, scale, subtract, offset, dst, h, w):
    v = _view(src, _dtype(defines, "IN_HALF"), sh * sw).reshape(sh, sw).astype(np.float32)
    if resize:
        v = (_apply_table(ytab, h, _apply_table(xtab, w, v, 1), 0) * np.float32(scale)).astype(np.float32)
    if subtract:
        v = v - np.float32(offset)
    _view(dst, np.float32, h * w)[:] = v.reshape(-1)


def _k_cast(src_dtype, dst_dtype):
    def run(defines, grid, src, dst, n):
        _view(dst, dst_dtype, n)[:] = _view(src, src_dtype, n).astype(dst_dtype)
    return run


def _k_depth(defines, grid, disp, n, fb, min_disp, min_depth, max_depth, out):
    camera = types.SimpleNamespace(focal_baseline=np.float32(fb))
    limits = DepthLimits(min_disp, min_depth, max_depth)
    _view(out, np.float32, n)[:] = depth.depth_image(_view(disp, np.float32, n), camera, limits)


def _k_points(defines, grid, dep, h, w, image, step, channels, r, g, b, stride, cx, cy, fx, fy, cloud, oh, ow):
    raw = _view(image, np.uint8, h * step).reshape(h, step)[:, :w * channels].reshape(h, w, channels)
    rgb = np.stack([raw[..., o] for o in (r, g, b)], axis=2)
    camera = types.SimpleNamespace(cx=cx, cy=cy, fx=fx, fy=fy)
    points = depth.point_cloud(_view(dep, np.float32, h * w).reshape(h, w), rgb, camera, stride)
    _view(cloud, np.float32, oh * ow * 4)[:] = points.reshape(-1)


EMULATED = {"preprocess": _k_preprocess, "group_norm": _k_group_norm, "gwc_volume": _k_gwc,
            "resize_disparity": _k_resize_disparity, "cast_f32_to_f16": _k_cast(np.float32, np.float16),
            "cast_f16_to_f32": _k_cast(np.float16, np.float32), "depth_image": _k_depth, "point_cloud": _k_points}


class EmulatedRunner:
    """An ONNX Runtime runner on the emulated device: its run is stream work (so graphs capture it)."""

    def __init__(self, inner, emulator, graph_capture):
        self.inner, self.emulator, self.graph_capture = inner, emulator, graph_capture
        self.memory = "device"
        self.inputs, self.outputs = inner.inputs, inner.outputs

    def bind(self, name, address):
        self.inner.bind(name, address)

    def enqueue(self, stream):
        self.emulator._on(stream, lambda: (self.emulator.log.append(("launch", "runner")), self.inner.enqueue(0)))

    def device_bytes(self):
        return 1234

    def close(self):
        self.inner.close()


@pytest.fixture
def emulated(monkeypatch, tmp_path):
    """Swap the CUDA driver for the emulator, with fresh context/module caches and kernel cache."""
    from flashstereo_ros import engines, pipeline, stock

    emulator = EmulatedDriver(cuda.driver)
    monkeypatch.setattr(cuda, "driver", emulator)
    monkeypatch.setattr(cuda, "_initialized", False)
    monkeypatch.setattr(cuda, "_contexts", {})
    monkeypatch.setattr(kernels, "_modules", {})
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path / "kernels"))
    real_image_for = kernels.image_for

    def recording_image_for(source, arch, defines=None):
        image = real_image_for(source, arch, defines)
        emulator.images[bytes(image)] = (source, dict(defines or {}))
        return image

    monkeypatch.setattr(kernels, "image_for", recording_image_for)
    emulator.graph_capture = None

    def load(feat, post, backend=None, memory=None, **kwargs):
        pair = engines.load_engine_pair(feat, post, backend, "host", **kwargs)
        pair.feature = EmulatedRunner(pair.feature, emulator, emulator.graph_capture)
        pair.post = EmulatedRunner(pair.post, emulator, emulator.graph_capture)
        return pair

    monkeypatch.setattr(pipeline, "load_engine_pair", load)
    monkeypatch.setattr(stock, "load_engine_pair", load)
    return emulator


def small_models():
    return resources.bundled_models(".onnx", SMALL)


def scene(size=SMALL, seed=0, kind="mixed"):
    return synthetic.make_scene(kind, *size, seed=seed)


def flash(**options):
    from flashstereo_ros.pipeline import FlashStereoPipeline

    return FlashStereoPipeline(*small_models(), **options)


def stock_pipe():
    from flashstereo_ros.stock import StockPipeline

    return StockPipeline(*small_models())


@pytest.fixture(scope="module")
def cpu_pipe():
    from flashstereo_ros import CpuStereoPipeline

    return CpuStereoPipeline(*small_models())


def test_resident_pipeline_equals_cpu_pipeline_bit_for_bit(emulated, cpu_pipe):
    s = scene()
    pipe = flash()
    try:
        out = pipe.infer(s.left, s.right)
        expected = cpu_pipe.infer(s.left, s.right)
        assert out.shape == SMALL and out.dtype == np.float32
        assert np.array_equal(out, expected)
        inter = pipe.intermediates()
        assert np.array_equal(inter["normalized_left"], cpu_pipe.normalized[0])
        assert np.array_equal(inter["normalized_right"], cpu_pipe.normalized[1])
        assert np.array_equal(inter[contract.GWC_VOLUME], cpu_pipe.post_buffers[contract.GWC_VOLUME])
        assert np.array_equal(inter[contract.LEFT], images.to_planar_rgb(s.left, "rgb8", SMALL))
    finally:
        pipe.close()


def test_resident_frame_issues_the_designed_sequence_and_traffic(emulated):
    s = scene()
    pipe = flash()
    try:
        pipe.infer(s.left, s.right)
        emulated.log.clear()
        pipe.infer(s.left, s.right)
        h, w = SMALL
        assert pipe.traffic == {"h2d": 2 * h * w * 3, "d2h": h * w * 4, "h2d_count": 2, "d2h_count": 1}
        assert [e for e in emulated.log if e[0] != "launch"] == [("h2d", h * w * 3)] * 2 + [("d2h", h * w * 4)]
        launches = [e[1] for e in emulated.log if e[0] == "launch"]
        # same size, no offset, float32 disparity: no resize kernel, the D2H reads the engine's output
        assert launches == ["preprocess", "preprocess", "runner", "group_norm", "gwc_volume", "runner"]
        assert set(pipe.timings) == {*("h2d", "preprocess", "feature", "norm", "gwc", "post", "postprocess",
                                       "depth_points", "d2h"), "total"}
        assert all(v >= 0 for v in pipe.timings.values())
    finally:
        pipe.close()


def test_stock_pipeline_bounces_through_the_host_and_agrees(emulated, cpu_pipe):
    s = scene(seed=3)
    pipe, resident = stock_pipe(), flash()
    try:
        out = pipe.infer(s.left, s.right)
        assert np.array_equal(out, cpu_pipe.infer(s.left, s.right))
        assert np.array_equal(out, resident.infer(s.left, s.right))
        a, b = pipe.intermediates(), resident.intermediates()
        for key in (*contract.FEATURE_OUTPUTS, "normalized_left", "normalized_right", contract.GWC_VOLUME,
                    "disparity_engine", contract.LEFT, contract.RIGHT):
            assert np.array_equal(a[key], b[key]), key
        geo = pipe.geometry
        feats = sum(spec.nbytes for spec in geo.feature_outputs.values())
        post = sum(spec.nbytes for spec in geo.post_inputs.values())
        normed = 2 * geo.feature_outputs[contract.FEATURES_LEFT_04].nbytes // 2  # half of float32
        images_in = sum(spec.nbytes for spec in geo.image_inputs.values())
        volume = geo.post_inputs[contract.GWC_VOLUME].nbytes
        assert pipe.traffic == {"h2d": images_in + normed + post, "d2h": feats + volume + geo.disparity.nbytes,
                                "h2d_count": 2 + 2 + 7, "d2h_count": 6 + 1 + 1}
        assert {"d2h_features", "norm", "h2d_post", "total"} <= set(pipe.timings)
    finally:
        pipe.close()
        resident.close()


def test_a_post_engine_without_a_feature_input_is_served_the_others(emulated, cpu_pipe, tmp_path):
    s = scene(seed=5)
    expected = cpu_pipe.infer(s.left, s.right)
    models = post_model_without(tmp_path, "features_left_32", cpu_pipe.buffers["features_left_32"].copy())
    from flashstereo_ros.pipeline import FlashStereoPipeline
    from flashstereo_ros.stock import StockPipeline

    resident, stock = FlashStereoPipeline(*models), StockPipeline(*models)
    try:
        assert np.array_equal(resident.infer(s.left, s.right), expected)
        assert np.array_equal(stock.infer(s.left, s.right), expected)
        assert stock.traffic["h2d_count"] == 2 + 2 + 6  # images, normalised features, the post stage's inputs
    finally:
        resident.close()
        stock.close()


def test_camera_size_other_than_engine_size_is_resized_both_ways(emulated, cpu_pipe):
    s = scene((50, 100), seed=5)
    pipe = flash()
    try:
        out = pipe.infer(s.left, s.right)
        expected = cpu_pipe.infer(s.left, s.right)
        assert out.shape == (50, 100)
        # same arithmetic as cv2 up to its SIMD rounding: far below a pixel
        assert np.abs(out - expected).max() < 0.05
        assert pipe.traffic["h2d"] == 2 * 50 * 100 * 3 and pipe.traffic["d2h"] == 50 * 100 * 4
        back = pipe.infer(*(scene(SMALL, seed=6).left, scene(SMALL, seed=6).right))
        assert back.shape == SMALL
    finally:
        pipe.close()


def camera_for(size, offset=1.5):
    h, w = size
    fx = 0.8 * w
    p_left = [fx, 0, w / 2 + 0.25, 0, 0, fx, h / 2 - 0.5, 0, 0, 0, 1, 0]
    p_right = [fx, 0, w / 2 + 0.25 - offset, -fx * 0.12, 0, fx, h / 2 - 0.5, 0, 0, 0, 1, 0]
    return StereoCamera.from_projections(p_left, p_right, w, h)


@pytest.mark.parametrize("stride", [1, 3])
def test_depth_and_points_equal_the_numpy_reference(emulated, cpu_pipe, stride):
    s = scene(seed=2)
    camera = camera_for(SMALL)
    limits = DepthLimits(min_disparity=1.0, min_depth=0.5, max_depth=20.0)
    pipe = flash()
    try:
        got = pipe.process(s.left, s.right, camera=camera, limits=limits, want_depth=True, want_points=True,
                           points_stride=stride)
        ref = cpu_pipe.process(s.left, s.right, camera=camera, limits=limits, want_depth=True, want_points=True,
                               points_stride=stride)
        assert np.array_equal(got.disparity, ref.disparity)
        assert np.array_equal(got.depth, ref.depth, equal_nan=True)
        assert np.array_equal(got.points, ref.points, equal_nan=True)
        h, w = SMALL
        oh, ow = kernels.points_shape(SMALL, stride)
        assert pipe.traffic["d2h"] == h * w * 4 * 2 + oh * ow * 16 and pipe.traffic["d2h_count"] == 3
        only_points = pipe.process(s.left, s.right, camera=camera, limits=limits, want_points=True,
                                   points_stride=stride)
        assert only_points.depth is None and np.array_equal(only_points.points, ref.points, equal_nan=True)
    finally:
        pipe.close()


def test_cuda_graph_replays_the_same_frame_sequence(emulated):
    emulated.graph_capture = "cuda"
    eager, graphed = flash(), flash(use_cuda_graph=True)
    try:
        assert graphed.graph_mode == "cuda"
        pairs = [scene(seed=i) for i in range(3)]
        for p in pairs:
            emulated.log.clear()
            out = graphed.infer(p.left, p.right)
            assert np.array_equal(out, eager.infer(p.left, p.right))
        assert ("graph_launch",) in emulated.log  # frames after the warm-up replay the graph
        assert graphed.traffic == eager.traffic
        emulated.log.clear()
        resized = scene((48, 96), seed=9)
        assert np.array_equal(graphed.infer(resized.left, resized.right), eager.infer(resized.left, resized.right))
        assert ("graph_launch",) not in emulated.log  # a new camera size is a warm-up frame and a new capture
        graphed.infer(resized.left, resized.right)
        assert graphed.timings["total"] >= 0
    finally:
        eager.close()
        graphed.close()


def test_a_failed_capture_keeps_the_frame_and_runs_on_without_a_graph(emulated, monkeypatch):
    """An engine whose enqueue fails while capturing (TensorRT weight streaming, some plugins)."""
    emulated.graph_capture = "cuda"
    eager, graphed = flash(), flash(use_cuda_graph=True)
    refusals = []

    def refuse(stream):
        refusals.append(emulated.capturing.pop(int(stream)))
        return (emulated.CUresult.CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, None)

    monkeypatch.setattr(emulated, "cuStreamEndCapture", refuse)
    try:
        pairs = [scene(seed=i) for i in range(3)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outputs = [graphed.infer(p.left, p.right) for p in pairs]
        assert len(refusals) == 1 and graphed.graph_mode is None
        assert any("capture" in str(w.message) and "without a graph" in str(w.message) for w in caught)
        for p, out in zip(pairs, outputs):
            assert np.array_equal(out, eager.infer(p.left, p.right))
    finally:
        eager.close()
        graphed.close()


def test_runner_that_cannot_be_captured_runs_without_a_graph(emulated):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = flash(use_cuda_graph=True)
    try:
        assert pipe.graph_mode is None
        assert any("cannot be captured" in str(w.message) for w in caught)
        s = scene()
        assert pipe.infer(s.left, s.right).shape == SMALL
    finally:
        pipe.close()


def test_poisoned_buffers_are_all_overwritten(emulated):
    s = scene(seed=4)
    pipe = flash()
    try:
        first = pipe.infer(s.left, s.right)
        pipe.poison()
        assert np.isnan(pipe.intermediates()[contract.GWC_VOLUME]).all()
        again = pipe.infer(s.left, s.right)
        assert np.array_equal(first, again)
        for name, value in pipe.intermediates().items():
            assert np.isfinite(value).all(), name
    finally:
        pipe.close()


def test_encodings_and_bad_requests(emulated, cpu_pipe):
    s = scene(seed=8)
    pipe = flash()
    try:
        rgb = pipe.infer(s.left, s.right)
        assert np.array_equal(pipe.infer(s.left[..., ::-1].copy(), s.right[..., ::-1].copy(), "bgr8"), rgb)
        alpha = np.full(SMALL + (1,), 255, np.uint8)
        assert np.array_equal(pipe.infer(np.concatenate([s.left, alpha], 2), np.concatenate([s.right, alpha], 2)), rgb)
        grey = s.left[..., 1].copy(), s.right[..., 1].copy()
        assert np.array_equal(pipe.infer(*grey, encoding="mono8"), cpu_pipe.infer(*grey, encoding="mono8"))
        with pytest.raises(StereoInputError, match="need the stereo camera"):
            pipe.process(s.left, s.right, want_depth=True)
        with pytest.raises(StereoInputError, match="does not match the camera"):
            pipe.process(s.left, s.right, camera=camera_for((32, 64)))
        with pytest.raises(StereoInputError, match="one size"):
            pipe.infer(s.left, s.right[:, :-4])
    finally:
        pipe.close()


def test_memory_accounting_and_close(emulated):
    s = scene()
    pipe = flash()
    before = pipe.memory_bytes()
    pipe.infer(s.left, s.right)
    after = pipe.memory_bytes()
    h, w = SMALL
    assert before["device"] > 1234 and after["host"] - before["host"] == 2 * h * w * 3 + h * w * 4
    pipe.close()
    pipe.close()
    with pytest.raises(StereoInputError, match="closed"):
        pipe.infer(s.left, s.right)
    assert not emulated.memory, "every buffer is freed on close"


@pytest.mark.parametrize("graph", [False, True])
def test_returned_disparity_is_never_overwritten_while_held_and_outlives_close(emulated, graph):
    """The disparity is returned without a host copy: a pinned array is reused only once the caller has
    dropped it and every view of it; past the slots, frames fall back to copies; held arrays outlive close()."""
    import gc

    from flashstereo_ros.pipeline import OUTPUT_SLOTS

    emulated.graph_capture = "cuda" if graph else None
    a, b = scene(seed=11), scene(seed=12)
    pipe = flash(use_cuda_graph=graph)
    try:
        first = pipe.infer(a.left, a.right)
        expected_a = first.copy()
        view = first[::2, 1:]  # a view alone keeps the array in use
        del first
        held = [pipe.infer(b.left, b.right) for _ in range(OUTPUT_SLOTS + 2)]  # the last ones are copies
        expected_b = held[0].copy()
        assert not np.array_equal(expected_a, expected_b)
        assert np.array_equal(view, expected_a[::2, 1:])
        assert all(np.array_equal(out, expected_b) for out in held)
        h, w = SMALL
        host = pipe.memory_bytes()["host"]
        assert host == 2 * h * w * 3 + (OUTPUT_SLOTS + 1) * h * w * 4  # the slots + one staging buffer
        del held
        for _ in range(3):
            assert np.array_equal(pipe.infer(b.left, b.right), expected_b)
        assert pipe.memory_bytes()["host"] == host and pipe.traffic["d2h_count"] == 1
        pipe.poison()  # leaves the held array alone
        assert np.array_equal(view, expected_a[::2, 1:])
        assert {"h2d", "feature", "post", "d2h", "total"} <= set(pipe.timings)
    finally:
        pipe.close()
    assert np.array_equal(view, expected_a[::2, 1:])  # still the caller's after close
    assert len(emulated.memory) == 1, "only the held array's pinned memory is still allocated"
    del view
    gc.collect()
    assert not emulated.memory, "freed once the caller dropped it"


def test_held_depth_and_points_are_never_overwritten(emulated):
    """Depth and points are returned without a host copy too, under the same rule as the disparity."""
    a, b = scene(seed=16), scene(seed=17)
    camera = camera_for(SMALL)
    pipe = flash()
    try:
        first = pipe.process(a.left, a.right, camera=camera, want_depth=True, want_points=True)
        expected = (first.depth.copy(), first.points.copy())
        for stride in (1, 1, 2):  # the same buffers, then a new stride (new point buffers)
            later = pipe.process(b.left, b.right, camera=camera, want_depth=True, want_points=True,
                                 points_stride=stride)
            assert not np.array_equal(later.depth, expected[0], equal_nan=True)
        assert np.array_equal(first.depth, expected[0], equal_nan=True)
        assert np.array_equal(first.points, expected[1], equal_nan=True)
        assert later.points.shape[:2] == kernels.points_shape(SMALL, 2)
    finally:
        pipe.close()
    assert np.array_equal(first.points, expected[1], equal_nan=True)  # still the caller's after close


def test_post_calibration_tensors_from_the_gpu_pipeline_equal_the_cpu_ones(emulated, cpu_pipe):
    from flashstereo_ros.tools.gen_post_calib_data import host_post_inputs

    s = scene(seed=18)
    pipe = flash()
    try:
        pipe.infer(s.left, s.right)
        cpu_pipe.infer(s.left, s.right)
        got, expected = host_post_inputs(pipe), host_post_inputs(cpu_pipe)
        assert set(got) == set(expected) == set(contract.POST_INPUTS)
        for name in expected:
            assert got[name].dtype == expected[name].dtype and np.array_equal(got[name], expected[name]), name
    finally:
        pipe.close()


def test_timings_are_read_when_asked_and_follow_the_last_frame(emulated):
    s = scene(seed=13)
    pipe = flash()
    try:
        pipe.infer(s.left, s.right)
        first = dict(pipe.timings)
        assert set(first) == {*("h2d", "preprocess", "feature", "norm", "gwc", "post", "postprocess",
                                "depth_points", "d2h"), "total"}
        assert pipe.timings == first  # read once, then cached
        pipe.infer(s.left, s.right)
        assert pipe.timings is not first and set(pipe.timings) == set(first)
    finally:
        pipe.close()


def test_held_disparity_survives_a_camera_size_change(emulated):
    import gc

    s, other = scene(seed=14), scene((48, 96), seed=15)
    pipe = flash()
    try:
        out = pipe.infer(s.left, s.right)
        expected = out.copy()
        resized = pipe.infer(other.left, other.right)  # new camera buffers; the old ones are released
        assert resized.shape == (48, 96) and np.array_equal(out, expected)
        blocks = len(emulated.memory)
        del out
        gc.collect()
        assert len(emulated.memory) == blocks - 1
    finally:
        pipe.close()


def test_images_staged_by_two_threads_equal_one_thread(emulated, monkeypatch):
    """From PARALLEL_STAGING_BYTES on, a helper thread stages the right image; same output, thread ends on close."""
    from flashstereo_ros import pipeline as pipeline_module

    s = scene(seed=16)
    one = flash()
    try:
        expected = one.infer(s.left, s.right)
    finally:
        one.close()
    monkeypatch.setattr(pipeline_module, "PARALLEL_STAGING_BYTES", 0)
    pipe = flash()
    try:
        for _ in range(3):
            assert np.array_equal(pipe.infer(s.left, s.right), expected)
        thread = pipe._stager._thread
        assert thread.is_alive() and pipe.traffic["h2d_count"] == 2
    finally:
        pipe.close()
    assert not thread.is_alive()


@pytest.mark.parametrize("graph", [False, True])
def test_submitted_frames_run_later_in_order_and_each_keeps_its_output(emulated, graph):
    """submit() returns before the GPU work runs (deferred emulation: nothing runs until the host waits);
    each frame still gets its own images and output array, though the next frame is staged before the
    last one's uploads have run."""
    emulated.graph_capture = "cuda" if graph else None
    scenes = [scene(seed=40 + i) for i in range(5)]
    pipe = flash(use_cuda_graph=graph)
    try:
        expected = [pipe.infer(s.left, s.right).copy() for s in scenes]  # (the first one is captured in graph mode)
        emulated.deferred = True
        frames = [pipe.submit(s.left, s.right) for s in scenes[:2]]
        assert emulated.pending() > 0 and not frames[0].done()  # the second was staged before the first ran
        # staging waits for the second's uploads (after the first)
        frames.append(pipe.submit(scenes[2].left, scenes[2].right))
        assert frames[0].done() and not frames[2].done()
        outputs = [f.result().disparity for f in frames]
        assert all(f.done() for f in frames)
        frames += [pipe.submit(s.left, s.right) for s in scenes[3:]]
        outputs += [f.result().disparity for f in frames[3:]]
        for got, want in zip(outputs, expected):
            assert np.array_equal(got, want)
        assert len({id(a) for a in outputs[:3]}) == 3, "frames in flight never share an output array"
        assert set(pipe.timings) >= {"feature", "post", "total"}
    finally:
        pipe.close()


def test_more_frames_in_flight_than_output_slots_fall_back_to_copies(emulated):
    from flashstereo_ros.pipeline import OUTPUT_SLOTS

    scenes = [scene(seed=50 + i) for i in range(OUTPUT_SLOTS + 3)]
    pipe = flash()
    try:
        expected = [pipe.infer(s.left, s.right).copy() for s in scenes]
        emulated.deferred = True
        host = pipe.memory_bytes()["host"]
        frames = [pipe.submit(s.left, s.right) for s in scenes]
        assert all(f.done() for f in frames[OUTPUT_SLOTS:]), "past the slots a frame is waited for and copied"
        h, w = SMALL
        assert pipe.memory_bytes()["host"] == host + OUTPUT_SLOTS * h * w * 4  # 3 more slots + the staging buffer
        for frame, want in zip(frames, expected):
            assert np.array_equal(frame.result().disparity, want)
    finally:
        pipe.close()


def test_a_pending_frame_outlives_close(emulated):
    s = scene(seed=60)
    pipe = flash()
    expected = pipe.infer(s.left, s.right).copy()
    emulated.deferred = True
    frame = pipe.submit(s.left, s.right)
    pipe.close()  # waits for the stream
    assert np.array_equal(frame.result().disparity, expected)


def test_pipelined_stereo_returns_every_output_in_order(emulated, cpu_pipe):
    from flashstereo_ros import PipelinedStereo

    scenes = [scene(seed=70 + i) for i in range(7)]
    expected = [cpu_pipe.infer(s.left, s.right) for s in scenes]
    emulated.deferred = True
    with PipelinedStereo([flash(), flash()], in_flight=3) as group:
        outputs = [out.disparity.copy() for out in group.map((s.left, s.right) for s in scenes)]
        assert [p.traffic["d2h_count"] for p in group.pipelines] == [1, 1]
    assert all(p._closed for p in group.pipelines)
    for got, want in zip(outputs, expected):
        assert np.array_equal(got, want)
    with pytest.raises(StereoInputError, match="in_flight"):
        PipelinedStereo([cpu_pipe], in_flight=0)


def test_bench_throughput_with_frames_in_flight_runs_on_the_emulated_device(emulated):
    from flashstereo_ros.tools import bench

    scenes = [scene(seed=90 + i) for i in range(2)]
    inputs = bench.Inputs([(s.left, s.right) for s in scenes], scenes)
    emulated.deferred = True
    result = bench.pipelined_throughput(*map(str, small_models()), None, inputs, frames=6, graph=False, streams=2)
    assert result["streams"] == 2 and result["frames"] == 6
    assert min(result["single_hz"], result["queued_hz"], result["pipelined_hz"]) > 0
    assert result["ratio"] == pytest.approx(result["pipelined_hz"] * result["latency_ms"] / 1e3)
    assert "frames in flight" in bench.format_extras({"pipelined": result})


def out_of_memory_above(emulated, monkeypatch, nbytes) -> dict:
    """cuMemAlloc fails for blocks larger than limit["bytes"] (None: never), as a device does for a frame too
    large."""
    real, limit = emulated.cuMemAlloc, {"bytes": nbytes}

    def allocate(n):
        if limit["bytes"] is not None and n > limit["bytes"]:
            return (emulated.CUresult.CUDA_ERROR_OUT_OF_MEMORY, None)
        return real(n)

    monkeypatch.setattr(emulated, "cuMemAlloc", allocate)
    return limit


@pytest.mark.parametrize("graph", [False, True])
def test_a_camera_size_that_does_not_fit_leaves_the_last_size_working(emulated, monkeypatch, graph):
    emulated.graph_capture = "cuda" if graph else None
    s = scene(seed=1)
    pipe, ref = flash(use_cuda_graph=graph), flash()
    try:
        expected = ref.infer(s.left, s.right).copy()
        pipe.infer(s.left, s.right)
        pipe.infer(s.left, s.right)
        memory = pipe.memory_bytes()
        out_of_memory_above(emulated, monkeypatch, 10_000_000)
        huge = np.zeros((2000, 4000, 3), np.uint8)
        for _ in range(3):
            with pytest.raises(cuda.CudaError, match="OUT_OF_MEMORY|out of memory"):
                pipe.infer(huge, huge)
        assert pipe.memory_bytes()["host"] <= memory["host"]  # what the failed size allocated was freed
        for _ in range(2):  # the eager frame that rebuilds the buffers, then (graph mode) a replay
            assert np.array_equal(pipe.infer(s.left, s.right), expected)
    finally:
        pipe.close()
        ref.close()


@pytest.mark.parametrize("graph", [False, True])
def test_a_point_cloud_stride_that_does_not_fit_leaves_the_last_stride_working(emulated, monkeypatch, graph):
    emulated.graph_capture = "cuda" if graph else None
    s = scene(seed=3)
    options = dict(camera=camera_for(SMALL), want_points=True, points_stride=1)
    pipe = flash(use_cuda_graph=graph)
    try:
        expected = pipe.process(s.left, s.right, **options).points.copy()
        pipe.process(s.left, s.right, **options)
        limit = out_of_memory_above(emulated, monkeypatch, 0)  # the stride-2 cloud cannot be allocated
        with pytest.raises(cuda.CudaError):
            pipe.process(s.left, s.right, **{**options, "points_stride": 2})
        limit["bytes"] = None
        for _ in range(2):
            assert np.array_equal(pipe.process(s.left, s.right, **options).points, expected, equal_nan=True)
    finally:
        pipe.close()


def test_pipelined_map_hands_out_the_frames_before_a_bad_pair(emulated):
    from flashstereo_ros.pipelined import PipelinedStereo

    scenes = [scene(seed=30 + i) for i in range(4)]
    ref = flash()
    expected = [ref.infer(s.left, s.right).copy() for s in scenes]
    ref.close()
    pairs = [(s.left, s.right) for s in scenes] + [(scenes[0].left, scenes[0].right[:, :-4])]
    emulated.deferred = True
    outputs = []
    with PipelinedStereo([flash(), flash()], in_flight=3) as group:
        with pytest.raises(StereoInputError, match="one size"):
            for out in group.map(pairs):
                outputs.append(out.disparity.copy())
    assert len(outputs) == len(scenes) and all(np.array_equal(a, b) for a, b in zip(outputs, expected))


def test_close_releases_everything_even_when_an_engine_fails_to_close(emulated, monkeypatch):
    pipe = flash()
    s = scene()
    pipe.infer(s.left, s.right)

    def dead_context():
        raise cuda.CudaError("cuCtxSynchronize failed: an illegal memory access was encountered")

    monkeypatch.setattr(pipe.engines.feature, "close", dead_context)
    with pytest.warns(RuntimeWarning, match="closing the engines failed"):
        pipe.close()
    assert pipe.memory_bytes() == {"device": 0, "host": 0}
