"""Exceptions raised by flashstereo_ros: each names the problem and, where there is one, the fix."""


class FlashStereoError(RuntimeError):
    """Base class of every error this package raises on purpose."""


class StereoInputError(FlashStereoError, ValueError):
    """An image pair (or camera info) that cannot be processed: wrong size, dtype, encoding..."""


class ModelError(FlashStereoError):
    """A model file that is missing, corrupt, or does not honour the two-stage tensor contract."""


class BackendUnavailableError(FlashStereoError):
    """A backend (TensorRT, torch, CUDA, onnxruntime) that is not installed or cannot run here."""


class CudaError(FlashStereoError):
    """A failed CUDA driver or NVRTC call; the message names the call."""
