"""A small CUDA layer over the driver API (cuda-python): one error check, RAII buffers, streams, events, graphs.

Everything runs in the device's PRIMARY context, the one the CUDA runtime (and so torch and TensorRT)
uses, so all of them share one context and one address space. `make_current()` binds it to the calling
thread; every public entry point of the pipelines calls it, so any thread may drive a pipeline.
Nothing here synchronises behind the caller's back: copies and fills are asynchronous on the stream
given, except the methods documented as blocking (for tests and setup).
"""
from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, CudaError

try:  # cuda-python >= 12.6 / 13.x
    from cuda.bindings import driver, nvrtc
except ImportError:  # pragma: no cover - older cuda-python 12.x (Jetson JetPack 6)
    try:
        from cuda import cuda as driver, nvrtc  # type: ignore[no-redef]
    except ImportError:
        driver = nvrtc = None

NAN_BITS = {np.dtype(np.float32): (0x7FC00000, 4), np.dtype(np.float16): (0x7E00, 2),
            np.dtype(np.uint8): (0xFF, 1)}
_lock = threading.Lock()
_initialized = False
_contexts: dict[int, "PrimaryContext"] = {}


def require_driver() -> None:
    if driver is None:
        raise BackendUnavailableError("cuda-python is not installed: pip install 'cuda-python>=12.6' "
                                      "nvidia-cuda-nvrtc (or the '[cuda]' extra of flashstereo_ros)")


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result tuple (status, *values); raise CudaError naming `call` on failure.

    Returns None, the single value, or a tuple of values.
    """
    if isinstance(result, tuple):
        status, values = result[0], result[1:]
    else:
        status, values = result, ()
    if driver is not None and isinstance(status, driver.CUresult):
        if status != driver.CUresult.CUDA_SUCCESS:
            raise CudaError(f"{call} failed: {_driver_error_text(status)}")
    elif nvrtc is not None and isinstance(status, nvrtc.nvrtcResult):
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CudaError(f"{call} failed: {_nvrtc_error_text(status)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _driver_error_text(status) -> str:
    try:
        name = driver.cuGetErrorName(status)[1]
        text = driver.cuGetErrorString(status)[1]
        return f"{name.decode()} ({text.decode()})"
    except Exception:  # the error-name lookup itself must never hide the original error
        return str(status)


def _nvrtc_error_text(status) -> str:
    try:
        return nvrtc.nvrtcGetErrorString(status)[1].decode()
    except Exception:
        return str(status)


def init() -> None:
    """cuInit once per process; BackendUnavailableError when there is no driver library at all."""
    global _initialized
    require_driver()
    if _initialized:
        return
    with _lock:
        if _initialized:
            return
        try:
            result = driver.cuInit(0)
        except Exception as exc:  # cuda-python raises its own error when libcuda.so cannot be loaded
            raise BackendUnavailableError(f"the NVIDIA driver library cannot be loaded: {exc}") from exc
        check(result, "cuInit")
        _initialized = True


def device_count() -> int:
    """GPUs the driver sees; 0 without a driver library or when the driver reports no device."""
    try:
        init()
    except BackendUnavailableError:
        return 0
    except CudaError as exc:
        if "CUDA_ERROR_NO_DEVICE" in str(exc):
            return 0
        raise
    return int(check(driver.cuDeviceGetCount(), "cuDeviceGetCount"))


class PrimaryContext:
    """The retained primary context of one device (kept for the process lifetime, as the runtime does)."""

    def __init__(self, device_id: int):
        init()
        count = device_count()
        if not 0 <= device_id < count:
            raise BackendUnavailableError(f"CUDA device {device_id} does not exist ({count} device(s) visible)")
        self.device_id = device_id
        self._driver = driver  # the binding that made this context (objects stay with it)
        self.device = check(driver.cuDeviceGet(device_id), "cuDeviceGet")
        self.handle = check(driver.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")

    def make_current(self) -> None:
        check(self._driver.cuCtxSetCurrent(self.handle), "cuCtxSetCurrent")

    def synchronize(self) -> None:
        self.make_current()
        check(driver.cuCtxSynchronize(), "cuCtxSynchronize")

    def attribute(self, name: str) -> int:
        attr = getattr(driver.CUdevice_attribute, f"CU_DEVICE_ATTRIBUTE_{name}")
        return int(check(driver.cuDeviceGetAttribute(attr, self.device), "cuDeviceGetAttribute"))

    @property
    def compute_capability(self) -> tuple[int, int]:
        return self.attribute("COMPUTE_CAPABILITY_MAJOR"), self.attribute("COMPUTE_CAPABILITY_MINOR")

    @property
    def name(self) -> str:
        raw = check(driver.cuDeviceGetName(256, self.device), "cuDeviceGetName")
        return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")


def primary_context(device_id: int = 0) -> PrimaryContext:
    """The device's primary context, retained on first use and made current in the calling thread."""
    with _lock:
        ctx = _contexts.get(device_id)
    if ctx is None:
        ctx = PrimaryContext(device_id)
        with _lock:
            ctx = _contexts.setdefault(device_id, ctx)
    ctx.make_current()
    return ctx


