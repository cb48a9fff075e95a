"""The two-stage FoundationStereo tensor contract, and its check against loaded runners.

feature_runner: left, right (1,3,H,W) RGB 0..255 -> features_left_04/08/16/32, features_right_04, stem_2x
GWC volume:     features_left_04, features_right_04 -> gwc_volume (1,G,D,H/4,W/4)
post_runner:    gwc_volume + the feature outputs it uses (all six as exported; TensorRT and the legacy ONNX
                exporter drop inputs a pruned model does not read) -> disp (1,1,H,W), pixels

Sizes, channel counts and dtypes are read from the runners; only names and strides are fixed here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import numpy as np
import yaml

from .errors import ModelError

LEFT, RIGHT = "left", "right"
FEATURES_LEFT_04 = "features_left_04"
FEATURES_RIGHT_04 = "features_right_04"
GWC_VOLUME = "gwc_volume"
DISPARITY = "disp"
FEATURE_INPUTS = (LEFT, RIGHT)
FEATURE_OUTPUTS = (
    FEATURES_LEFT_04, "features_left_08", "features_left_16", "features_left_32", FEATURES_RIGHT_04, "stem_2x",
)
POST_INPUTS = FEATURE_OUTPUTS + (GWC_VOLUME,)
POST_OUTPUTS = (DISPARITY,)
# Spatial stride of each feature output relative to the input image.
STRIDES = {
    FEATURES_LEFT_04: 4, "features_left_08": 8, "features_left_16": 16, "features_left_32": 32,
    FEATURES_RIGHT_04: 4, "stem_2x": 2,
}
SIZE_MULTIPLE = 32
DEFAULT_CV_GROUP = 8
DEFAULT_MAX_DISP = 192
NORM_EPS = 1e-12
CONFIG_FILE = "onnx.yaml"
IO_NAMES_FILE = "flashstereo_io.json"  # extra file in a .pt2 naming its outputs


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One engine input or output: its contract name, the engine's own name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What `onnx.yaml` says beside the model files (all optional: the engines are the authority)."""

    max_disp: int | None = None
    cv_group: int | None = None
    valid_iters: int | None = None
    image_size: tuple[int, int] | None = None
    tensor_names: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        """Read an onnx.yaml; raise ModelError naming the file when it is not a mapping of valid values."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except Exception as exc:  # OSError, YAMLError, UnicodeDecodeError, ValueError (an int of > 4300 digits)...
            raise ModelError(f"cannot read model config {path} ({exc}): it must be a UTF-8 YAML mapping; fix it, "
                             "or remove it to take every value from the engines (it is optional)") from exc
        if not isinstance(data, dict):
            raise ModelError(f"model config {path} must be a YAML mapping, got {type(data).__name__}")
        size = data.get("image_size")
        names = data.get("tensor_names") or {}
        if not isinstance(names, dict) or not all(isinstance(n, str) for n in (*names, *names.values())):
            raise ModelError(f"{path}: tensor_names must map contract names to engine tensor names")
        unknown = set(names) - set(FEATURE_INPUTS + POST_INPUTS + POST_OUTPUTS)
        if unknown:
            raise ModelError(f"{path}: tensor_names has unknown contract names {sorted(unknown)}")
        try:
            return cls(
                max_disp=_opt_int(data, "max_disp"),
                cv_group=_opt_int(data, "cv_group"),
                valid_iters=_opt_int(data, "valid_iters"),
                image_size=None if size is None else _size(size),
                tensor_names=dict(names),
            )
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{path}: malformed value ({exc})") from exc

    @classmethod
    def beside(cls, *model_paths: str | Path) -> "ModelConfig":
        """The onnx.yaml next to the model files (or one folder up, as engine builds lay them out)."""
        for model in model_paths:
            try:
                folder = Path(model).resolve().parent
            except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
                raise ModelError(f"model path {model} cannot be resolved ({exc}): fix or replace the link") from exc
            for candidate in (folder / CONFIG_FILE, folder.parent / CONFIG_FILE):
                if candidate.is_file():
                    return cls.load(candidate)
        return cls()

    def engine_name(self, contract_name: str) -> str:
        return self.tensor_names.get(contract_name, contract_name)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true/false are bools, not 1/0


def _opt_int(data: Mapping, key: str) -> int | None:
    value = data.get(key)
    if value is not None and not _is_int(value):
        raise TypeError(f"{key} must be an integer, got {value!r}")
    return value


def _size(value) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise TypeError(f"image_size must be [height, width] in integers, got {value!r}")
    return value[0], value[1]


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Sizes of one engine pair, all read from the engines and cross-checked."""

    height: int
    width: int
    groups: int
    disparities: int  # D = max_disp / 4, the volume's disparity planes
    feature_outputs: Mapping[str, TensorSpec]
    post_inputs: Mapping[str, TensorSpec]
    image_inputs: Mapping[str, TensorSpec]
    disparity: TensorSpec

    @property
    def max_disp(self) -> int:
        return 4 * self.disparities

    @property
    def feature_channels(self) -> int:
        return self.feature_outputs[FEATURES_LEFT_04].shape[1]

    @property
    def quarter_size(self) -> tuple[int, int]:
        return self.height // 4, self.width // 4

    @property
    def volume_dtype(self) -> np.dtype:
        return self.post_inputs[GWC_VOLUME].dtype


