"""flashstereo-build-int8-post: INT8 post_runner by explicit quantization (step 4 of docs/INT8.md).

Same as flashstereo-build-int8, calibrated on the post_runner inputs that flashstereo-gen-post-calib
saved (.npz, one per calibration pair: gwc_volume and the feature outputs this post_runner takes).
"""
from __future__ import annotations

import argparse
import sys

from .. import calibration, quantize
from ..errors import FlashStereoError
from .build_int8 import add_common_arguments, check_outputs, check_settings, reuse_cache, run_build


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, quantize.POST_STAGE)
    parser.add_argument("--npz-dir", help="post_runner inputs from flashstereo-gen-post-calib")
    args = parser.parse_args(argv)
    check_outputs(parser, args)
    paths = []
    try:
        model, inputs = quantize.expect_stage(args.onnx, quantize.POST_STAGE)
        check_settings(args, model)
        if not reuse_cache(args):
            if not args.npz_dir:
                raise calibration.CalibrationDataError("--npz-dir is required unless --calib-cache names an "
                                                       "existing calibration cache")
            paths = calibration.spread(calibration.check_post_samples(args.npz_dir, inputs), args.max_samples)
    except FlashStereoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_build(args, quantize.POST_STAGE, lambda: calibration.iter_post_samples(paths))


if __name__ == "__main__":
    raise SystemExit(main())
