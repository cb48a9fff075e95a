"""Engine runners behind one small protocol, so the pipelines never care what runs a stage.

A runner knows its tensors (name -> TensorSpec, in the engine's own names), takes the address of a
buffer for each (`bind`), and runs on a stream (`enqueue`). The pipeline owns every buffer and the
stream; a runner never allocates per frame.

- TensorRTRunner   `.engine`/`.plan`: TensorRT 10.x/11.x name-based API (set_tensor_address,
                   execute_async_v3). No TensorRT exists where this package is developed: this class is
                   written against the documented API, kept thin, and tested against a stand-in module
                   with that API's documented returns (test_runners.py).
- TorchRunner      `.pt2`: torch.export programs on CUDA, reading our device buffers in place
                   (__cuda_array_interface__) and writing results into them on our stream.
- OnnxRuntimeRunner `.onnx`: ONNX Runtime with I/O binding to our buffers; CPU everywhere, CUDA EP
                   (onnxruntime-gpu) on our stream when asked for device memory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from . import contract
from .contract import TensorSpec
from .errors import BackendUnavailableError, CudaError, ModelError

HOST, DEVICE = "host", "device"
BACKEND_BY_SUFFIX = {".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt",
                     ".onnx": "onnxruntime", ".pt2": "torch"}
BACKENDS = ("tensorrt", "onnxruntime", "torch")


class Runner(Protocol):
    """What a pipeline needs of an engine."""

    memory: str  # HOST: bind host addresses, enqueue runs synchronously; DEVICE: device addresses
    graph_capture: str | None  # how a frame containing this runner can be captured: "cuda", "torch" or None
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def bind(self, name: str, address: int) -> None: ...

    def enqueue(self, stream: int) -> None: ...

    def device_bytes(self) -> int: ...

    def close(self) -> None: ...


def backend_for(path: str | Path, backend: str | None = None) -> str:
    """The backend that runs `path`: the explicit one, else the one its suffix names."""
    if backend:
        if backend not in BACKENDS:
            raise ModelError(f"unknown backend '{backend}'; choose one of {BACKENDS}")
        return backend
    suffix = Path(path).suffix.lower()
    if suffix not in BACKEND_BY_SUFFIX:
        raise ModelError(f"cannot tell the backend of '{path}' from its suffix; use one of "
                         f"{sorted(BACKEND_BY_SUFFIX)} or name the backend")
    return BACKEND_BY_SUFFIX[suffix]


def open_runner(path: str | Path, backend: str | None = None, memory: str = HOST, stream: int = 0,
                device_id: int = 0, threads: int | None = None) -> Runner:
    """Load one stage. memory=DEVICE asks for a runner that works on device buffers on `stream`."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    kind = backend_for(path, backend)
    if kind == "onnxruntime":
        return OnnxRuntimeRunner(path, memory, stream, device_id, threads)
    if memory == HOST:
        raise ModelError(f"the {kind} backend runs on the GPU only; '{path.name}' needs the CUDA pipeline")
    if kind == "torch":
        return TorchRunner(path, device_id)
    return TensorRTRunner(path)


def _specs(items) -> dict[str, TensorSpec]:
    return {name: TensorSpec(name, tuple(int(d) for d in shape), np.dtype(dtype)) for name, shape, dtype in items}


def _static(path: Path, name: str, shape) -> None:
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise ModelError(f"'{path.name}' tensor '{name}' has dynamic shape {list(shape)}; export or build it "
                         "with a fixed image size (e.g. make_onnx.py --height H --width W)")


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8}


