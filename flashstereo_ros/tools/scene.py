"""flashstereo-make-scene: write a synthetic rectified pair with ground truth and camera parameters."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from .. import synthetic
from . import at_least, require_writable

DISPARITY_PNG_SCALE = 256.0  # KITTI convention: uint16 = disparity * 256, 0 = no ground truth


def write_image(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):  # OpenCV says False rather than raising
        raise OSError(f"cannot write {path}")


def write_disparity_png(path: Path, disparity: np.ndarray, valid: np.ndarray) -> None:
    encoded = np.clip(np.rint(disparity * DISPARITY_PNG_SCALE), 1, 65535).astype(np.uint16)
    encoded[~valid] = 0
    write_image(path, encoded)


def read_disparity_png(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(disparity float32, valid bool) from a KITTI-style 16-bit PNG."""
    encoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if encoded is None or encoded.dtype != np.uint16 or encoded.ndim != 2:
        raise ValueError(f"{path} is not a 16-bit single-channel disparity PNG")
    return encoded.astype(np.float32) / DISPARITY_PNG_SCALE, encoded > 0


def camera_yaml(scene: synthetic.StereoScene) -> dict:
    """CameraInfo-style parameters of a rectified pair (right P carries -f*B in P[0,3])."""
    h, w = scene.disparity.shape
    f, cx, cy = scene.focal_px, (w - 1) / 2.0, (h - 1) / 2.0
    k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    return {
        "image_width": w, "image_height": h, "focal_px": f, "baseline_m": scene.baseline_m,
        "left": {"K": k, "P": [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]},
        "right": {"K": k, "P": [f, 0.0, cx, -f * scene.baseline_m, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]},
    }


def scene_paths(out_dir: Path, prefix: str) -> list[Path]:
    return [out_dir / f"{prefix}_{name}" for name in ("left.png", "right.png", "disp_gt.png", "camera.yaml")]


def write_scene(scene: synthetic.StereoScene, out_dir: Path, prefix: str = "example") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = scene_paths(out_dir, prefix)
    write_image(paths[0], cv2.cvtColor(scene.left, cv2.COLOR_RGB2BGR))
    write_image(paths[1], cv2.cvtColor(scene.right, cv2.COLOR_RGB2BGR))
    write_disparity_png(paths[2], scene.disparity, scene.valid)
    paths[3].write_text("# Rectified stereo camera of the sample pair (CameraInfo-style; P is row-major 3x4)\n"
                        + yaml.safe_dump(camera_yaml(scene), sort_keys=False))
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render a synthetic stereo pair with ground-truth disparity.")
    parser.add_argument("--kind", choices=synthetic.SCENES, default="mixed")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--out-dir", default="scene")
    parser.add_argument("--prefix", default="example", help="file name prefix (no folders: files stay in --out-dir)")
    parser.add_argument("--force", action="store_true", help="overwrite the files of an earlier scene")
    args = parser.parse_args(argv)
    if os.sep in args.prefix or (os.altsep and os.altsep in args.prefix):
        parser.error(f"--prefix {args.prefix!r} must be a plain file name prefix, without path separators")
    require_writable(parser, "--out-dir", args.out_dir, make_parents=True, is_folder=True)
    existing = [str(path) for path in scene_paths(Path(args.out_dir), args.prefix) if path.exists()]
    if existing and not args.force:
        parser.error(f"{', '.join(existing)} exist: pass --force to overwrite them, or choose another --out-dir "
                     "or --prefix")
    try:
        scene = synthetic.make_scene(args.kind, args.height, args.width, args.seed)
    except ValueError as exc:  # the size is checked first, before any rendering
        parser.error(str(exc))
    try:
        paths = write_scene(scene, Path(args.out_dir), args.prefix)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
