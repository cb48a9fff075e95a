"""The README's demo command, run as a user would."""
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]


def run(args, cwd):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_demo_on_bundled_defaults_writes_a_png(tmp_path):
    result = run([sys.executable, str(ROOT / "examples" / "single_pair_demo.py"), "--out", "disp_color.png"], tmp_path)
    assert result.returncode == 0, result.stderr
    image = cv2.imread(str(tmp_path / "disp_color.png"))
    assert image is not None and image.shape[0] == 480 and image.shape[1] >= 640
    assert "error vs ground truth: MAE" in result.stdout
    mae = float(result.stdout.split("MAE ")[1].split(" px")[0])
    assert mae < 1.0


def test_demo_with_a_missing_image_says_so(tmp_path):
    result = run([sys.executable, "-m", "flashstereo_ros.tools.demo", "--left", "nope.png", "--right", "nope.png"],
                 tmp_path)
    assert result.returncode == 2
    assert "cannot read image nope.png" in result.stderr