def memory_info(device_id: int = 0) -> tuple[int, int]:
    """(free, total) bytes of device memory."""
    primary_context(device_id)
    free, total = check(driver.cuMemGetInfo(), "cuMemGetInfo")
    return int(free), int(total)


def _address(obj) -> int:
    """Host or device address of a buffer object, a numpy array or a plain int."""
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, np.ndarray):
        if not obj.flags.c_contiguous:
            raise CudaError("a host array used in a copy must be C-contiguous")
        return int(obj.ctypes.data)
    return int(obj.ptr)


def _nbytes(obj) -> int | None:
    return None if isinstance(obj, (int, np.integer)) else int(obj.nbytes)


def _stream_handle(stream) -> Any:
    return stream.handle if isinstance(stream, Stream) else (stream if stream is not None else 0)


def _release(free, handle, ctx: PrimaryContext, call: str) -> None:
    """Finalizer: free/destroy in its context with the binding that created it; never raises (it can
    run during interpreter exit, when the driver may already be shut down and the OS reclaims all)."""
    try:
        ctx.make_current()
        check(free(handle), call)
    except Exception:
        pass


class _Buffer:
    """Common part of device and pinned host buffers: a shape, a dtype and a lifetime."""

    def __init__(self, shape, dtype, device_id: int):
        self.shape = tuple(int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        self.dtype = np.dtype(dtype)
        self.size = int(np.prod(self.shape)) if self.shape else 1
        self.nbytes = self.size * self.dtype.itemsize
        self._ctx = primary_context(device_id)
        self._ptr = 0
        self._finalizer = None

    @property
    def ptr(self) -> int:
        if self._finalizer is None or not self._finalizer.alive:
            raise CudaError(f"{type(self).__name__} {self.shape} {self.dtype} used after close()")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._finalizer is None or not self._finalizer.alive

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def free_with(self, owner) -> None:
        """Hand the memory's lifetime over to `owner` (e.g. the array a caller still holds): it is freed
        when `owner` is collected, not by close(). This object counts as closed from now on."""
        detached = self._finalizer.detach() if self._finalizer is not None else None
        self._finalizer = None
        if detached is not None:
            _, free, args, _ = detached
            weakref.finalize(owner, free, *args)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else hex(self._ptr)
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, {state})"


