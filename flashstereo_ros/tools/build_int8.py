"""flashstereo-build-int8: INT8 feature_runner by explicit quantization (step 2 of docs/INT8.md).

Calibrates the float feature_runner.onnx on stereo pairs (flashstereo-download-calib), writes the Q/DQ
model (<engine-out stem>.onnx: symmetric int8 activations, per-channel int8 weights), its float16 form
(<stem>_fp16.onnx) and a portable calibration cache (<stem>.calib.json), and builds the TensorRT engine
from the float16 Q/DQ model as a strongly typed network when TensorRT is importable.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from .. import calibration, contract, images, quantize
from ..errors import FlashStereoError, ModelError
from . import at_least, require_writable


def add_common_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """Options shared by the feature and post builds."""
    parser.add_argument("--onnx", required=True, help=f"float {stage}.onnx to quantize")
    parser.add_argument("--engine-out", required=True,
                        help=f"TensorRT engine to write, e.g. engines/{stage}_int8.engine; the ONNX files and the "
                             "calibration cache go beside it")
    parser.add_argument("--onnx-out", help="Q/DQ ONNX path (default: the engine path with .onnx)")
    parser.add_argument("--calib-cache",
                        help="calibration cache (JSON): reused when it exists (no calibration data needed), "
                             "else written (default: beside the engine, written)")
    parser.add_argument("--recalibrate", action="store_true", help="calibrate even if --calib-cache exists")
    parser.add_argument("--calib-method", choices=quantize.METHODS, default="percentile",
                        help="how tensor ranges are chosen (default percentile; see docs/INT8.md)")
    parser.add_argument("--percentile", type=float, default=quantize.DEFAULT_PERCENTILE,
                        help=f"for --calib-method percentile (default {quantize.DEFAULT_PERCENTILE})")
    parser.add_argument("--op-types",
                        help="comma-separated ONNX op types to quantize (default "
                             f"{','.join(quantize.DEFAULT_OP_TYPES[stage])})")
    parser.add_argument("--max-samples", type=at_least(1),
                        help="use at most this many calibration samples, evenly spread over the set")
    parser.add_argument("--no-engine", action="store_true", help="stop after the ONNX files even with TensorRT")
    parser.add_argument("--workspace-mib", type=at_least(1), help="TensorRT builder workspace limit")


def check_outputs(parser: argparse.ArgumentParser, args) -> None:
    """parser.error now, not after calibration, when an output cannot be written (missing folders are made)."""
    outputs = {"--engine-out": args.engine_out, "--onnx-out": args.onnx_out}
    if not reuse_cache(args):
        outputs["--calib-cache"] = args.calib_cache
    for option, path in outputs.items():
        if path:
            require_writable(parser, option, path, make_parents=True)


def check_settings(args, model: onnx.ModelProto) -> None:
    """Refuse settings that would fail mid-calibration: ONNX Runtime collects nothing for an op type the model
    lacks and then fails with 'Histogram has not been collected'."""
    settings = settings_from(args)
    present = {node.op_type for node in model.graph.node}
    missing = [op for op in settings.op_types or () if op not in present]
    if missing:
        raise ModelError(f"--op-types {','.join(missing)}: not in {Path(args.onnx).name}, whose op types are "
                         f"{','.join(sorted(present))}")


def settings_from(args) -> quantize.QuantSettings:
    op_types = tuple(s.strip() for s in args.op_types.split(",") if s.strip()) if args.op_types else None
    return quantize.QuantSettings(method=args.calib_method, percentile=args.percentile, op_types=op_types)


def reuse_cache(args) -> bool:
    return bool(args.calib_cache) and Path(args.calib_cache).is_file() and not args.recalibrate


def run_build(args, stage: str, samples) -> int:
    """The shared body of both build tools: errors become one line on stderr and exit status 2."""
    try:
        outputs = quantize.build_int8_stage(
            stage, args.onnx, args.engine_out, samples, settings_from(args), onnx_out=args.onnx_out,
            calib_cache=args.calib_cache, reuse_cache=reuse_cache(args), want_engine=not args.no_engine,
            workspace_mib=args.workspace_mib)
    except (FlashStereoError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done: {outputs.qdq_onnx}" + (f", {outputs.engine}" if outputs.engine else " (no engine)"))
    return 0


def feature_samples(calib_dir: str | Path, size: tuple[int, int], limit: int | None = None):
    """feature_runner inputs, (1,3,H,W) float32 RGB 0..255, of each calibration pair."""
    for pair in calibration.spread(calibration.load_pairs(calib_dir, size), limit):
        yield {contract.LEFT: images.to_planar_rgb(pair.left, "rgb8", size),
               contract.RIGHT: images.to_planar_rgb(pair.right, "rgb8", size)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, quantize.FEATURE_STAGE)
    parser.add_argument("--calib-dir", help="calibration pairs (<scene>/im0.png, im1.png at the engine size)")
    args = parser.parse_args(argv)
    check_outputs(parser, args)
    try:
        model, inputs = quantize.expect_stage(args.onnx, quantize.FEATURE_STAGE)
        check_settings(args, model)
        size = quantize.image_size(inputs)
        if not reuse_cache(args):
            if not args.calib_dir:
                raise calibration.CalibrationDataError("--calib-dir is required unless --calib-cache names an "
                                                       "existing calibration cache")
            calibration.load_pairs(args.calib_dir, size)  # fail before any work on bad data
    except FlashStereoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_build(args, quantize.FEATURE_STAGE, lambda: feature_samples(args.calib_dir, size, args.max_samples))


if __name__ == "__main__":
    raise SystemExit(main())
