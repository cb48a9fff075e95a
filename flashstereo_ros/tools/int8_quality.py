"""flashstereo-int8-quality: disparity agreement of FP16 and INT8 models with FP32 (step 5 of docs/INT8.md).

Runs every precision configuration through the CPU pipeline (ONNX Runtime) on held-out pairs and
compares each disparity with the FP32 model's (flashstereo_ros.metrics):

  FP32         the float models again (a determinism check: expect bit-identical)
  FP16         both stages converted to float16 compute (onnxruntime.transformers.float16)
  INT8-feat    Q/DQ feature_runner, float post_runner
  INT8-post    float feature_runner, Q/DQ post_runner
  INT8-both    both Q/DQ models
  INT8-both+FP16  both Q/DQ models with float16 elsewhere: what a strongly typed TensorRT build runs

Evaluation pairs: --eval-dir (same layout as the calibration pairs) or --synthetic N (synthetic scenes,
seeds from --seed, which also gives the error against ground truth). With --calib-dir, pairs that are
also calibration pairs are refused.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from .. import calibration, metrics, quantize, resources
from ..cpu_pipeline import CpuStereoPipeline
from ..errors import FlashStereoError
from . import at_least, require_writable

DEFAULT_EVAL_SEED = 1000  # far from the calibration sets' default seeds (0..N)
CONFIGS = ("FP32", "FP16", "INT8-feat", "INT8-post", "INT8-both", "INT8-both+FP16")


def configurations(models: dict[str, Path]) -> dict[str, tuple[Path, Path]]:
    """Configuration name -> (feature model, post model)."""
    return {
        "FP32": (models["feat"], models["post"]),
        "FP16": (models["feat_fp16"], models["post_fp16"]),
        "INT8-feat": (models["feat_int8"], models["post"]),
        "INT8-post": (models["feat"], models["post_int8"]),
        "INT8-both": (models["feat_int8"], models["post_int8"]),
        "INT8-both+FP16": (models["feat_int8_fp16"], models["post_int8_fp16"]),
    }


def run_pairs(feat: Path, post: Path, pairs, threads: int | None) -> list[np.ndarray]:
    pipe = CpuStereoPipeline(feat, post, resize=False, threads=threads)
    try:
        return [pipe.infer(pair.left, pair.right).copy() for pair in pairs]
    finally:
        pipe.close()


def measure(models: dict[str, Path], pairs, threads: int | None = None, log=print) -> dict[str, dict]:
    """Pooled agreement with FP32 of every configuration (and mean error vs ground truth when known)."""
    reference = run_pairs(models["feat"], models["post"], pairs, threads)
    results = {}
    for name, (feat, post) in configurations(models).items():
        disparities = run_pairs(feat, post, pairs, threads)
        pooled, visible = metrics.AgreementAccumulator(), metrics.AgreementAccumulator()
        for disparity, ref, pair in zip(disparities, reference, pairs):
            pooled.add(disparity, ref)
            if pair.valid is not None:
                visible.add(disparity, ref, pair.valid)
        result = pooled.result()
        with_truth = [(d, p) for d, p in zip(disparities, pairs) if p.disparity is not None]
        if len(with_truth) == len(pairs):
            # ground truth says which pixels are visible in both views: the agreement there, and the error
            result["visible"] = visible.result()
            errors = np.concatenate([np.abs(d - p.disparity)[p.valid] for d, p in with_truth])
            result["epe_gt"] = float(errors.mean())
        results[name] = result
        log(f"{name}: done")
    return results


def format_table(results: dict[str, dict]) -> str:
    """A Markdown table of the results."""
    truth = all("epe_gt" in r for r in results.values())
    header = "| config | cosine | rel L1 | max abs (px) | > 1 px | bit-identical |"
    header += " rel L1, visible | > 1 px, visible | EPE vs GT (px) |" if truth else ""
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in results.items():
        line = (f"| {name} | {r['cosine']:.6f} | {100 * r['rel_l1']:.4f} % | {r['max_abs']:.3f} | "
                f"{r['pct_over_1px']:.4f} % | {'yes' if r['bit_identical'] else 'no'} |")
        if truth:
            line += (f" {100 * r['visible']['rel_l1']:.4f} % | {r['visible']['pct_over_1px']:.4f} % |"
                     f" {r['epe_gt']:.4f} |")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feat-onnx", help="float feature_runner.onnx (default: bundled 480x640 stand-in)")
    parser.add_argument("--post-onnx", help="float post_runner.onnx (default: bundled 480x640 stand-in)")
    parser.add_argument("--feat-int8", required=True, help="Q/DQ feature_runner from flashstereo-build-int8")
    parser.add_argument("--post-int8", required=True, help="Q/DQ post_runner from flashstereo-build-int8-post")
    parser.add_argument("--feat-int8-fp16", help="its float16 form (default: <feat-int8 stem>_fp16.onnx if present, "
                                                 "else converted)")
    parser.add_argument("--post-int8-fp16", help="likewise for the post stage")
    eval_source = parser.add_mutually_exclusive_group(required=True)
    eval_source.add_argument("--eval-dir", help="held-out pairs (<scene>/im0.png, im1.png at the engine size)")
    eval_source.add_argument("--synthetic", type=at_least(1), metavar="N", help="N held-out synthetic pairs")
    parser.add_argument("--seed", type=at_least(0), default=DEFAULT_EVAL_SEED,
                        help=f"first seed of --synthetic pairs (default {DEFAULT_EVAL_SEED})")
    parser.add_argument("--calib-dir", help="the calibration pairs: evaluation pairs found there are refused")
    parser.add_argument("--threads", type=at_least(1), help="ONNX Runtime intra-op threads")
    parser.add_argument("--json-out", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.json_out:
        require_writable(parser, "--json-out", args.json_out)

    default_feat, default_post = resources.bundled_models(".onnx")
    models = {"feat": Path(args.feat_onnx or default_feat), "post": Path(args.post_onnx or default_post),
              "feat_int8": Path(args.feat_int8), "post_int8": Path(args.post_int8)}
    try:
        with tempfile.TemporaryDirectory(prefix="flashstereo-quality-") as work:
            _, feat_inputs = quantize.expect_stage(models["feat"], quantize.FEATURE_STAGE)
            quantize.expect_stage(models["post"], quantize.POST_STAGE)
            for key, stage in (("feat", quantize.FEATURE_STAGE), ("post", quantize.POST_STAGE)):
                quantize.expect_stage(models[f"{key}_int8"], stage)
                quantize.verify_qdq(models[f"{key}_int8"], models[key])
            for key in ("feat", "post"):
                models[f"{key}_fp16"] = quantize.to_float16(models[key], Path(work) / f"{key}_fp16.onnx")
                given = getattr(args, f"{key}_int8_fp16")
                beside = models[f"{key}_int8"].with_name(f"{models[f'{key}_int8'].stem}_fp16.onnx")
                models[f"{key}_int8_fp16"] = Path(given) if given else beside if beside.is_file() else \
                    quantize.to_float16(models[f"{key}_int8"], Path(work) / f"{key}_int8_fp16.onnx")
            size = quantize.image_size(feat_inputs)
            if args.synthetic is not None:
                pairs = calibration.synthetic_pairs(args.synthetic, size, args.seed)
                source = f"{args.synthetic} synthetic pairs, seeds {args.seed}..{args.seed + args.synthetic - 1}"
            else:
                pairs = calibration.load_pairs(args.eval_dir, size)
                source = f"{len(pairs)} pairs from {args.eval_dir}"
            if args.calib_dir:
                calibration_digests = {p.digest() for p in calibration.load_pairs(args.calib_dir)}
                overlap = [p.name for p in pairs if p.digest() in calibration_digests]
                if overlap:
                    raise calibration.CalibrationDataError(
                        f"evaluation pairs {overlap} are also calibration pairs in {args.calib_dir}; "
                        "measure on held-out pairs (synthetic ones: flashstereo-download-calib --synthetic N "
                        "with another --seed, e.g. 1000, or this tool's own --synthetic N)")
            print(f"evaluating at {size[1]}x{size[0]} on {source} (ONNX Runtime, CPU)")
            results = measure(models, pairs, args.threads)
    except (FlashStereoError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    print("rel L1 = sum|d - d_fp32| / sum|d_fp32| over all pixels; > 1 px = share of pixels off by more than 1 px"
          + ("; visible = pixels seen by both cameras (ground truth valid); EPE = mean |d - truth| there"
             if all("epe_gt" in r for r in results.values()) else ""))
    if args.json_out:
        payload = {"size": list(size), "pairs": [p.name for p in pairs], "results": results}
        Path(args.json_out).write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