class DeviceBuffer(_Buffer):
    """Device memory (cuMemAlloc) with a shape and dtype; freed by close() or when collected."""

    def __init__(self, shape, dtype, device_id: int = 0):
        super().__init__(shape, dtype, device_id)
        ptr = check(driver.cuMemAlloc(max(self.nbytes, 1)), "cuMemAlloc")
        self._ptr = int(ptr)
        self._finalizer = weakref.finalize(self, _release, driver.cuMemFree, self._ptr, self._ctx, "cuMemFree")

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None}

    def fill_async(self, value: int, stream, bits: int = 32) -> None:
        """Fill with a 32-, 16- or 8-bit pattern (cuMemsetD32/D16/D8Async); the size must divide."""
        words = self.nbytes * 8 // bits
        if words * bits != self.nbytes * 8:
            raise CudaError(f"cannot fill {self.nbytes} bytes with a {bits}-bit pattern")
        call = {32: "cuMemsetD32Async", 16: "cuMemsetD16Async", 8: "cuMemsetD8Async"}[bits]
        check(getattr(driver, call)(self.ptr, int(value), words, _stream_handle(stream)), call)

    def fill_nan_async(self, stream) -> None:
        """Poison with quiet NaN (float32/float16; 0xFF bytes for uint8), so tests can see unwritten elements."""
        if self.dtype not in NAN_BITS:
            raise CudaError(f"no NaN pattern for dtype {self.dtype}")
        pattern, size = NAN_BITS[self.dtype]
        self.fill_async(pattern, stream, bits=8 * size)

    def copy_from_host_async(self, src, stream, nbytes: int | None = None) -> int:
        """H2D from pinned memory (PinnedBuffer, numpy view of one, or address); returns the bytes copied."""
        nbytes = self._size_for(src, nbytes)
        check(driver.cuMemcpyHtoDAsync(self.ptr, _address(src), nbytes, _stream_handle(stream)), "cuMemcpyHtoDAsync")
        return nbytes

    def copy_to_host_async(self, dst, stream, nbytes: int | None = None) -> int:
        """D2H into pinned memory; returns the bytes copied."""
        nbytes = self._size_for(dst, nbytes)
        check(driver.cuMemcpyDtoHAsync(_address(dst), self.ptr, nbytes, _stream_handle(stream)), "cuMemcpyDtoHAsync")
        return nbytes

    def copy_from_device_async(self, src: "DeviceBuffer", stream, nbytes: int | None = None) -> int:
        nbytes = self._size_for(src, nbytes)
        check(driver.cuMemcpyDtoDAsync(self.ptr, _address(src), nbytes, _stream_handle(stream)), "cuMemcpyDtoDAsync")
        return nbytes

    def upload(self, array: np.ndarray) -> None:
        """Blocking H2D of a host array of the same size (setup and tests; waits for the whole context)."""
        array = np.ascontiguousarray(array)
        self._size_for(array, None)
        self._ctx.synchronize()
        check(driver.cuMemcpyHtoD(self.ptr, _address(array), self.nbytes), "cuMemcpyHtoD")

    def download(self, stream=None) -> np.ndarray:
        """Blocking D2H into a new array (tests and on-demand inspection only), after `stream` or all work."""
        out = np.empty(self.shape, self.dtype)
        if stream is not None:
            self.copy_to_host_async(out, stream)
            check(driver.cuStreamSynchronize(_stream_handle(stream)), "cuStreamSynchronize")
        else:
            self._ctx.synchronize()
            check(driver.cuMemcpyDtoH(_address(out), self.ptr, self.nbytes), "cuMemcpyDtoH")
        return out

    def _size_for(self, other, nbytes: int | None) -> int:
        have = _nbytes(other)
        nbytes = self.nbytes if nbytes is None else int(nbytes)
        if nbytes > self.nbytes or (have is not None and nbytes > have):
            raise CudaError(f"copy of {nbytes} bytes does not fit ({self.nbytes} on the device, "
                            f"{have} on the other side)")
        return nbytes


class PinnedBuffer(_Buffer):
    """Page-locked host memory (cuMemHostAlloc, portable) with a numpy view, for asynchronous copies."""

    PORTABLE = 0x01  # CU_MEMHOSTALLOC_PORTABLE: pinned for every context

    def __init__(self, shape, dtype, device_id: int = 0):
        super().__init__(shape, dtype, device_id)
        ptr = check(driver.cuMemHostAlloc(max(self.nbytes, 1), self.PORTABLE), "cuMemHostAlloc")
        self._ptr = int(ptr)
        self._finalizer = weakref.finalize(self, _release, driver.cuMemFreeHost, self._ptr, self._ctx,
                                           "cuMemFreeHost")
        raw = (ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self._ptr)
        self._array = np.frombuffer(raw, np.uint8, self.nbytes).view(self.dtype).reshape(self.shape)

    @property
    def array(self) -> np.ndarray:
        """The numpy view of the pinned memory (valid until close(); copy what must outlive it)."""
        self.ptr  # raises after close
        return self._array


class Stream:
    """A non-blocking CUDA stream (no implicit synchronisation with the legacy default stream)."""

    NON_BLOCKING = 0x01  # CU_STREAM_NON_BLOCKING

    def __init__(self, device_id: int = 0):
        self._ctx = primary_context(device_id)
        self.handle = check(driver.cuStreamCreate(self.NON_BLOCKING), "cuStreamCreate")
        self._finalizer = weakref.finalize(self, _release, driver.cuStreamDestroy, self.handle, self._ctx,
                                           "cuStreamDestroy")

    @property
    def ptr(self) -> int:
        """The CUstream handle as an integer (what torch.cuda.ExternalStream and TensorRT take)."""
        return int(self.handle)

    def __int__(self) -> int:
        return self.ptr

    def synchronize(self) -> None:
        check(driver.cuStreamSynchronize(self.handle), "cuStreamSynchronize")

    def close(self) -> None:
        self._finalizer()


