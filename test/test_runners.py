"""Runner selection and the error paths that can be exercised without TensorRT or a GPU."""
import builtins
import importlib.util

import numpy as np
import pytest

from flashstereo_ros import resources, runners
from flashstereo_ros.errors import BackendUnavailableError, ModelError


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
