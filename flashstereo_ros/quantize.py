"""INT8 by explicit quantization: calibrate, write Q/DQ ONNX, convert to FP16, build TensorRT engines.

TensorRT 11 removed implicit INT8 calibration and the FP16/INT8 builder flags, so the INT8 engines are
built from ONNX files that carry their own QuantizeLinear/DequantizeLinear (Q/DQ) pairs; TensorRT 10
(JetPack 6.1 and later) builds the same files. Everything up to the engine runs on the CPU with ONNX Runtime:

1. calibrate(): run the FP32 model on calibration samples and record each tensor's range (entropy,
   percentile or min-max), kept in a portable JSON cache (CalibrationCache) so a second machine can
   skip this step;
2. quantize_qdq(): onnxruntime.quantization in QDQ format with the settings TensorRT expects: symmetric
   int8 activations (zero point 0), symmetric per-channel int8 weights, biases left in float, Q/DQ on
   the inputs of the quantized ops only (TensorRT fuses DQ -> op and keeps the op's output in higher
   precision);
3. to_float16(): the same graph with float16 compute outside the Q/DQ pairs (opset >= 19 so the scales
   can be float16): in a strongly typed TensorRT network the ONNX types decide precision, so this is the
   file that gives "INT8 where Q/DQ say, FP16 elsewhere";
4. build_engine(): TensorRT's ONNX parser into a strongly typed network, serialized to an engine.
   No TensorRT exists where this was written: that function follows the documented 10.x/11.x Python API
   and is kept thin.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

from . import contract
from .contract import TensorSpec
from .errors import BackendUnavailableError, ModelError

FEATURE_STAGE, POST_STAGE = "feature_runner", "post_runner"
STAGES = (FEATURE_STAGE, POST_STAGE)
METHODS = ("entropy", "percentile", "minmax")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# What gets Q/DQ by default. Weighted ops in both stages, as TensorRT's Q/DQ placement guide recommends;
# in the post stage also AveragePool: there the cost-volume aggregation is the bulk of the work (3-D
# convolutions in FoundationStereo, box filters over the cost in the stand-in).
DEFAULT_OP_TYPES = {FEATURE_STAGE: WEIGHTED_OPS, POST_STAGE: WEIGHTED_OPS + ("AveragePool",)}
DEFAULT_PERCENTILE = 99.999
ENTROPY_BINS = 2048  # TensorRT's entropy calibrator histogram size
ENTROPY_QUANTIZED_BINS = 128  # int8 symmetric: 128 levels on each side of zero
FP16_MIN_OPSET = 19  # QuantizeLinear/DequantizeLinear accept float16 scales from opset 19
QDQ_MIN_OPSET = 13  # per-channel (axis) Q/DQ
CACHE_FORMAT = "flashstereo-int8-calibration"
CACHE_VERSION = 1
PROTOBUF_LIMIT = onnx.checker.MAXIMUM_PROTOBUF  # a model above it cannot be one file: its weights go beside it
_ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}


@dataclasses.dataclass(frozen=True)
class QuantSettings:
    """How a stage is calibrated and which ops get Q/DQ."""

    method: str = "percentile"
    percentile: float = DEFAULT_PERCENTILE
    op_types: tuple[str, ...] | None = None  # None: DEFAULT_OP_TYPES of the stage
    per_channel: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ModelError(f"unknown calibration method '{self.method}'; choose one of {METHODS}")
        if not 0.0 < self.percentile <= 100.0:
            raise ModelError(f"percentile must be in (0, 100], got {self.percentile}")

    def ops_for(self, stage: str) -> tuple[str, ...]:
        return tuple(self.op_types) if self.op_types else DEFAULT_OP_TYPES[stage]


# ------------------------------------------------------------------------------------------ models

def _sha256(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    return _sha256([Path(path)])


def model_sha256(path: str | Path) -> str:
    """sha256 of a model file and its external-data files (new weights can leave the .onnx, which holds only
    their offsets, byte for byte the same); for a self-contained model, the file's sha256."""
    return _sha256([Path(path), *external_data_files(path)])


def load_model(path: str | Path, weights: bool = True) -> onnx.ModelProto:
    """The model at `path`; with weights=False, without the tensors stored in external-data files."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as exc:  # onnx raises DecodeError and others for files that are not ONNX
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc


def _external_locations(model: onnx.ModelProto) -> list[str]:
    """Where the weights (initializers) of a model loaded with weights=False are, relative to its folder."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    return sorted({ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)})


