"""Runner selection and the error paths that can be exercised without TensorRT or a GPU."""
import builtins
import importlib.util
import sys
import types

import numpy as np
import pytest

from flashstereo_ros import resources, runners
from flashstereo_ros.errors import BackendUnavailableError, CudaError, ModelError


def test_backend_from_suffix():
    assert runners.backend_for("a/feature_runner.engine") == "tensorrt"
    assert runners.backend_for("a/feature_runner.plan") == "tensorrt"
    assert runners.backend_for("a/feature_runner.onnx") == "onnxruntime"
    assert runners.backend_for("a/feature_runner.pt2") == "torch"
    assert runners.backend_for("a/model.bin", "onnxruntime") == "onnxruntime"
    with pytest.raises(ModelError, match="unknown backend"):
        runners.backend_for("a.onnx", "openvino")


@pytest.fixture
def no_tensorrt(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_tensorrt_missing_says_how_to_install(tmp_path, no_tensorrt):
    engine = tmp_path / "feature_runner.engine"
    engine.write_bytes(b"\0" * 64)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed.*JetPack"):
        runners.open_runner(engine, memory=runners.DEVICE)


def test_gpu_backends_refuse_host_memory(tmp_path):
    for name in ("feature_runner.engine", "feature_runner.pt2"):
        path = tmp_path / name
        path.write_bytes(b"\0")
        with pytest.raises(ModelError, match="runs on the GPU only"):
            runners.open_runner(path, memory=runners.HOST)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_runner_without_cuda_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = resources.bundled_models(".pt2")[0]
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        runners.open_runner(path, memory=runners.DEVICE)


def test_onnxruntime_runner_reads_specs_and_runs_into_bound_buffers():
    feat, _ = resources.bundled_models(".onnx", (64, 128))
    runner = runners.open_runner(feat)
    assert runner.inputs["left"].shape == (1, 3, 64, 128) and runner.inputs["left"].dtype == np.float32
    assert runner.outputs["stem_2x"].shape == (1, 32, 32, 64)
    buffers = {n: np.zeros(s.shape, s.dtype) for n, s in {**runner.inputs, **runner.outputs}.items()}
    buffers["left"][:] = np.random.default_rng(0).uniform(0, 255, buffers["left"].shape)
    buffers["right"][:] = buffers["left"]
    for name, array in buffers.items():
        runner.bind(name, array.ctypes.data)
    runner.enqueue(0)
    assert np.abs(buffers["features_left_04"]).sum() > 0
    # same image on both sides: the phase-0 groups (0 and 4) use the same filters left and right
    np.testing.assert_allclose(buffers["features_left_04"][:, :28], buffers["features_right_04"][:, :28], rtol=1e-5)
    assert not np.allclose(buffers["features_left_04"][:, 28:56], buffers["features_right_04"][:, 28:56])


def test_unbound_tensor_is_named():
    feat, _ = resources.bundled_models(".onnx", (64, 128))
    runner = runners.open_runner(feat)
    with pytest.raises(ModelError, match="never bound"):
        runner.enqueue(0)


class FakeTensorRT:
    """The parts of the TensorRT 10 runtime API that TensorRTRunner uses, with its documented returns:
    deserialize_cuda_engine -> None on failure, set_* and execute_async_v3 -> bool, nptype TypeError for
    types numpy lacks. Tensors: name -> (mode, shape, dtype, format, location)."""

    def __init__(self, tensors, profile=None, accept_shape=True, accept_address=True, execute_ok=True):
        self.tensors, self.profile = tensors, profile
        self.accept_shape, self.accept_address, self.execute_ok = accept_shape, accept_address, execute_ok
        self.calls = []
        fake = self
        self.module = types.ModuleType("tensorrt")
        trt = self.module
        trt.__version__ = "10.3-fake"
        trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        trt.TensorFormat = types.SimpleNamespace(LINEAR="LINEAR", HWC8="HWC8")
        trt.TensorLocation = types.SimpleNamespace(DEVICE="DEVICE", HOST="HOST")

        class ILogger:
            Severity = types.SimpleNamespace(ERROR=1, WARNING=2, INFO=3)

            def __init__(self):
                pass

        def nptype(dtype):
            if dtype == "BF16":
                raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
            return {"FLOAT": np.float32, "HALF": np.float16}[dtype]

        class Context:
            def __init__(self):
                self.shapes = {}

            def set_input_shape(self, name, shape):
                fake.calls.append(("set_input_shape", name, tuple(shape)))
                self.shapes[name] = tuple(shape)
                return fake.accept_shape

            def get_tensor_shape(self, name):
                return self.shapes.get(name, fake.tensors[name][1])

            def set_tensor_address(self, name, address):
                fake.calls.append(("set_tensor_address", name, address))
                return fake.accept_address

            def execute_async_v3(self, stream):
                fake.calls.append(("execute_async_v3", stream))
                if not fake.execute_ok:
                    fake.logger.log(1, "enqueue: an operation not permitted while capturing")
                return fake.execute_ok

        class Engine:
            num_io_tensors = len(tensors)
            num_optimization_profiles = 0 if profile is None else 1
            device_memory_size_v2 = 12345

            def get_tensor_name(self, index):
                return list(fake.tensors)[index]

            def get_tensor_mode(self, name):
                return fake.tensors[name][0]

            def get_tensor_shape(self, name):
                return fake.tensors[name][1]

            def get_tensor_dtype(self, name):
                return fake.tensors[name][2]

            def get_tensor_format(self, name):
                return fake.tensors[name][3]

            def get_tensor_location(self, name):
                return fake.tensors[name][4]

            def get_tensor_profile_shape(self, name, index):
                return fake.profile[name]

            def create_execution_context(self):
                return Context()

        class Runtime:
            def __init__(self, logger):
                fake.logger = logger

            def deserialize_cuda_engine(self, data):
                if data != b"engine":
                    fake.logger.log(1, "Serialization assertion failed: magic tag mismatch")
                    return None
                return Engine()

        trt.ILogger, trt.nptype, trt.Runtime = ILogger, nptype, Runtime


def trt_tensors(**changes):
    tensors = {"left": ("INPUT", (1, 3, 64, 128), "FLOAT", "LINEAR", "DEVICE"),
               "features_left_04": ("OUTPUT", (1, 224, 16, 32), "HALF", "LINEAR", "DEVICE")}
    for name, change in changes.items():
        tensors[name] = tuple(change.get(i, v) for i, v in enumerate(tensors[name]))
    return tensors


@pytest.fixture
def engine_file(tmp_path):
    path = tmp_path / "feature_runner.engine"
    path.write_bytes(b"engine")
    return path


def use(monkeypatch, fake):
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    return fake


def test_tensorrt_runner_reads_specs_binds_and_enqueues(engine_file, monkeypatch):
    fake = use(monkeypatch, FakeTensorRT(trt_tensors()))
    runner = runners.open_runner(engine_file, memory=runners.DEVICE)
    assert runner.inputs["left"].shape == (1, 3, 64, 128) and runner.inputs["left"].dtype == np.float32
    assert runner.outputs["features_left_04"].dtype == np.float16
    runner.bind("left", 0x1000)
    runner.enqueue(7)
    assert fake.calls == [("set_tensor_address", "left", 0x1000), ("execute_async_v3", 7)]
    assert runner.device_bytes() == 12345
    with pytest.raises(ModelError, match="no tensor named 'right'"):
        runner.bind("right", 0x2000)


def test_tensorrt_engine_that_does_not_load_says_why(engine_file, monkeypatch):
    use(monkeypatch, FakeTensorRT(trt_tensors()))
    engine_file.write_bytes(b"built by another TensorRT")
    with pytest.raises(ModelError, match="rebuild it on this machine.*magic tag mismatch"):
        runners.open_runner(engine_file, memory=runners.DEVICE)


@pytest.mark.parametrize("changes, message", [
    ({"left": {3: "HWC8"}}, "I/O format HWC8.*linear"),
    ({"left": {4: "HOST"}}, "host memory"),
    ({"features_left_04": {2: "BF16"}}, "dtype numpy cannot hold"),
    ({"left": {1: (1, 3, -1, -1)}}, "dynamic shape .* no optimization profile"),
])
def test_tensorrt_engines_the_pipeline_cannot_bind_are_refused(engine_file, monkeypatch, changes, message):
    use(monkeypatch, FakeTensorRT(trt_tensors(**changes)))
    with pytest.raises(ModelError, match=message):
        runners.open_runner(engine_file, memory=runners.DEVICE)


def test_tensorrt_dynamic_input_runs_at_its_profile_optimum(engine_file, monkeypatch):
    profile = {"left": [(1, 3, 32, 64), (1, 3, 64, 128), (1, 3, 128, 256)]}
    fake = use(monkeypatch, FakeTensorRT(trt_tensors(left={1: (1, 3, -1, -1)}), profile))
    runner = runners.open_runner(engine_file, memory=runners.DEVICE)
    assert runner.inputs["left"].shape == (1, 3, 64, 128)
    assert ("set_input_shape", "left", (1, 3, 64, 128)) in fake.calls
    use(monkeypatch, FakeTensorRT(trt_tensors(left={1: (1, 3, -1, -1)}), profile, accept_shape=False))
    with pytest.raises(ModelError, match="refused its profile's own optimum"):
        runners.open_runner(engine_file, memory=runners.DEVICE)


def test_tensorrt_refusals_at_run_time_name_the_call(engine_file, monkeypatch):
    fake = use(monkeypatch, FakeTensorRT(trt_tensors(), accept_address=False, execute_ok=False))
    runner = runners.open_runner(engine_file, memory=runners.DEVICE)
    fake.logger.log(2, "an old warning from loading")
    with pytest.raises(ModelError, match="refused the address of 'left'"):
        runner.bind("left", 0x1000)
    with pytest.raises(CudaError, match="execute_async_v3 failed: enqueue: an operation not permitted") as info:
        runner.enqueue(7)
    assert "old warning" not in str(info.value)  # only what the failing call said


def test_onnx_model_that_fails_while_running_is_a_model_error_without_ort_log_lines(tmp_path, capfd):
    from onnx import TensorProto, helper, save

    # declared output (1,1,2,2), but ConstantOfShape computes the shape the input asks for
    graph = helper.make_graph([helper.make_node("ConstantOfShape", ["s"], ["y"])], "g",
                              [helper.make_tensor_value_info("s", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, tmp_path / "post_runner.onnx")
    runner = runners.open_runner(tmp_path / "post_runner.onnx")
    shape, disp = np.array([1, 1, 4, 4], np.int64), np.zeros((1, 1, 2, 2), np.float32)
    runner.bind("s", shape.ctypes.data)
    runner.bind("y", disp.ctypes.data)
    capfd.readouterr()
    with pytest.raises(ModelError, match="ONNX Runtime failed running '.*post_runner.onnx'.*ConstantOfShape"):
        runner.enqueue(0)
    assert "onnxruntime" not in capfd.readouterr().err  # the error is ours to report, once


torch_only = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")


@pytest.fixture
def fake_cuda(monkeypatch):
    """TorchRunner's loading on a machine without CUDA: torch 'sees' a device and moving modules is a no-op."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: self)


@pytest.fixture(scope="module")
def two_output_program():
    import torch

    class TwoOutputs(torch.nn.Module):
        def forward(self, left, right):
            return left * 2, right + 1

    image = torch.zeros(1, 3, 64, 128)
    return torch.export.export(TwoOutputs(), (image, image))


@torch_only
@pytest.mark.parametrize("names_json", [
    "{not json", "[1, 2]", '{"outputs": 5}', '{"outputs": ["a"]}', '{"outputs": ["a", "b", "c"]}',
    '{"outputs": [1, 2]}', '{"outputs": ["a", "a"]}', '{"outputs": ["left", "b"]}',
])
def test_pt2_with_a_malformed_io_names_file_is_a_model_error(tmp_path, fake_cuda, two_output_program, names_json):
    import torch

    path = tmp_path / "feature_runner.pt2"
    torch.export.save(two_output_program, str(path), extra_files={"flashstereo_io.json": names_json})
    with pytest.raises(ModelError, match=r"feature_runner.pt2' flashstereo_io.json"):
        runners.TorchRunner(path)


@torch_only
def test_pt2_io_names_file_names_the_outputs(tmp_path, fake_cuda, two_output_program):
    import torch

    path = tmp_path / "feature_runner.pt2"
    torch.export.save(two_output_program, str(path), extra_files={"flashstereo_io.json": '{"outputs": ["a", "b"]}'})
    runner = runners.TorchRunner(path)
    assert list(runner.inputs) == ["left", "right"] and list(runner.outputs) == ["a", "b"]
    assert runner.outputs["b"].shape == (1, 3, 64, 128) and runner.outputs["b"].dtype == np.float32


@torch_only
@pytest.mark.parametrize("kind", ["int output", "int input", "dynamic size"])
def test_pt2_without_fixed_size_tensor_io_is_a_model_error(tmp_path, fake_cuda, kind):
    import torch

    class IntOutput(torch.nn.Module):
        def forward(self, left, right):
            return left * 2, left.shape[2]

    class IntInput(torch.nn.Module):
        def forward(self, left, right, scale: int = 1):
            return left * scale, right * scale

    image, extra = torch.zeros(1, 3, 64, 128), {"flashstereo_io.json": '{"outputs": ["a", "b"]}'}
    if kind == "int output":
        program, message = torch.export.export(IntOutput(), (image, image)), "output 1 is not a tensor \\(int\\)"
    elif kind == "int input":
        program, message = torch.export.export(IntInput(), (image, image, 3)), "input '3' is not a tensor \\(int\\)"
    else:
        height = torch.export.Dim("height", min=32, max=1024)
        program = torch.export.export(IntInput(), (image, image), dynamic_shapes=({2: height}, {2: height}))
        message = "tensor 'left' has dynamic shape"
    path = tmp_path / "feature_runner.pt2"
    torch.export.save(program, str(path), extra_files=extra)
    with pytest.raises(ModelError, match=message):
        runners.TorchRunner(path)
