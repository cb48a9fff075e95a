"""The stereo node's parameters: one table (name, default, description, range, read-only), declared up front.

config/stereo.yaml lists every one of them (a test checks both ways). Read-only parameters shape the
graph (models, QoS, synchronisation) and are fixed at start-up; the others may change at run time
(`ros2 param set`) and apply from the next frame.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .pipelines import DEVICES
from .ros_qos import OUTPUT_RELIABILITY_SETTINGS, RELIABILITY_SETTINGS

BACKENDS = ("", "tensorrt", "onnxruntime", "torch")


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None  # inclusive; ints get an IntegerRange
    choices: tuple[str, ...] | None = None
    read_only: bool = False


PARAMETERS = (
    ParameterSpec("feat_engine", "", "feature_runner model (.engine/.plan TensorRT, .pt2 torch, .onnx ONNX Runtime); "
                  "empty: the bundled stand-in model for the device", read_only=True),
    ParameterSpec("post_engine", "", "post_runner model, same formats; empty: the bundled stand-in model",
                  read_only=True),
    ParameterSpec("device", "auto", "auto (GPU when it can run the models, else CPU), cuda or cpu",
                  choices=DEVICES, read_only=True),
    ParameterSpec("backend", "", "tensorrt, onnxruntime or torch; empty: from the model files' suffix",
                  choices=BACKENDS, read_only=True),
    ParameterSpec("warmup", True, "run one frame at start-up so the first camera frame is not slowed by "
                  "lazy initialisation", read_only=True),
    ParameterSpec("approximate_sync", True, "match left/right images and camera infos by approximate time "
                  "(within sync_slop_s); false: identical stamps only", read_only=True),
    ParameterSpec("sync_slop_s", 0.01, "largest stamp difference (seconds) within one synchronized set; keep it "
                  "below half the frame period", range=(0.0, 10.0), read_only=True),
    ParameterSpec("queue_size", 5, "messages kept per input while waiting for their partners (also the input "
                  "QoS depth)", range=(1, 100), read_only=True),
    ParameterSpec("qos_reliability", "auto", "input QoS: auto (match the image publishers: reliable when all "
                  "offer reliable, else best_effort; re-checked as publishers come and go), reliable, best_effort",
                  choices=RELIABILITY_SETTINGS, read_only=True),
    ParameterSpec("output_qos_reliability", "reliable", "QoS reliability of every output topic",
                  choices=OUTPUT_RELIABILITY_SETTINGS, read_only=True),
    ParameterSpec("output_qos_depth", 1, "QoS history depth of the output topics (keep small: messages are large)",
                  range=(1, 100), read_only=True),
    ParameterSpec("publish_depth", True, "publish depth (32FC1 metres) and depth/camera_info"),
    ParameterSpec("publish_points", True, "publish points2 (PointCloud2 x, y, z, rgb)"),
    ParameterSpec("points_stride", 1, "point cloud decimation: every n-th row and column", range=(1, 64)),
    ParameterSpec("min_depth", 0.0, "depth below this (metres) is published as -inf and gives no point",
                  range=(0.0, 1000.0)),
    ParameterSpec("max_depth", 0.0, "depth beyond this (metres) is published as +inf and gives no point; "
                  "0: no limit", range=(0.0, 100000.0)),
    ParameterSpec("color_min_disparity", 0.0, "disparity (pixels) at the cold end of disparity/color",
                  range=(-10000.0, 10000.0)),
    ParameterSpec("color_max_disparity", 0.0, "disparity (pixels) at the hot end of disparity/color; "
                  "<= color_min_disparity: automatic range per frame (1st..99th percentile)",
                  range=(-10000.0, 10000.0)),
)
SPECS = {spec.name: spec for spec in PARAMETERS}


@dataclasses.dataclass(frozen=True)
class FrameSettings:
    """The run-time-changeable parameters, read once per frame."""

    publish_depth: bool = True
    publish_points: bool = True
    points_stride: int = 1
    min_depth: float = 0.0
    max_depth: float = 0.0
    color_min_disparity: float = 0.0
    color_max_disparity: float = 0.0

    @property
    def color_range(self) -> tuple[float, float] | None:
        if self.color_max_disparity <= self.color_min_disparity:
            return None
        return self.color_min_disparity, self.color_max_disparity

    @property
    def max_depth_limit(self) -> float:
        return self.max_depth if self.max_depth > 0 else float("inf")


FRAME_SETTINGS = tuple(field.name for field in dataclasses.fields(FrameSettings))


def as_declared_type(name: str, value: Any) -> Any:
    """An int given for a double parameter as that double ("max_depth: 10" means 10.0); else value."""
    spec = SPECS.get(name)
    if spec is not None and type(spec.default) is float and type(value) is int:
        return float(value)
    return value


def check_value(name: str, value: Any) -> str | None:
    """Why value is not acceptable for parameter name (ranges are checked by rclpy), or None."""
    spec = SPECS.get(name)
    if spec is None or spec.choices is None:
        return None
    if value not in spec.choices:
        return f"{name} must be one of {[c for c in spec.choices]}, got {value!r}"
    return None


def check_frame_settings(settings: FrameSettings) -> str | None:
    if settings.max_depth > 0 and settings.max_depth <= settings.min_depth:
        return f"max_depth ({settings.max_depth}) must exceed min_depth ({settings.min_depth}), or be 0 (no limit)"
    return None


def descriptor(spec: ParameterSpec):
    """rcl_interfaces/ParameterDescriptor with the description, range and read-only flag."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    text = spec.description
    if spec.choices is not None:
        text += f" [choices: {', '.join(repr(c) for c in spec.choices)}]"
    desc = ParameterDescriptor(name=spec.name, description=text, read_only=spec.read_only)
    if spec.range is not None:
        low, high = spec.range
        if isinstance(spec.default, bool):
            raise TypeError(f"{spec.name}: a bool parameter has no range")
        if isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
    return desc