def external_data_files(path: str | Path) -> list[Path]:
    """The external-data files of a model (torch.onnx.export(..., dynamo=True) writes <name>.onnx.data)."""
    path = Path(path)
    return [path.parent / location for location in _external_locations(load_model(path, weights=False))]


def model_files(path: str | Path) -> tuple[Path, Path]:
    """A model written by save_model and the external-data file it may have beside it."""
    path = Path(path)
    return path, path.with_name(f"{path.name}.data")


def save_model(model: onnx.ModelProto, path: str | Path, external: bool = False) -> Path:
    """Write a model; its weights go to <name>.data beside it (and `model` then refers to that file) when asked
    (the model it came from had external data) or when it is too large for one protobuf. ONNX Runtime finds
    them from the model's own folder."""
    path, data = model_files(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, data):
        stale.unlink(missing_ok=True)  # onnx appends to an existing data file
    if external or model.ByteSize() > PROTOBUF_LIMIT:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name)
    else:
        onnx.save(model, str(path))
    return path


def _stage_copy(model: onnx.ModelProto, folder: str | Path) -> Path:
    """`model` (loaded with its weights) as <folder>/model.onnx with its weights beside it: ONNX Runtime's
    quantization tools write shape-inferred copies next to the model they read, and find external data only
    in the model's own folder."""
    return save_model(model, Path(folder) / "model.onnx", external=True)


def _declared_shape(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)


def _value_spec(value: onnx.ValueInfoProto, path: Path, shape: tuple[int, ...]) -> TensorSpec:
    tensor = value.type.tensor_type
    if tensor.elem_type not in _ONNX_TO_NUMPY:
        raise ModelError(f"{path.name}: tensor '{value.name}' has element type "
                         f"{onnx.TensorProto.DataType.Name(tensor.elem_type)}; the contract uses float32/float16")
    if any(d < 0 for d in shape):
        raise ModelError(f"{path.name}: tensor '{value.name}' has a dynamic shape; quantize a model exported "
                         "for a fixed image size")
    return TensorSpec(value.name, shape, np.dtype(_ONNX_TO_NUMPY[tensor.elem_type]))


def _session_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The input and output shapes ONNX Runtime gives the model at `path` (what the pipeline runs on)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failure is raised as ModelError below
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for models it cannot load
        raise ModelError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    return {arg.name: tuple(d if isinstance(d, int) else -1 for d in arg.shape)
            for arg in list(session.get_inputs()) + list(session.get_outputs())}


def model_io(model: onnx.ModelProto, path: str | Path) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """(inputs, outputs) of a model as TensorSpecs keyed by name (initializers are not inputs)."""
    path = Path(path)
    initializers = {init.name for init in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers] + list(model.graph.output)
    shapes = {v.name: _declared_shape(v) for v in values}
    if any(d < 0 for shape in shapes.values() for d in shape):
        # the legacy exporter can declare symbolic output dims that ONNX Runtime resolves when it loads the
        # model; the pipeline takes ONNX Runtime's shapes, so take them too
        shapes.update(_session_shapes(path))
    specs = {v.name: _value_spec(v, path, shapes[v.name]) for v in values}
    return ({v.name: specs[v.name] for v in model.graph.input if v.name not in initializers},
            {v.name: specs[v.name] for v in model.graph.output})


def identify_stage(model: onnx.ModelProto, path: str | Path) -> str:
    """FEATURE_STAGE or POST_STAGE from the model's tensor names; ModelError naming what does not fit."""
    path = Path(path)
    inputs = [v.name for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}]
    outputs = [v.name for v in model.graph.output]
    if set(inputs) == set(contract.FEATURE_INPUTS):
        stage, want_out = FEATURE_STAGE, contract.FEATURE_OUTPUTS
    elif contract.GWC_VOLUME in inputs and set(inputs) <= set(contract.POST_INPUTS):
        # a post stage may leave out the feature outputs it does not read (TensorRT and the legacy exporter
        # drop them), as contract.check_contract allows
        stage, want_out = POST_STAGE, contract.POST_OUTPUTS
    else:
        raise ModelError(f"{path} is neither a feature_runner (inputs {list(contract.FEATURE_INPUTS)}) nor a "
                         f"post_runner (input {contract.GWC_VOLUME} and any of {list(contract.FEATURE_OUTPUTS)}); "
                         f"it has inputs {inputs} and outputs {outputs}")
    missing = [name for name in want_out if name not in outputs]
    if missing:
        raise ModelError(f"{path} has the inputs of a {stage} but lacks outputs {missing}")
    return stage


