"""flashstereo-download-calib: INT8 calibration pairs at the engine size (step 1 of docs/INT8.md).

Fetches Middlebury 2014 stereo pairs (<base-url>/datasets/<Scene>-perfect/im0.png and im1.png), checks
that every file is a decodable PNG and that im0 and im1 agree in size, resizes them to the engine size
and writes <out-dir>/<Scene>/im0.png, im1.png and a manifest. --from-dir reads a local copy in the same
layout (offline machines); --synthetic N renders synthetic scenes instead. Nothing is overwritten
without --force, and nothing is written unless every pair passed its checks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import calibration, contract
from ..errors import FlashStereoError
from . import at_least, require_writable

DEFAULT_OUT_DIR = "assets/calib_pairs"
DEFAULT_PAIRS = 16


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help=f"where the pairs go (default {DEFAULT_OUT_DIR})")
    parser.add_argument("--n", type=at_least(1),
                        help=f"number of pairs (default: as many as --scenes names, else {DEFAULT_PAIRS})")
    parser.add_argument("--height", type=int, default=480,
                        help=f"engine input height, a multiple of {contract.SIZE_MULTIPLE} (default 480)")
    parser.add_argument("--width", type=int, default=640,
                        help=f"engine input width, a multiple of {contract.SIZE_MULTIPLE} (default 640)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-dir", help="local folder of <scene>/im0.png, im1.png (a Middlebury copy) instead "
                                           "of downloading")
    source.add_argument("--synthetic", type=at_least(1), metavar="N",
                        help="render N synthetic pairs instead (for machines that cannot download)")
    parser.add_argument("--seed", type=at_least(0), default=0, help="first seed of --synthetic scenes (default 0)")
    parser.add_argument("--base-url", default=calibration.MIDDLEBURY_2014_URL,
                        help=f"Middlebury 2014 root (default {calibration.MIDDLEBURY_2014_URL})")
    parser.add_argument("--variant", choices=calibration.MIDDLEBURY_VARIANTS, default="perfect",
                        help="Middlebury rectification variant (default perfect)")
    parser.add_argument("--scenes", help="comma-separated Middlebury scene names (default: the first N of the "
                                         "23 scenes with ground truth)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    parser.add_argument("--force", action="store_true", help="replace an existing calibration folder")
    return parser


def scene_names(args) -> list[str]:
    return [s.strip() for s in args.scenes.split(",") if s.strip()] if args.scenes \
        else list(calibration.MIDDLEBURY_2014_SCENES)


def check_arguments(parser: argparse.ArgumentParser, args) -> None:
    """parser.error on arguments that would otherwise fail after the download; fills in the default --n."""
    for option, value in (("--height", args.height), ("--width", args.width)):
        if value < contract.SIZE_MULTIPLE or value % contract.SIZE_MULTIPLE:
            parser.error(f"{option} {value}: the engine size must be a multiple of {contract.SIZE_MULTIPLE}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    if args.scenes and not scene_names(args):
        parser.error(f"--scenes {args.scenes!r} names no scene")
    if args.n is None:  # the scenes named are the ones wanted
        args.n = len(scene_names(args)) if args.scenes else DEFAULT_PAIRS
    require_writable(parser, "--out-dir", args.out_dir, make_parents=True, is_folder=True)


def collect_pairs(args) -> tuple[list[calibration.StereoPair], str]:
    size = (args.height, args.width)
    if args.synthetic is not None:
        return calibration.synthetic_pairs(args.synthetic, size, args.seed), \
            f"synthetic: {args.synthetic} scenes from seed {args.seed}"
    if args.from_dir:
        pairs = calibration.import_pairs(args.from_dir, size, limit=args.n)
        if len(pairs) < args.n:
            print(f"note: {args.from_dir} holds {len(pairs)} pairs, fewer than --n {args.n}")
        return pairs, f"local: {Path(args.from_dir).resolve()}"
    scenes = scene_names(args)
    if len(scenes) < args.n:
        raise calibration.CalibrationDataError(f"--n {args.n} asks for more pairs than the {len(scenes)} scenes "
                                               "available")
    pairs = calibration.download_middlebury(args.base_url, scenes[:args.n], size, args.variant, args.timeout)
    return pairs, f"middlebury2014-{args.variant}: {args.base_url}"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    try:
        # an existing folder is refused now, not after the download
        calibration.check_replaceable(Path(args.out_dir), calibration.MANIFEST_FILE, args.force)
        pairs, source = collect_pairs(args)
        out_dir = calibration.write_pair_set(pairs, args.out_dir, source, force=args.force)
        written = calibration.load_pairs(out_dir, (args.height, args.width))  # read back what landed on disk
    except (FlashStereoError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} pairs of {args.width}x{args.height} to {out_dir} ({source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
