"""flashstereo_ros: GPU-resident two-stage FoundationStereo inference for ROS 2.

    from flashstereo_ros import create_pipeline
    pipe = create_pipeline()                 # bundled stand-in model; GPU when there is one
    disparity = pipe.infer(left_rgb, right_rgb)

Heavy modules (CUDA, torch, TensorRT, rclpy) are imported only when their class is first used.
"""
__version__ = "0.1.0"

_LAZY = {
    "FlashStereoPipeline": ("pipeline", "FlashStereoPipeline"),
    "StockPipeline": ("stock", "StockPipeline"),
    "CpuStereoPipeline": ("cpu_pipeline", "CpuStereoPipeline"),
    "create_pipeline": ("pipelines", "create_pipeline"),
    "PipelinedStereo": ("pipelined", "PipelinedStereo"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'flashstereo_ros' has no attribute '{name}'")