def check_float_model(model: onnx.ModelProto, path: str | Path) -> None:
    """ModelError unless `model` can be quantized here: float (no Q/DQ yet) at opset >= QDQ_MIN_OPSET."""
    qdq = sum(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)
    if qdq:
        raise ModelError(f"{path} already holds {qdq} QuantizeLinear/DequantizeLinear nodes: pass the float "
                         "model it was made from")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < QDQ_MIN_OPSET:
        raise ModelError(f"{path} is opset {opset}; per-channel Q/DQ needs opset {QDQ_MIN_OPSET} or newer: export "
                         f"it again (torch.onnx.export(..., opset_version=17)) or convert it "
                         "(onnx.version_converter.convert_version)")


def expect_stage(path: str | Path, stage: str) -> tuple[onnx.ModelProto, dict[str, TensorSpec]]:
    """Load a model (without its external weights), check it is the given stage, and return it with its input
    specs."""
    model = load_model(path, weights=False)
    found = identify_stage(model, path)
    if found != stage:
        tool = "flashstereo-build-int8" if found == FEATURE_STAGE else "flashstereo-build-int8-post"
        raise ModelError(f"{path} is a {found}, not a {stage} (arguments swapped? a {found} is quantized with "
                         f"{tool})")
    inputs, _ = model_io(model, path)
    return model, inputs


def image_size(feature_inputs: Mapping[str, TensorSpec]) -> tuple[int, int]:
    """(H, W) of a feature_runner from its `left` input (1,3,H,W)."""
    shape = feature_inputs[contract.LEFT].shape
    if len(shape) != 4 or shape[:2] != (1, 3):
        raise ModelError(f"feature_runner input 'left' must be (1,3,H,W), the model says {shape}")
    return shape[2], shape[3]


# ------------------------------------------------------------------------------------ calibration

@dataclasses.dataclass
class CalibrationCache:
    """Tensor ranges of one model, portable as JSON: quantize again on another machine without calibrating."""

    stage: str
    model_sha256: str
    method: str
    percentile: float | None
    samples: int
    op_types: tuple[str, ...]
    ranges: dict[str, tuple[float, float]]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, **dataclasses.asdict(self)}
        payload["ranges"] = {name: [lo, hi] for name, (lo, hi) in sorted(self.ranges.items())}
        path.write_text(json.dumps(payload, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationCache":
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read calibration cache {path}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
            raise ModelError(f"{path} is not a flashstereo INT8 calibration cache (no format '{CACHE_FORMAT}')")
        if payload.get("version") != CACHE_VERSION:
            raise ModelError(f"{path} is calibration cache version {payload.get('version')}; this tool reads "
                             f"version {CACHE_VERSION}: calibrate again")
        try:
            ranges = {str(name): (float(lo), float(hi)) for name, (lo, hi) in payload["ranges"].items()}
            bad = [name for name, (lo, hi) in ranges.items() if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi)]
            if bad:
                raise ValueError(f"ranges of {bad[:5]} are not finite (low < high)")
            return cls(stage=str(payload["stage"]), model_sha256=str(payload["model_sha256"]),
                       method=str(payload["method"]), percentile=payload.get("percentile"),
                       samples=int(payload["samples"]), op_types=tuple(payload["op_types"]), ranges=ranges)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"calibration cache {path} is malformed: {exc}") from exc

    def check_fits(self, model_path: str | Path, stage: str) -> None:
        """Raise unless this cache was computed for exactly this model file."""
        if self.stage != stage:
            raise ModelError(f"the calibration cache is for a {self.stage}, not a {stage}")
        digest = model_sha256(model_path)
        if digest != self.model_sha256:
            raise ModelError(f"the calibration cache was computed for another model (sha256 {self.model_sha256[:12]}, "
                             f"{model_path} is {digest[:12]}); calibrate again with --recalibrate")


