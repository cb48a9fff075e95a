"""Pick the pipeline for this machine: GPU-resident when CUDA can run the models, else the CPU one."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from . import resources
from .errors import BackendUnavailableError
from .runners import backend_for

DEVICES = ("auto", "cuda", "cpu")


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 without cuda-python or a driver)."""
    if importlib.util.find_spec("cuda") is None:
        return 0
    try:
        from .cuda import device_count

        return device_count()
    except Exception:  # no driver, no GPU, or an incompatible cuda-python: all mean "no CUDA here"
        return 0


def torch_cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def default_models(device: str) -> tuple[Path, Path]:
    """The bundled stand-in model in the format the device's default backend runs."""
    return resources.bundled_models(".pt2" if device == "cuda" else ".onnx")


def resolve_device(device: str, feat_path: str | Path | None, backend: str | None) -> str:
    """'auto' -> 'cuda' when the GPU path can run these models here, else 'cpu'."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device != "auto":
        return device
    if cuda_device_count() == 0:
        return "cpu"
    kind = backend_for(feat_path, backend) if feat_path else "torch"
    if kind == "torch" and not torch_cuda_available():
        return "cpu" if feat_path is None else "cuda"
    if kind == "onnxruntime":
        import onnxruntime

        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    return "cuda"


def create_pipeline(feat_engine_path: str | Path | None = None, post_engine_path: str | Path | None = None,
                    device: str = "auto", backend: str | None = None, **options):
    """FlashStereoPipeline on the GPU, CpuStereoPipeline otherwise; both infer(left, right) -> disparity."""
    device = resolve_device(device, feat_engine_path, backend)
    if (feat_engine_path is None) != (post_engine_path is None):
        raise ValueError("give both feat_engine_path and post_engine_path, or neither for the bundled model")
    if feat_engine_path is None:
        feat_engine_path, post_engine_path = default_models(device)
    if device == "cuda":
        if cuda_device_count() == 0:
            raise BackendUnavailableError("device='cuda' but no CUDA GPU is usable here (install cuda-python "
                                          "and an NVIDIA driver), or use device='cpu' with .onnx models")
        from .pipeline import FlashStereoPipeline

        return FlashStereoPipeline(feat_engine_path, post_engine_path, backend=backend, **options)
    from .cpu_pipeline import CpuStereoPipeline

    return CpuStereoPipeline(feat_engine_path, post_engine_path, backend=backend, **options)
