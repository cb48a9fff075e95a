"""flashstereo-gen-post-calib: post_runner calibration tensors (step 3 of docs/INT8.md).

Runs the real pipeline (feature stage, per-group norm, GWC volume) on each calibration pair and saves
what the post engine receives, gwc_volume and the feature outputs it takes (a post engine may leave out
those it does not read), as <out-dir>/<scene>.npz, read later with allow_pickle=False by
flashstereo-build-int8-post.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from .. import calibration, quantize, resources
from ..errors import FlashStereoError
from ..pipelines import DEVICES, create_pipeline
from . import at_least, require_writable

DEFAULT_OUT_DIR = "assets/post_calib"


def host_post_inputs(pipe) -> dict[str, np.ndarray]:
    """Copies of the post_runner inputs of the pipeline's last frame, keyed by contract name: the CPU
    pipeline's host buffers, or the GPU pipeline's device tensors (downloaded, in the post engine's dtypes)."""
    buffers = getattr(pipe, "post_buffers", None)
    if isinstance(buffers, Mapping) and all(isinstance(v, np.ndarray) for v in buffers.values()):
        return {name: np.array(value, copy=True) for name, value in buffers.items()}
    if hasattr(pipe, "intermediates"):
        values = pipe.intermediates()  # a cast input is under "post:<name>", the rest under its own name
        return {name: values.get(f"post:{name}", values.get(name)) for name in pipe.geometry.post_inputs}
    raise calibration.CalibrationDataError(
        f"{type(pipe).__name__} exposes neither its post_runner inputs (post_buffers) nor its intermediates; "
        "run this step with --device cpu")


def post_samples(pipe, pairs, log=print):
    for pair in pairs:
        pipe.infer(pair.left, pair.right)
        log(f"{pair.name}: feature stage + GWC done")
        yield pair.name, host_post_inputs(pipe)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-dir", required=True, help="calibration pairs from flashstereo-download-calib")
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help=f"where the .npz go (default {DEFAULT_OUT_DIR})")
    parser.add_argument("--feat-engine", help="feature_runner to run (default: bundled 480x640 stand-in .onnx); "
                                              "an INT8 one calibrates the post stage on what INT8-both feeds it")
    parser.add_argument("--post-engine", help="post_runner whose inputs are saved (default: bundled stand-in .onnx)")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="pipeline device (default cpu; cuda downloads the GPU pipeline's post inputs)")
    parser.add_argument("--backend", choices=("tensorrt", "onnxruntime", "torch"))
    parser.add_argument("--max-pairs", type=at_least(1), help="use at most this many pairs, evenly spread over the set")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    require_writable(parser, "--out-dir", args.out_dir, make_parents=True, is_folder=True)
    default_feat, default_post = resources.bundled_models(".onnx")
    feat = Path(args.feat_engine) if args.feat_engine else default_feat
    post = Path(args.post_engine) if args.post_engine else default_post
    try:
        if post.suffix == ".onnx":
            quantize.expect_stage(post, quantize.POST_STAGE)
        pipe = create_pipeline(feat, post, device=args.device, backend=args.backend, resize=False)
        pairs = calibration.spread(calibration.load_pairs(args.calib_dir, pipe.input_size), args.max_pairs)
        source = {"feat_engine": str(feat.resolve()), "post_engine": str(post.resolve()),
                  "calib_dir": str(Path(args.calib_dir).resolve()), "pipeline": type(pipe).__name__}
        paths = calibration.write_post_samples(post_samples(pipe, pairs), args.out_dir, source, force=args.force)
        calibration.check_post_samples(args.out_dir, pipe.geometry.post_inputs)
    except (FlashStereoError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} post_runner input sets to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
