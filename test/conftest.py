"""Shared test setup: GPU tests (marked `gpu`) skip cleanly where CUDA or torch-with-CUDA is missing."""
import os
from pathlib import Path

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