def check_contract(feature_io: tuple[Mapping[str, TensorSpec], Mapping[str, TensorSpec]],
                   post_io: tuple[Mapping[str, TensorSpec], Mapping[str, TensorSpec]],
                   config: ModelConfig | None = None) -> Geometry:
    """Check two runners' (inputs, outputs), keyed by engine tensor name, against the contract.

    Returns the geometry keyed by contract name; raises ModelError naming every missing tensor
    and every inconsistent shape.
    """
    config = config or ModelConfig()
    feat_in = _by_contract("feature_runner", "inputs", feature_io[0], FEATURE_INPUTS, config, exact=True)
    feat_out = _by_contract("feature_runner", "outputs", feature_io[1], FEATURE_OUTPUTS, config, exact=False)
    post_in = _by_contract("post_runner", "inputs", post_io[0], POST_INPUTS, config, exact=True,
                           optional=FEATURE_OUTPUTS)
    post_out = _by_contract("post_runner", "outputs", post_io[1], POST_OUTPUTS, config, exact=False)

    left = feat_in[LEFT]
    if len(left.shape) != 4 or left.shape[:2] != (1, 3):
        raise ModelError(f"feature_runner input '{left.name}' must be (1,3,H,W), engine says {left.shape}")
    if feat_in[RIGHT].shape != left.shape:
        raise ModelError(f"feature_runner inputs differ in shape: left {left.shape}, right {feat_in[RIGHT].shape}")
    height, width = left.shape[2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ModelError(f"engine image size {height}x{width} is not a multiple of {SIZE_MULTIPLE}")
    if config.image_size and tuple(config.image_size) != (height, width):
        raise ModelError(f"onnx.yaml image_size {list(config.image_size)} disagrees with the engine's {height}x{width}")

    for name in FEATURE_OUTPUTS:
        spec = feat_out[name]
        stride = STRIDES[name]
        expected = (height // stride, width // stride)
        if len(spec.shape) != 4 or spec.shape[0] != 1 or tuple(spec.shape[2:]) != expected:
            raise ModelError(f"feature_runner output '{spec.name}' has shape {spec.shape}; "
                             f"expected (1,C,{expected[0]},{expected[1]}) at stride {stride}")
    if feat_out[FEATURES_RIGHT_04].shape != feat_out[FEATURES_LEFT_04].shape:
        raise ModelError("features_left_04 and features_right_04 differ in shape: "
                         f"{feat_out[FEATURES_LEFT_04].shape} vs {feat_out[FEATURES_RIGHT_04].shape}")
    for name in (n for n in FEATURE_OUTPUTS if n in post_in):
        if post_in[name].shape != feat_out[name].shape:
            raise ModelError(f"post_runner input '{post_in[name].name}' has shape {post_in[name].shape} but "
                             f"feature_runner produces {feat_out[name].shape}: the engines were built for "
                             "different sizes")

    volume = post_in[GWC_VOLUME]
    quarter = (height // 4, width // 4)
    if len(volume.shape) != 5 or volume.shape[0] != 1 or tuple(volume.shape[3:]) != quarter:
        raise ModelError(f"post_runner input '{volume.name}' has shape {volume.shape}; "
                         f"expected (1,G,D,{quarter[0]},{quarter[1]})")
    groups, disparities = volume.shape[1:3]
    channels = feat_out[FEATURES_LEFT_04].shape[1]
    if min(groups, disparities, channels) < 1:
        raise ModelError(f"post_runner input '{volume.name}' {volume.shape} and features_left_04 "
                         f"{feat_out[FEATURES_LEFT_04].shape} need at least one group, disparity plane and channel")
    if channels % groups:
        raise ModelError(f"feature channels {channels} are not divisible by the volume's {groups} groups")
    if config.cv_group is not None and config.cv_group != groups:
        raise ModelError(f"onnx.yaml cv_group={config.cv_group} disagrees with the engine's gwc_volume groups "
                         f"{groups}")
    if config.max_disp is not None and config.max_disp // 4 != disparities:
        raise ModelError(f"onnx.yaml max_disp={config.max_disp} disagrees with the engine's {disparities} "
                         "disparity planes")
    if volume.dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise ModelError(f"gwc_volume dtype {volume.dtype} is not supported (float16 or float32)")

    disp = post_out[DISPARITY]
    if tuple(disp.shape) not in ((1, 1, height, width), (1, height, width)):
        raise ModelError(f"post_runner output '{disp.name}' has shape {disp.shape}; expected (1,1,{height},{width})")
    for name, spec in list(feat_in.items()) + list(feat_out.items()) + list(post_in.items()) + [(DISPARITY, disp)]:
        if spec.dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise ModelError(f"tensor '{spec.name}' has dtype {spec.dtype}; only float16 and float32 are supported")
    return Geometry(height, width, groups, disparities, dict(feat_out), dict(post_in), dict(feat_in), disp)


def _by_contract(runner: str, kind: str, present: Mapping[str, TensorSpec], wanted, config: ModelConfig,
                 exact: bool, optional=()) -> dict[str, TensorSpec]:
    """Re-key a runner's tensors by contract name; inputs must match exactly, extra outputs are allowed, and
    `optional` names may be absent."""
    engine_names = {config.engine_name(n): n for n in wanted if n not in optional or config.engine_name(n) in present}
    missing = [name for name in engine_names if name not in present]
    if missing:
        raise ModelError(f"{runner} is missing {kind} {missing} (it has {sorted(present)}); "
                         "rename them with tensor_names in onnx.yaml if the engine uses other names")
    extra = sorted(set(present) - set(engine_names))
    if exact and extra:
        raise ModelError(f"{runner} has {kind} {extra} that the two-stage contract does not provide")
    return {engine_names[name]: present[name] for name in engine_names}