class _OneSample:
    """onnxruntime.quantization.CalibrationDataReader over one sample (keeps calibration memory bounded)."""

    def __init__(self, sample: Mapping[str, np.ndarray]):
        self._sample = dict(sample)

    def get_next(self):
        sample, self._sample = self._sample, None
        return sample

    def __len__(self):
        return 1


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax}[name]


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization prints progress and warns about pre-processing; keep the tools' output readable."""
    import logging

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _check_sample(sample: Mapping[str, np.ndarray], inputs: Mapping[str, TensorSpec], index: int) -> dict:
    if set(sample) != set(inputs):
        raise ModelError(f"calibration sample {index} has tensors {sorted(sample)} but the model takes "
                         f"{sorted(inputs)}")
    checked = {}
    for name, spec in inputs.items():
        value = np.asarray(sample[name])
        if value.shape != spec.shape or value.dtype != spec.dtype:
            raise ModelError(f"calibration sample {index}: '{name}' is {value.dtype} {value.shape}, "
                             f"the model takes {spec.dtype} {spec.shape}")
        if not np.isfinite(value).all():
            raise ModelError(f"calibration sample {index}: '{name}' holds NaN or inf")
        checked[name] = value
    return checked


def calibrate(model_path: str | Path, samples: Iterable[Mapping[str, np.ndarray]],
              settings: QuantSettings = QuantSettings(), log=print) -> CalibrationCache:
    """Run the float model on each sample and record the ranges of the tensors the quantizer will need."""
    from onnxruntime.quantization import create_calibrator

    model_path = Path(model_path)
    model = load_model(model_path)
    stage = identify_stage(model, model_path)
    inputs, _ = model_io(model, model_path)
    op_types = settings.ops_for(stage)
    present = {node.op_type for node in model.graph.node}
    if not present & set(op_types):  # ONNX Runtime would collect nothing and fail only after the last sample
        raise ModelError(f"{model_path.name} has no {list(op_types)} ops to quantize (its op types are "
                         f"{','.join(sorted(present))}); choose others with --op-types")
    digest = model_sha256(model_path)
    options = {"symmetric": True}
    if settings.method == "entropy":
        options.update(num_bins=ENTROPY_BINS, num_quantized_bins=ENTROPY_QUANTIZED_BINS)
    elif settings.method == "percentile":
        options.update(percentile=settings.percentile)
    count = 0
    with tempfile.TemporaryDirectory(prefix="flashstereo-calib-") as work, _quiet():
        local = _stage_copy(model, work)
        del model  # the calibrator holds its own copy of the weights
        try:
            # external data for the model with calibration outputs too: it may pass protobuf's 2 GB
            calibrator = create_calibrator(local, list(op_types), calibrate_method=_method(settings.method),
                                           augmented_model_path=str(Path(work) / "augmented.onnx"),
                                           use_external_data_format=True, extra_options=options)
        except Exception as exc:  # ONNX Runtime raises its own types for models it cannot load
            raise ModelError(f"ONNX Runtime cannot prepare {model_path.name} for calibration: {exc}") from exc
        for count, sample in enumerate(samples, start=1):
            checked = _check_sample(sample, inputs, count)
            try:
                calibrator.collect_data(_OneSample(checked))
            except Exception as exc:
                raise ModelError(f"ONNX Runtime failed on calibration sample {count}: {exc}") from exc
        if count == 0:
            raise ModelError("no calibration samples: the calibration set is empty")
        try:
            tensors = calibrator.compute_data()
        except Exception as exc:  # e.g. ValueError 'Histogram has not been collected' when nothing was selected
            raise ModelError(f"ONNX Runtime could not compute the ranges of {model_path.name} "
                             f"({type(exc).__name__}: {exc}); choose other --op-types") from exc
        del calibrator
    if not tensors.data:
        raise ModelError(f"{model_path.name} has no {list(op_types)} ops to quantize; choose other op types")
    ranges = {}
    for name, data in tensors.data.items():
        low, high = (float(np.asarray(v).item()) for v in data.range_value)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ModelError(f"calibration of '{name}' gave a non-finite range ({low}, {high}): the float model "
                             "produces NaN/inf on the calibration data")
        ranges[name] = (low, high)
    log(f"calibrated {len(ranges)} tensors of {model_path.name} on {count} samples ({settings.method})")
    return CalibrationCache(stage, digest, settings.method,
                            settings.percentile if settings.method == "percentile" else None, count, op_types, ranges)