class Event:
    """A CUDA event: timing by default; timing=False for one that is only waited on (cheaper to record)."""

    RECORD_EXTERNAL = 0x01  # CU_EVENT_RECORD_EXTERNAL: stays a real event-record node inside a graph capture
    DISABLE_TIMING = 0x02  # CU_EVENT_DISABLE_TIMING

    def __init__(self, device_id: int = 0, timing: bool = True):
        self._ctx = primary_context(device_id)
        self.handle = check(driver.cuEventCreate(0 if timing else self.DISABLE_TIMING), "cuEventCreate")
        self._finalizer = weakref.finalize(self, _release, driver.cuEventDestroy, self.handle, self._ctx,
                                           "cuEventDestroy")

    def record(self, stream, capturing: bool = False) -> None:
        """Record on `stream`; while the stream is being captured, as an event node of the graph."""
        if capturing:
            check(driver.cuEventRecordWithFlags(self.handle, _stream_handle(stream), self.RECORD_EXTERNAL),
                  "cuEventRecordWithFlags")
        else:
            check(driver.cuEventRecord(self.handle, _stream_handle(stream)), "cuEventRecord")

    def synchronize(self) -> None:
        check(driver.cuEventSynchronize(self.handle), "cuEventSynchronize")

    def query(self) -> bool:
        """True when the work before the last record has completed (False while it is pending)."""
        status = driver.cuEventQuery(self.handle)[0]
        if status == driver.CUresult.CUDA_ERROR_NOT_READY:
            return False
        check((status,), "cuEventQuery")
        return True

    def elapsed_ms(self, end: "Event") -> float:
        """Milliseconds from this event to `end` (both recorded and complete)."""
        return float(check(driver.cuEventElapsedTime(self.handle, end.handle), "cuEventElapsedTime"))

    def close(self) -> None:
        self._finalizer()


def elapsed_times(events) -> list[float]:
    """Milliseconds between consecutive events (all recorded and complete): [e0->e1, e1->e2, ...]."""
    call, ok = driver.cuEventElapsedTime, driver.CUresult.CUDA_SUCCESS
    times = []
    for start, end in zip(events, events[1:]):
        status, ms = call(start.handle, end.handle)
        if status != ok:
            raise CudaError(f"cuEventElapsedTime failed: {_driver_error_text(status)}")
        times.append(float(ms))
    return times


class CudaGraph:
    """Stream capture -> executable graph -> replay (the path for runners that say graph_capture='cuda')."""

    def __init__(self, device_id: int = 0):
        self._ctx = primary_context(device_id)
        self._graph = None
        self._exec = None
        self._stream = None

    def begin_capture(self, stream: Stream) -> None:
        # thread-local: another node's thread doing a synchronising call must not break this capture
        mode = driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        check(driver.cuStreamBeginCapture(stream.handle, mode), "cuStreamBeginCapture")
        self._stream = stream

    def end_capture(self) -> None:
        graph = check(driver.cuStreamEndCapture(self._stream.handle), "cuStreamEndCapture")
        self._graph = graph
        self._exec = check(driver.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")

    def abort_capture(self) -> None:
        """End a capture that failed half-way, dropping whatever was captured."""
        if self._stream is not None:
            try:
                graph = driver.cuStreamEndCapture(self._stream.handle)
                if graph[0] == driver.CUresult.CUDA_SUCCESS and graph[1] is not None:
                    driver.cuGraphDestroy(graph[1])
            except Exception:  # the capture may already be invalidated; nothing more to undo
                pass

    def launch(self, stream: Stream) -> None:
        if self._exec is None:
            raise CudaError("cuGraphLaunch: the graph was never captured")
        check(driver.cuGraphLaunch(self._exec, stream.handle), "cuGraphLaunch")

    def close(self) -> None:
        if self._exec is not None:
            self._ctx.make_current()
            check(driver.cuGraphExecDestroy(self._exec), "cuGraphExecDestroy")
            self._exec = None
        if self._graph is not None:
            check(driver.cuGraphDestroy(self._graph), "cuGraphDestroy")
            self._graph = None
