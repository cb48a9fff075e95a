"""The README's demo command, run as a user would."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

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


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """A JPEG with an EXIF APP1 segment holding only the Orientation tag (0x0112, SHORT)."""
    ifd = (b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01\x03\x00\x01\x00\x00\x00"
           + orientation.to_bytes(2, "little") + b"\x00\x00" + b"\x00\x00\x00\x00")
    payload = b"Exif\x00\x00" + ifd
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_images_are_used_as_stored_whatever_their_exif_orientation(tmp_path):
    """Rectified pixels are not to be turned: a tag on one image would break the pair's geometry."""
    from flashstereo_ros.tools.demo import read_rgb

    image = cv2.imread(str(ROOT / "assets" / "example_left.png"))[:48, :64]
    ok, jpeg = cv2.imencode(".jpg", image)
    plain, rotated = tmp_path / "plain.jpg", tmp_path / "rotated.jpg"
    plain.write_bytes(jpeg.tobytes())
    rotated.write_bytes(with_exif_orientation(jpeg.tobytes(), 6))  # 90 degrees: 48x64 would come back 64x48
    assert cv2.imread(str(rotated)).shape[:2] == (64, 48)  # what OpenCV does unless told otherwise
    assert (read_rgb(rotated) == read_rgb(plain)).all()


def test_the_raw_disparity_goes_to_the_exact_path_given(tmp_path):
    result = run([sys.executable, "-m", "flashstereo_ros.tools.demo", "--device", "cpu", "--out", "c.png",
                  "--save-disparity", "raw.bin"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "raw.bin.npy").exists() and "and raw.bin" in result.stdout
    disparity = np.load(tmp_path / "raw.bin")  # a plain float32 array: no pickle
    assert disparity.shape == (480, 640) and disparity.dtype == np.float32