# ------------------------------------------------------------------------------------- quantization

def quantize_qdq(model_path: str | Path, out_path: str | Path, cache: CalibrationCache,
                 settings: QuantSettings = QuantSettings()) -> Path:
    """Write the Q/DQ model of `model_path` from a calibration cache (TensorRT-style placement, see module doc)."""
    from onnxruntime.quantization import QDQQuantizer, QuantType
    from onnxruntime.quantization.calibrate import TensorData, TensorsData
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    model_path, out_path = Path(model_path), Path(out_path)
    header = load_model(model_path, weights=False)
    stage = identify_stage(header, model_path)
    cache.check_fits(model_path, stage)
    op_types = list(cache.op_types)
    tensors = TensorsData(_method(cache.method), {
        name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in cache.ranges.items()})
    extra = {
        "ActivationSymmetric": True,  # TensorRT takes int8 with zero point 0 only
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT keeps biases in float and fuses them
        "ForceQuantizeNoInputCheck": True,  # quantize pooling inputs even when their producer is not quantized
        "OpTypesToExcludeOutputQuantization": op_types,  # Q/DQ on inputs only; outputs stay in float
        "DedicatedQDQPair": False,
    }
    with tempfile.TemporaryDirectory(prefix="flashstereo-qdq-") as work, _quiet():
        model = load_model_with_shape_infer(_stage_copy(load_model(model_path), work))
        quantizer = QDQQuantizer(model, settings.per_channel, False, QuantType.QInt8, QuantType.QInt8, tensors,
                                 [], [], op_types, extra)  # the onnxruntime >= 1.18 signature
        try:
            quantizer.quantize_model()
        except Exception as exc:  # ONNX Runtime's own errors, e.g. a range missing from a hand-edited cache
            raise ModelError(f"quantizing {model_path.name} from the calibration cache failed ({type(exc).__name__}: "
                             f"{exc}); calibrate again with --recalibrate") from exc
        quantized = quantizer.model.model
    topological_sort(quantized)  # the quantizer appends its Q/DQ nodes after their consumers
    _strip_quantizer_metadata(quantized)
    return save_model(quantized, out_path, external=bool(_external_locations(header)))


def _strip_quantizer_metadata(model: onnx.ModelProto) -> None:
    """Drop the shape-inference value_info the quantizer leaves behind (it is re-derivable and goes stale)."""
    del model.graph.value_info[:]


@dataclasses.dataclass
class QdqSummary:
    """What a Q/DQ model holds, as checked by verify_qdq."""

    stage: str
    quantize_nodes: int
    dequantize_nodes: int
    quantized_activations: list[str]
    per_channel_weights: list[str]
    float_type: str


