"""Shared test setup: GPU tests (marked `gpu`) skip cleanly where CUDA or torch-with-CUDA is missing."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from flashstereo_ros import resources

MODELS_ENV = "FLASHSTEREO_TEST_MODELS"  # folder with feature_runner/post_runner .pt2 + onnx.yaml


def _gpu_unavailable() -> str | None:
    from flashstereo_ros.pipelines import cuda_device_count, torch_cuda_available

    if cuda_device_count() == 0:
        return "no CUDA GPU visible to the driver (cuda-python)"
    if not torch_cuda_available():
        return "the GPU tests run .pt2 models with torch, which has no CUDA here"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _gpu_unavailable()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def standin_model_dir() -> Path:
    """The 480x640 stand-in model folder: $FLASHSTEREO_TEST_MODELS when set (e.g. regenerated with the
    device's torch), else the bundled one."""
    folder = Path(os.environ.get(MODELS_ENV) or resources.model_dir())
    if not (folder / "feature_runner.pt2").is_file():
        pytest.skip(f"no feature_runner.pt2 in {folder} (set {MODELS_ENV})")
    return folder


def post_model_without(folder: Path, name: str = "features_left_32", value: np.ndarray | None = None
                       ) -> tuple[Path, Path]:
    """The bundled 64x128 models in `folder`, the post_runner's input `name` turned into a constant holding
    `value` (zeros by default), as TensorRT or the legacy ONNX exporter drop an input the model does not read."""
    import onnx

    src = resources.model_dir(64, 128)
    for item in ("feature_runner.onnx", "onnx.yaml"):
        shutil.copy(src / item, folder / item)
    model = onnx.load(str(src / "post_runner.onnx"))
    declared = next(v for v in model.graph.input if v.name == name)
    if value is None:
        value = np.zeros([d.dim_value for d in declared.type.tensor_type.shape.dim],
                         onnx.helper.tensor_dtype_to_np_dtype(declared.type.tensor_type.elem_type))
    model.graph.input.remove(declared)
    model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    onnx.save(model, str(folder / "post_runner.onnx"))
    return folder / "feature_runner.onnx", folder / "post_runner.onnx"