class OnnxRuntimeRunner:
    """ONNX Runtime with I/O bound to our buffers (host memory on CPU, device memory with the CUDA EP)."""

    graph_capture = None

    def __init__(self, path: Path, memory: str = HOST, stream: int = 0, device_id: int = 0,
                 threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from exc
        self.memory = memory
        self._device_id = device_id
        self._path = path
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # 4 = fatal only: ORT logs a failed load or run at 3 (error) on stderr, and we raise it as ModelError
        options.log_severity_level = 4
        if memory == DEVICE:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError("this onnxruntime has no CUDA execution provider; install "
                                              "onnxruntime-gpu, or use a .pt2 or TensorRT engine on the GPU")
            providers = [("CUDAExecutionProvider", {"device_id": device_id, "has_user_compute_stream": "1",
                                                    "user_compute_stream": str(int(stream))})]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for corrupt or invalid files
            raise ModelError(f"ONNX Runtime cannot load '{path}': {exc}") from exc
        items = []
        for arg in list(self.session.get_inputs()) + list(self.session.get_outputs()):
            _static(path, arg.name, arg.shape)
            if arg.type not in _ORT_TYPES:
                raise ModelError(f"'{path.name}' tensor '{arg.name}' has unsupported type {arg.type}")
            items.append((arg.name, arg.shape, _ORT_TYPES[arg.type]))
        n_in = len(self.session.get_inputs())
        self.inputs = _specs(items[:n_in])
        self.outputs = _specs(items[n_in:])
        self._binding = self.session.io_binding()
        self._bound: dict[str, int] = {}

    def bind(self, name: str, address: int) -> None:
        spec = self.inputs.get(name) or self.outputs.get(name)
        if spec is None:
            raise ModelError(f"no tensor named '{name}' in this ONNX model")
        device = "cuda" if self.memory == DEVICE else "cpu"
        bind = self._binding.bind_input if name in self.inputs else self._binding.bind_output
        bind(name, device, self._device_id, spec.dtype.type, list(spec.shape), int(address))
        self._bound[name] = int(address)

    def enqueue(self, stream: int = 0) -> None:
        missing = [n for n in list(self.inputs) + list(self.outputs) if n not in self._bound]
        if missing:
            raise ModelError(f"tensors {missing} were never bound")
        try:
            self.session.run_with_iobinding(self._binding)
        except Exception as exc:  # ORT's own types (e.g. an output whose computed shape is not the declared one)
            raise ModelError(f"ONNX Runtime failed running '{self._path}': {exc}") from exc

    def device_bytes(self) -> int:
        return 0

    def close(self) -> None:
        self._binding = None
        self.session = None


_TORCH_TO_NUMPY = {"torch.float32": np.float32, "torch.float16": np.float16, "torch.int32": np.int32,
                   "torch.int64": np.int64, "torch.uint8": np.uint8}


class _DeviceArray:
    """The smallest object torch.as_tensor reads as device memory without copying."""

    def __init__(self, address: int, spec: TensorSpec):
        self.__cuda_array_interface__ = {"shape": tuple(spec.shape), "typestr": spec.dtype.str,
                                         "data": (int(address), False), "version": 3, "strides": None}


class TorchRunner:
    """A torch.export program (.pt2) on CUDA, reading and writing the pipeline's device buffers."""

    memory = DEVICE
    graph_capture = "torch"

    def __init__(self, path: Path, device_id: int = 0):
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError("the torch backend needs PyTorch with CUDA") from exc
        if not torch.cuda.is_available():
            raise BackendUnavailableError("PyTorch sees no CUDA device; the torch backend runs .pt2 programs on "
                                          "the GPU")
        self._torch = torch
        self._device = torch.device("cuda", device_id)
        extra = {contract.IO_NAMES_FILE: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as exc:  # torch raises several types for a bad archive
            raise ModelError(f"'{path}' is not a loadable torch.export program: {exc}") from exc
        move = getattr(getattr(torch.export, "passes", None), "move_to_device_pass", None)
        if move is not None:
            program = move(program, self._device)
        self._module = program.module().to(self._device)
        nodes = {node.name: node for node in program.graph.nodes}
        inputs = [(str(name), self._tensor_value(path, f"input '{name}'", nodes.get(name, name)))
                  for name in program.graph_signature.user_inputs]
        output_node = next(node for node in program.graph.nodes if node.op == "output")
        values = [self._tensor_value(path, f"output {i}", arg) for i, arg in enumerate(output_node.args[0])]
        names = self._output_names(path, extra[contract.IO_NAMES_FILE], len(values), [n for n, _ in inputs])
        for name, value in inputs + list(zip(names, values)):
            _static(path, name, tuple(value.shape))  # a SymInt dimension is dynamic: refuse it, as for ONNX
        self.inputs = _specs((n, v.shape, self._numpy_dtype(path, n, v)) for n, v in inputs)
        self.outputs = _specs((n, v.shape, self._numpy_dtype(path, n, v)) for n, v in zip(names, values))
        self._tensors: dict[str, object] = {}
        self._streams: dict[int, object] = {}

    def _tensor_value(self, path: Path, what: str, node):
        """The example tensor torch.export recorded for a graph input/output; ModelError for a non-tensor
        (a constant int input, an int or None output), which the pipeline has no buffer for."""
        value = node.meta.get("val") if hasattr(node, "meta") else node
        if not isinstance(value, self._torch.Tensor):
            raise ModelError(f"'{path}' {what} is not a tensor ({type(value).__name__}); export a program whose "
                             "inputs and outputs are all tensors")
        return value

    @staticmethod
    def _output_names(path: Path, text: str, count: int, input_names: list[str]) -> list[str]:
        """The output names from the archive's flashstereo_io.json, else the contract's names by count."""
        try:
            names = json.loads(text).get("outputs") if text else None
        except (ValueError, AttributeError) as exc:  # not JSON, or JSON that is not an object
            raise ModelError(f"'{path}' {contract.IO_NAMES_FILE} must be a JSON object {{\"outputs\": [names]}} "
                             f"({exc}); re-export the program") from exc
        if names is None:
            for names in (contract.FEATURE_OUTPUTS, contract.POST_OUTPUTS):
                if len(names) == count:
                    return list(names)
            raise ModelError(f"'{path.name}' has {count} outputs and no {contract.IO_NAMES_FILE} naming them")
        # names are the buffer keys: one distinct string per output (zip would drop the extra outputs)
        if (not isinstance(names, list) or len(names) != count or not all(isinstance(n, str) for n in names)
                or len(set(names)) != count or set(names) & set(input_names)):
            raise ModelError(f"'{path}' {contract.IO_NAMES_FILE} outputs {names!r} must be {count} distinct "
                             f"strings, one per program output, none an input's name; re-export the program")
        return names

    @staticmethod
    def _numpy_dtype(path: Path, name: str, value):
        dtype = _TORCH_TO_NUMPY.get(str(value.dtype))
        if dtype is None:
            raise ModelError(f"'{path.name}' tensor '{name}' has unsupported dtype {value.dtype}")
        return dtype

    def bind(self, name: str, address: int) -> None:
        spec = self.inputs.get(name) or self.outputs.get(name)
        if spec is None:
            raise ModelError(f"no tensor named '{name}' in this program")
        self._tensors[name] = self._torch.as_tensor(_DeviceArray(address, spec), device=self._device)

    def enqueue(self, stream: int) -> None:
        torch = self._torch
        if stream not in self._streams:
            self._streams[stream] = torch.cuda.ExternalStream(stream, device=self._device)
        try:
            args = [self._tensors[name] for name in self.inputs]
            with torch.cuda.stream(self._streams[stream]), torch.no_grad():
                results = self._module(*args)
                if not isinstance(results, (tuple, list)):
                    results = (results,)
                for name, value in zip(self.outputs, results):
                    self._tensors[name].copy_(value)
        except KeyError as exc:
            raise ModelError(f"tensor {exc} was never bound") from exc
        except RuntimeError as exc:
            raise CudaError(f"torch program failed: {exc}") from exc

    def device_bytes(self) -> int:
        return int(sum(t.numel() * t.element_size() for t in self._module.state_dict().values()))

    def close(self) -> None:
        self._tensors.clear()
        self._module = None


class TensorRTRunner:
    """A serialized TensorRT engine, run through the 10.x/11.x name-based I/O API."""

    memory = DEVICE
    graph_capture = "cuda"  # enqueue once before capturing (done by the pipeline's warm-up)

    def __init__(self, path: Path):
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError(
                "TensorRT is not installed. On Jetson it comes with JetPack (python3-libnvinfer); on x86 "
                "install it from NVIDIA (pip install tensorrt, or the TensorRT tarball's python wheel). "
                "Without TensorRT, run the .onnx (ONNX Runtime) or .pt2 (torch) model instead.") from exc
        self._trt = trt
        self._logger = _make_trt_logger(trt)
        data = path.read_bytes()
        runtime = trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ModelError(f"'{path}' is not a TensorRT engine this TensorRT {trt.__version__} can load "
                             f"(engines are tied to the TensorRT version and GPU they were built with: rebuild "
                             f"it on this machine; a version-compatible engine, which carries host code, is "
                             f"not loaded). TensorRT says: {self._logger.take() or 'nothing'}")
        self._runtime, self._engine = runtime, engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise ModelError(f"TensorRT could not create an execution context for '{path}' (out of GPU memory?)")
        inputs, outputs = [], []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            self._check_layout(path, name)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(engine.get_tensor_shape(name))
            if is_input and any(d < 0 for d in shape):
                if engine.num_optimization_profiles == 0:
                    raise ModelError(f"'{path.name}' input '{name}' has dynamic shape {list(shape)} and no "
                                     "optimization profile; rebuild with fixed shapes or a profile")
                # the profile's optimum: the size the engine was tuned for (rebuild for another)
                shape = tuple(engine.get_tensor_profile_shape(name, 0)[1])
                if not self._context.set_input_shape(name, shape):
                    raise ModelError(f"'{path.name}' input '{name}': TensorRT refused its profile's own optimum "
                                     f"shape {list(shape)}: {self._logger.take()}")
            (inputs if is_input else outputs).append((name, engine.get_tensor_dtype(name)))
        try:
            self.inputs = _specs((n, self._context.get_tensor_shape(n), trt.nptype(t)) for n, t in inputs)
            self.outputs = _specs((n, self._context.get_tensor_shape(n), trt.nptype(t)) for n, t in outputs)
        except TypeError as exc:
            raise ModelError(f"'{path.name}' uses a tensor dtype numpy cannot hold: {exc}") from exc
        for name, spec in {**self.inputs, **self.outputs}.items():
            _static(path, name, spec.shape)

    def _check_layout(self, path: Path, name: str) -> None:
        """Our buffers are plain row-major device arrays: a vectorised I/O format (built with e.g. trtexec
        --inputIOFormats=fp16:hwc8) would be read and written with another layout and padding."""
        trt, engine = self._trt, self._engine
        layout = engine.get_tensor_format(name)
        if layout != trt.TensorFormat.LINEAR:
            raise ModelError(f"'{path.name}' tensor '{name}' has I/O format {layout}; the pipeline needs linear "
                             "(row-major) tensors: rebuild without --inputIOFormats/--outputIOFormats (or with "
                             "':chw' layouts)")
        if engine.get_tensor_location(name) != trt.TensorLocation.DEVICE:
            raise ModelError(f"'{path.name}' tensor '{name}' lives in host memory (a shape tensor?); the "
                             "two-stage contract has device tensors only")

    def bind(self, name: str, address: int) -> None:
        if name not in self.inputs and name not in self.outputs:
            raise ModelError(f"no tensor named '{name}' in this engine")
        self._logger.take()
        if not self._context.set_tensor_address(name, int(address)):
            raise ModelError(f"TensorRT refused the address of '{name}': {self._logger.take()}")

    def enqueue(self, stream: int) -> None:
        self._logger.take()  # only what this call says goes into its error
        if not self._context.execute_async_v3(int(stream)):
            raise CudaError(f"TensorRT execute_async_v3 failed: {self._logger.take() or 'no detail from TensorRT'}")

    def device_bytes(self) -> int:
        """The execution context's working memory (TensorRT's device_memory_size_v2); the weights, which
        the engine holds besides, are not counted."""
        size = getattr(self._engine, "device_memory_size_v2", None)
        return int(size if size is not None else self._engine.device_memory_size)

    def close(self) -> None:
        self._context = None
        self._engine = None


def _make_trt_logger(trt):
    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(str(msg))
                del self.messages[:-20]

        def take(self) -> str:
            """The warnings and errors since the last take, joined (and forgotten)."""
            text, self.messages[:] = "; ".join(self.messages), []
            return text

    return _Logger()