def verify_qdq(path: str | Path, reference: str | Path | None = None) -> QdqSummary:
    """Check a Q/DQ model: onnx.checker (full), Q/DQ present, int8 with zero point 0, weights per channel,
    and (with `reference`) the same inputs and outputs as the float model it came from."""
    path = Path(path)
    model = load_model(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)  # by path: external data and > 2 GB models
    except Exception as exc:  # ValidationError or InferenceError
        raise ModelError(f"{path} fails onnx.checker: {exc}") from exc
    stage = identify_stage(model, path)
    if reference is not None:
        if model_io(model, path) != model_io(load_model(reference, weights=False), reference):
            raise ModelError(f"{path} does not have the inputs/outputs of {reference}")
    initializers = {init.name: init for init in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    if not quantize or not dequantize:
        raise ModelError(f"{path} has {len(quantize)} QuantizeLinear and {len(dequantize)} DequantizeLinear nodes: "
                         "it is not a Q/DQ (explicitly quantized) model")
    per_channel, float_types = [], set()
    for node in quantize + dequantize:
        if len(node.input) < 3 or node.input[2] not in initializers:
            raise ModelError(f"{path}: {node.op_type} '{node.name}' has no constant zero point")
        zero_point = initializers[node.input[2]]
        if zero_point.data_type != onnx.TensorProto.INT8:
            raise ModelError(f"{path}: {node.op_type} '{node.name}' quantizes to "
                             f"{onnx.TensorProto.DataType.Name(zero_point.data_type)}, not INT8")
        if np.any(onnx.numpy_helper.to_array(zero_point) != 0):
            raise ModelError(f"{path}: {node.op_type} '{node.name}' has a non-zero zero point "
                             "(TensorRT takes symmetric int8 only)")
        scale = initializers.get(node.input[1])
        if scale is None:
            raise ModelError(f"{path}: {node.op_type} '{node.name}' has no constant scale")
        float_types.add(onnx.TensorProto.DataType.Name(scale.data_type))
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers and len(scale.dims) == 1 \
                and scale.dims[0] > 1:
            per_channel.append(node.input[0])
    return QdqSummary(stage, len(quantize), len(dequantize), sorted({n.input[0] for n in quantize}),
                      sorted(per_channel), ",".join(sorted(float_types)))


# ------------------------------------------------------------------------------------------ float16

def topological_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Order the nodes so each comes after its inputs' producers (the fp16 converter appends casts at the end)."""
    graph = model.graph
    available = {v.name for v in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            raise ModelError(f"graph has nodes whose inputs are never produced: {[n.name for n in remaining[:5]]}")
        pending = remaining
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def to_float16(model_path: str | Path, out_path: str | Path) -> Path:
    """The model with float16 compute and float32 (or its original) inputs/outputs.

    Uses ONNX Runtime's copy of onnxconverter-common's float16 converter. A Q/DQ model is first moved to
    opset 19 so its scales can be float16: in a strongly typed TensorRT network the DequantizeLinear output
    type follows the scale's, which is how INT8 regions hand over to FP16 ones.
    """
    from onnx import version_converter
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model_path, out_path = Path(model_path), Path(out_path)
    model = load_model(model_path)
    external = bool(_external_locations(load_model(model_path, weights=False)))
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if has_qdq and opset < FP16_MIN_OPSET:
        try:
            model = version_converter.convert_version(model, FP16_MIN_OPSET)
        except Exception as exc:  # the converter raises for ops it cannot adapt
            raise ModelError(f"cannot move {model_path.name} from opset {opset} to {FP16_MIN_OPSET} for float16 "
                             f"Q/DQ scales: {exc}") from exc
    with _quiet():
        converted = convert_float_to_float16(model, keep_io_types=True)
    topological_sort(converted)
    del converted.graph.value_info[:]  # the converter leaves stale float32 entries; shape inference redoes them
    save_model(converted, out_path, external)
    try:
        onnx.checker.check_model(str(out_path), full_check=True)  # by path: external data and > 2 GB models
    except Exception as exc:
        for path in model_files(out_path):
            path.unlink(missing_ok=True)
        raise ModelError(f"the float16 conversion of {model_path.name} is not a valid model: {exc}") from exc
    return out_path


# ------------------------------------------------------------------------------------------ TensorRT

def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def build_engine(onnx_path: str | Path, engine_path: str | Path, workspace_mib: int | None = None,
                 log=print) -> Path:
    """Build a TensorRT engine from a Q/DQ ONNX as a strongly typed network (TensorRT 10.x/11.x API).

    Strongly typed: every layer runs in the type the ONNX gives it, so feed the float16 Q/DQ file for
    INT8 + FP16. No precision flags are set (TensorRT 11 has none; TensorRT 10 forbids them here).
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError("TensorRT is not importable: cannot build the engine here") from exc
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is None:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} cannot build strongly typed networks: the "
                                      "INT8 Q/DQ engines need TensorRT 10 or newer (JetPack 6.1+)")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors or 'no detail'}")
    config = builder.create_builder_config()
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    log(f"building {engine_path.name} with TensorRT {trt.__version__} (strongly typed, from {onnx_path.name}) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


# ------------------------------------------------------------------------------ the whole build step

@dataclasses.dataclass
class Int8Outputs:
    """Where one stage's INT8 build put its files (engine is None when TensorRT was not used)."""

    qdq_onnx: Path
    fp16_qdq_onnx: Path
    calib_cache: Path
    engine: Path | None
    summary: QdqSummary


def output_paths(engine_out: str | Path, onnx_out: str | Path | None = None,
                 calib_cache: str | Path | None = None) -> tuple[Path, Path, Path]:
    """(Q/DQ onnx, float16 Q/DQ onnx, calibration cache) beside the engine unless named:
    x/feature_runner_int8.engine -> x/feature_runner_int8.onnx, _fp16.onnx, .calib.json."""
    engine_out = Path(engine_out)
    if engine_out.suffix.lower() == ".onnx":
        raise ModelError(f"--engine-out {engine_out} names an .onnx file; give the engine path (.engine or .plan)")
    qdq = Path(onnx_out) if onnx_out else engine_out.with_suffix(".onnx")
    fp16 = qdq.with_name(f"{qdq.stem}_fp16.onnx")
    cache = Path(calib_cache) if calib_cache else engine_out.with_suffix(".calib.json")
    return qdq, fp16, cache


def build_int8_stage(stage: str, model_path: str | Path, engine_out: str | Path, samples, settings: QuantSettings,
                     onnx_out: str | Path | None = None, calib_cache: str | Path | None = None,
                     reuse_cache: bool = False, want_engine: bool = True, workspace_mib: int | None = None,
                     log=print) -> Int8Outputs:
    """Calibrate (or reuse a cache), write and verify the Q/DQ ONNX and its float16 form, build the engine.

    `samples` is a callable returning an iterable of input dicts; it is not called when a cache is reused.
    """
    model_path = Path(model_path)
    model, _ = expect_stage(model_path, stage)
    check_float_model(model, model_path)
    qdq_path, fp16_path, cache_path = output_paths(engine_out, onnx_out, calib_cache)
    if reuse_cache:
        cache = CalibrationCache.load(cache_path)
        cache.check_fits(model_path, stage)
        if settings.op_types and tuple(settings.op_types) != cache.op_types:
            raise ModelError(f"the calibration cache quantizes {list(cache.op_types)}, not the requested "
                             f"{list(settings.op_types)}; calibrate again with --recalibrate")
        wanted = (settings.method, settings.percentile if settings.method == "percentile" else None)
        if (cache.method, cache.percentile) != wanted:
            raise ModelError(f"the calibration cache was computed with {cache.method}"
                             f"{f' {cache.percentile}' if cache.percentile is not None else ''}, not the requested "
                             f"{wanted[0]}{f' {wanted[1]}' if wanted[1] is not None else ''}: give the cache's "
                             "method (--calib-method, --percentile), or calibrate again with --recalibrate")
        log(f"using calibration cache {cache_path} ({cache.method}, {cache.samples} samples, "
            f"{len(cache.ranges)} tensors): calibration skipped")
    outputs = (*model_files(qdq_path), *model_files(fp16_path), Path(engine_out))
    sources = {path.resolve() for path in (model_path, *external_data_files(model_path))}
    clashes = [str(path) for path in (*outputs, *([] if reuse_cache else [Path(cache_path)]))
               if path.resolve() in sources]
    if clashes:  # they are deleted or overwritten below: that would destroy the float model
        raise ModelError(f"the outputs {clashes} would overwrite the model {model_path} or its weights: choose "
                         "another --engine-out (its stem names the ONNX outputs), --onnx-out or --calib-cache")
    for path in outputs:  # never leave the files of an earlier build beside those of a failed one
        path.unlink(missing_ok=True)
    try:
        if not reuse_cache:
            cache = calibrate(model_path, samples(), settings, log=log)
            cache.save(cache_path)
            log(f"wrote calibration cache {cache_path}")
        quantize_qdq(model_path, qdq_path, cache, settings)
        summary = verify_qdq(qdq_path, model_path)
        log(f"wrote {qdq_path}: {summary.quantize_nodes} QuantizeLinear, {summary.dequantize_nodes} "
            f"DequantizeLinear, {len(summary.per_channel_weights)} per-channel weights, onnx.checker passed")
        to_float16(qdq_path, fp16_path)
        verify_qdq(fp16_path, model_path)
    except BaseException:
        for path in outputs:
            path.unlink(missing_ok=True)
        raise
    log(f"wrote {fp16_path}: the same Q/DQ with float16 elsewhere (input of strongly typed TensorRT builds)")
    engine = None
    if not want_engine:
        log("engine build skipped (--no-engine)")
    elif not tensorrt_available():
        log(f"TensorRT is not importable here: stopped after the ONNX. On the target, run this command again "
            f"with --calib-cache {cache_path} (no calibration needed), or: "
            f"trtexec --onnx={fp16_path} --stronglyTyped --saveEngine={engine_out}")
    else:
        engine = build_engine(fp16_path, engine_out, workspace_mib, log=log)
        log(f"wrote {engine}")
    return Int8Outputs(qdq_path, fp16_path, cache_path, engine, summary)
