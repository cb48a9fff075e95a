"""flashstereo-demo: disparity of one stereo pair, written as a colour PNG with a legend.

With no arguments it runs the bundled stand-in model on the bundled sample pair (on the GPU when one
can run it, else on the CPU) and reports the error against the sample's ground truth.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from .. import colorize, resources
from ..errors import FlashStereoError
from ..pipelines import DEVICES, create_pipeline
from . import require_writable
from .scene import read_disparity_png

BAD_PIXEL_THRESHOLD = 3.0


def read_rgb(path: str | Path) -> np.ndarray:
    # rectified pixels as stored: an EXIF orientation tag would turn one image or both and break the pair
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise FlashStereoError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def error_report(disparity: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    err = np.abs(disparity - truth)[valid]
    return {"mae_px": float(err.mean()), "bad3_percent": float((err > BAD_PIXEL_THRESHOLD).mean() * 100),
            "pixels": int(valid.sum())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feat-engine", help="feature_runner .engine/.plan/.onnx/.pt2 (default: bundled stand-in)")
    parser.add_argument("--post-engine", help="post_runner .engine/.plan/.onnx/.pt2 (default: bundled stand-in)")
    parser.add_argument("--left", help="left image (default: bundled sample)")
    parser.add_argument("--right", help="right image (default: bundled sample)")
    parser.add_argument("--gt", help="ground-truth disparity, 16-bit PNG = disparity*256 (default: the sample's)")
    parser.add_argument("--out", default="disp_color.png", help="colour disparity PNG to write")
    parser.add_argument("--save-disparity", help="also write the raw float32 disparity (.npy format, to this "
                        "exact path)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--backend", choices=("tensorrt", "onnxruntime", "torch"))
    parser.add_argument("--no-resize", action="store_true", help="fail instead of resizing to the engine size")
    args = parser.parse_args(argv)
    if bool(args.left) != bool(args.right):
        parser.error("give both --left and --right, or neither for the bundled sample")
    if not cv2.haveImageWriter(args.out):
        parser.error(f"--out {args.out}: OpenCV cannot write this file type; use e.g. .png or .jpg")
    require_writable(parser, "--out", args.out)
    if args.save_disparity:
        require_writable(parser, "--save-disparity", args.save_disparity)

    try:
        left_path = args.left or resources.asset("example_left.png")
        right_path = args.right or resources.asset("example_right.png")
        gt_path = args.gt or (resources.asset("example_disp_gt.png") if not args.left else None)
        left, right = read_rgb(left_path), read_rgb(right_path)
        ground_truth = read_disparity_png(gt_path) if gt_path else None  # a bad file fails before inference
        pipe = create_pipeline(args.feat_engine, args.post_engine, device=args.device, backend=args.backend,
                               resize=not args.no_resize)
        disparity = pipe.infer(left, right)  # first frame: warms up (kernel build, allocations)
        disparity = pipe.infer(left, right)
    except (FlashStereoError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    value_range = colorize.disparity_range(disparity)
    image = colorize.with_legend(colorize.colorize(disparity, value_range), value_range)
    if not cv2.imwrite(args.out, image):
        print(f"error: cannot write {args.out}", file=sys.stderr)
        return 2
    if args.save_disparity:
        with open(args.save_disparity, "wb") as stream:  # np.save given a name would add ".npy" to it
            np.save(stream, disparity)
    name = type(pipe).__name__
    size = f"{left.shape[1]}x{left.shape[0]} -> engine {pipe.input_size[1]}x{pipe.input_size[0]}"
    print(f"{name} ({', '.join(pipe.engines.backends)}), {size}")
    print(f"disparity: min {np.nanmin(disparity):.2f} px, max {np.nanmax(disparity):.2f} px")
    print("stage times (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in pipe.timings.items()))
    if ground_truth:
        truth, valid = ground_truth
        if truth.shape != disparity.shape:
            print(f"ground truth {truth.shape} does not match the disparity {disparity.shape}; no error computed")
        else:
            report = error_report(disparity, truth, valid)
            print(f"error vs ground truth: MAE {report['mae_px']:.3f} px, "
                  f">{BAD_PIXEL_THRESHOLD:.0f} px {report['bad3_percent']:.2f}% of {report['pixels']} pixels")
    print(f"wrote {args.out}" + (f" and {args.save_disparity}" if args.save_disparity else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
