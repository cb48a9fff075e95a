"""Calibration data for the INT8 builds: stereo pair sets on disk, and post_runner input tensors (.npz).

Pair set layout (the Middlebury 2014 per-scene layout, resized by the download tool to --height x --width,
which must be the engine size):

    <dir>/<scene>/im0.png   left, RGB PNG, H x W of the engine
    <dir>/<scene>/im1.png   right, same size
    <dir>/calib_pairs.json  manifest: size, source, scenes, sha256 of every file

Sources: the Middlebury 2014 datasets over HTTP (`<base>/datasets/<Scene>-perfect/im0.png`), a local copy
in the same layout (any folder of scene folders holding im0.png and im1.png), or synthetic scenes with
known disparity (synthetic.make_scene) where nothing can be downloaded.

Post calibration data: one `<scene>.npz` per pair holding exactly the post_runner inputs (the six feature
outputs and gwc_volume, in the post engine's shapes and dtypes), read back with allow_pickle=False.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import cv2
import numpy as np

from . import synthetic
from .contract import TensorSpec
from .errors import FlashStereoError

MIDDLEBURY_2014_URL = "https://vision.middlebury.edu/stereo/data/scenes2014"
# The 23 Middlebury 2014 scenes with ground truth, each as <Scene>-perfect and <Scene>-imperfect.
MIDDLEBURY_2014_SCENES = (
    "Adirondack", "Backpack", "Bicycle1", "Cable", "Classroom1", "Couch", "Flowers", "Jadeplant", "Mask",
    "Motorcycle", "Piano", "Pipes", "Playroom", "Playtable", "Recycle", "Shelves", "Shopvac", "Sticks",
    "Storage", "Sword1", "Sword2", "Umbrella", "Vintage",
)
MIDDLEBURY_VARIANTS = ("perfect", "imperfect")
LEFT_FILE, RIGHT_FILE = "im0.png", "im1.png"
MANIFEST_FILE = "calib_pairs.json"
MANIFEST_FORMAT = "flashstereo-calib-pairs"
POST_MANIFEST_FILE = "post_calib.json"
POST_MANIFEST_FORMAT = "flashstereo-post-calib"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 128 << 20  # a full-size Middlebury 2014 PNG is ~10-20 MB
SYNTHETIC_KINDS = synthetic.SCENES
SCENE_NAME = re.compile(r"[A-Za-z0-9_-]+")


class CalibrationDataError(FlashStereoError, ValueError):
    """Calibration data that is missing, malformed, or does not fit the model being quantized."""


@dataclasses.dataclass
class StereoPair:
    """One calibration or evaluation pair: RGB uint8 images of one size, and where they came from."""

    name: str
    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray | None = None  # ground truth, when known (synthetic pairs)
    valid: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.left.shape[0], self.left.shape[1]

    def digest(self) -> str:
        """sha256 of both images' pixels: the identity used to keep evaluation pairs out of calibration."""
        digest = hashlib.sha256()
        for image in (self.left, self.right):
            digest.update(repr(image.shape).encode())
            digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- sources

def middlebury_url(base_url: str, scene: str, image: str, variant: str = "perfect") -> str:
    """URL of one Middlebury 2014 image, e.g. <base>/datasets/Adirondack-perfect/im0.png."""
    return f"{base_url.rstrip('/')}/datasets/{scene}-{variant}/{image}"


def fetch(url: str, timeout: float = 60.0, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """GET one file; CalibrationDataError naming the URL on HTTP errors, truncation or oversize."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise CalibrationDataError(f"download failed: {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CalibrationDataError(f"cannot download {url}: {reason} (offline? use --from-dir with a local "
                                   "copy, or --synthetic N)") from exc
    if len(data) > max_bytes:
        raise CalibrationDataError(f"{url} is larger than {max_bytes >> 20} MiB; not an image of this dataset")
    if expected is not None and expected.isdigit() and int(expected) != len(data):
        raise CalibrationDataError(f"{url}: truncated download ({len(data)} of {expected} bytes)")
    return data


def decode_png(data: bytes, what: str) -> np.ndarray:
    """RGB uint8 image from PNG bytes; CalibrationDataError naming `what` when they are not a PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise CalibrationDataError(f"{what} is not a PNG file ({len(data)} bytes, starts with {data[:8]!r})")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise CalibrationDataError(f"{what} is a corrupt PNG (cannot be decoded)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_png(path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CalibrationDataError(f"cannot read {path}: {exc}") from exc
    return decode_png(data, str(path))


def resize_pair(left: np.ndarray, right: np.ndarray, size: tuple[int, int], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Both images at size=(H, W): area averaging when shrinking (a camera at that resolution), else bilinear."""
    if left.shape != right.shape:
        raise CalibrationDataError(f"pair '{name}': left image is {left.shape[1]}x{left.shape[0]} but right image "
                                   f"is {right.shape[1]}x{right.shape[0]}; a rectified pair has one size")
    height, width = size
    if left.shape[:2] == (height, width):
        return left, right
    shrink = left.shape[0] >= height and left.shape[1] >= width
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return tuple(cv2.resize(image, (width, height), interpolation=method) for image in (left, right))


def download_middlebury(base_url: str, scenes: Iterable[str], size: tuple[int, int], variant: str = "perfect",
                        timeout: float = 60.0, log=print) -> list[StereoPair]:
    """Fetch im0/im1 of each scene, verify they decode and agree in size, resize to size=(H, W)."""
    pairs = []
    for scene in scenes:
        if not SCENE_NAME.fullmatch(scene):
            raise CalibrationDataError(f"'{scene}' is not a Middlebury scene name (letters, digits, '_' and '-')")
        images = []
        for image in (LEFT_FILE, RIGHT_FILE):
            url = middlebury_url(base_url, scene, image, variant)
            data = fetch(url, timeout)
            images.append(decode_png(data, url))
        left, right = resize_pair(images[0], images[1], size, scene)
        log(f"{scene}: {images[0].shape[1]}x{images[0].shape[0]} -> {size[1]}x{size[0]}")
        pairs.append(StereoPair(scene, left, right))
    return pairs


def scene_folders(folder: Path) -> list[Path]:
    """Sub-folders of `folder` that hold a pair (im0.png); CalibrationDataError when one lacks im1.png."""
    if not folder.is_dir():
        raise CalibrationDataError(f"calibration folder {folder} does not exist")
    scenes = sorted(p for p in folder.iterdir() if p.is_dir() and (p / LEFT_FILE).is_file())
    for scene in scenes:
        if not (scene / RIGHT_FILE).is_file():
            raise CalibrationDataError(f"{scene} has {LEFT_FILE} but no {RIGHT_FILE}")
    return scenes


def import_pairs(folder: str | Path, size: tuple[int, int], limit: int | None = None, log=print) -> list[StereoPair]:
    """Pairs from a local folder in the Middlebury layout (<scene>/im0.png, im1.png), resized to size."""
    folder = Path(folder)
    scenes = scene_folders(folder)
    if not scenes:
        raise CalibrationDataError(f"no stereo pairs in {folder}: expected <scene>/{LEFT_FILE} and "
                                   f"<scene>/{RIGHT_FILE} (e.g. a Middlebury 2014 download)")
    pairs = []
    for scene in scenes[:limit]:
        left, right = read_png(scene / LEFT_FILE), read_png(scene / RIGHT_FILE)
        name = scene.name.removesuffix("-perfect").removesuffix("-imperfect")
        left_small, right_small = resize_pair(left, right, size, str(scene))
        log(f"{scene.name}: {left.shape[1]}x{left.shape[0]} -> {size[1]}x{size[0]}")
        pairs.append(StereoPair(name, left_small, right_small))
    return pairs


def synthetic_pairs(count: int, size: tuple[int, int], seed: int = 0) -> list[StereoPair]:
    """`count` synthetic scenes with ground truth, kinds in turn, seeds seed, seed+1, ..."""
    if count < 1:
        raise CalibrationDataError(f"the number of synthetic pairs must be at least 1, got {count}")
    pairs = []
    for index in range(count):
        kind = SYNTHETIC_KINDS[index % len(SYNTHETIC_KINDS)]
        scene = synthetic.make_scene(kind, size[0], size[1], seed=seed + index)
        pairs.append(StereoPair(f"synthetic_{kind}_{seed + index:04d}", scene.left, scene.right,
                                scene.disparity, scene.valid))
    return pairs


# ----------------------------------------------------------------------------------------- pair sets

def check_replaceable(out_dir: Path, manifest_name: str, force: bool) -> None:
    """Refuse to overwrite anything without force, and never delete a folder this tool did not write."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise CalibrationDataError(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not force:
        raise CalibrationDataError(f"{out_dir} already holds calibration data; pass --force to replace it")
    if not (out_dir / manifest_name).is_file():
        raise CalibrationDataError(f"{out_dir} is not empty and has no {manifest_name}: it was not written by "
                                   "this tool, so it is not deleted even with --force; choose another folder")
    written = _manifest_files(out_dir / manifest_name)
    if written is None:
        raise CalibrationDataError(f"{out_dir / manifest_name} is not a manifest this tool wrote: {out_dir} is not "
                                   "deleted even with --force; choose another folder")
    others = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")
                    if p.is_file() and str(p.relative_to(out_dir)) not in written | {manifest_name})
    if others:
        raise CalibrationDataError(f"{out_dir} also holds files this tool did not write ({', '.join(others[:5])}"
                                   f"{', ...' if len(others) > 5 else ''}): move them, or choose another folder")


def _manifest_files(manifest: Path) -> set[str] | None:
    """The files (relative paths) a manifest says its tool wrote; None when it is not such a manifest."""
    try:
        data = json.loads(manifest.read_text())
        if data.get("format") == MANIFEST_FORMAT:
            return {str(name) for name in data["sha256"]}
        if data.get("format") == POST_MANIFEST_FORMAT:
            return {f"{name}.npz" for name in data["samples"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _staging_folder(out_dir: Path) -> Path:
    """An empty sibling of out_dir to write into before moving it into place (made with the user's umask);
    the staging folders of runs that were killed (their process is gone) are removed first."""
    prefix = f".{out_dir.name}.partial-"
    if out_dir.parent.is_dir():
        for left_over in out_dir.parent.glob(prefix + "*"):
            pid = left_over.name[len(prefix):]
            if left_over.is_dir() and pid.isdigit() and (int(pid) == os.getpid() or not _process_alive(int(pid))):
                shutil.rmtree(left_over, ignore_errors=True)
    staging = out_dir.parent / f"{prefix}{os.getpid()}"
    staging.mkdir(parents=True)
    return staging


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def spread(items: list, limit: int | None) -> list:
    """At most `limit` of items, evenly spaced (the first N of a sorted set would be one scene kind)."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[int(i * len(items) / limit)] for i in range(limit)]


def _replace_folder(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_pair_set(pairs: list[StereoPair], out_dir: str | Path, source: str, force: bool = False) -> Path:
    """Write pairs in the layout above, with a manifest; all or nothing (staged, then moved into place)."""
    out_dir = Path(out_dir)
    if not pairs:
        raise CalibrationDataError("no pairs to write")
    names = [pair.name for pair in pairs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise CalibrationDataError(f"several pairs are named {duplicates} (e.g. a scene's -perfect and -imperfect "
                                   "copies in one folder); keep one of each")
    sizes = {pair.size for pair in pairs}
    if len(sizes) != 1:
        raise CalibrationDataError(f"pairs of different sizes cannot form one calibration set: {sorted(sizes)}")
    check_replaceable(out_dir, MANIFEST_FILE, force)
    staging = _staging_folder(out_dir)
    try:
        files = {}
        for pair in pairs:
            folder = staging / pair.name
            folder.mkdir()
            for image, name in ((pair.left, LEFT_FILE), (pair.right, RIGHT_FILE)):
                path = folder / name
                if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                    raise CalibrationDataError(f"cannot write {out_dir / pair.name / name}")
                files[f"{pair.name}/{name}"] = _sha256(path)
        manifest = {"format": MANIFEST_FORMAT, "version": 1, "source": source, "size": list(sizes.pop()),
                    "scenes": [pair.name for pair in pairs], "sha256": files}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        _replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def load_pairs(folder: str | Path, size: tuple[int, int] | None = None, limit: int | None = None) -> list[StereoPair]:
    """The pairs of a calibration folder; each must decode and, when size=(H, W) is given, have that size."""
    folder = Path(folder)
    scenes = scene_folders(folder)
    if not scenes:
        raise CalibrationDataError(f"calibration folder {folder} holds no pairs (expected <scene>/{LEFT_FILE} and "
                                   f"<scene>/{RIGHT_FILE}); make them with flashstereo-download-calib")
    pairs = []
    for scene in scenes[:limit]:
        left, right = read_png(scene / LEFT_FILE), read_png(scene / RIGHT_FILE)
        if left.shape != right.shape:
            raise CalibrationDataError(f"{scene}: {LEFT_FILE} is {left.shape[1]}x{left.shape[0]} but {RIGHT_FILE} is "
                                       f"{right.shape[1]}x{right.shape[0]}")
        if size is not None and left.shape[:2] != tuple(size):
            raise CalibrationDataError(
                f"{scene / LEFT_FILE} is {left.shape[1]}x{left.shape[0]} but the model takes {size[1]}x{size[0]}; "
                f"make the calibration set at the engine size (flashstereo-download-calib --height {size[0]} "
                f"--width {size[1]})")
        pairs.append(StereoPair(scene.name, left, right))
    return pairs


# ------------------------------------------------------------------------------ post calibration data

def write_post_samples(samples: Iterable[tuple[str, Mapping[str, np.ndarray]]], out_dir: str | Path,
                       source: Mapping, force: bool = False) -> list[Path]:
    """Write one <name>.npz per sample (post_runner input name -> array), staged, with a manifest."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir, POST_MANIFEST_FILE, force)
    staging = _staging_folder(out_dir)
    names = []
    try:
        for name, tensors in samples:
            np.savez(staging / f"{name}.npz", **{key: np.ascontiguousarray(value) for key, value in tensors.items()})
            names.append(name)
        if not names:
            raise CalibrationDataError("no post calibration samples were produced")
        manifest = {"format": POST_MANIFEST_FORMAT, "version": 1, "samples": names, **dict(source)}
        (staging / POST_MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        _replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out_dir / f"{name}.npz" for name in names]


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of each array in an .npz, read from the headers without loading the data."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    raise CalibrationDataError(f"{path} holds '{member}', which is not a numpy array")
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = reader(stream)
                headers[member[:-4]] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        if isinstance(exc, CalibrationDataError):
            raise
        raise CalibrationDataError(f"{path} is not a readable .npz archive: {exc}") from exc
    return headers


def check_post_samples(npz_dir: str | Path, expected: Mapping[str, TensorSpec]) -> list[Path]:
    """The .npz files of a folder, each checked to hold exactly the post_runner inputs in their shapes and dtypes."""
    npz_dir = Path(npz_dir)
    if not npz_dir.is_dir():
        raise CalibrationDataError(f"post calibration folder {npz_dir} does not exist")
    paths = sorted(npz_dir.glob("*.npz"))
    if not paths:
        raise CalibrationDataError(f"{npz_dir} holds no .npz files; make them with flashstereo-gen-post-calib")
    for path in paths:
        headers = npz_headers(path)
        missing = sorted(set(expected) - set(headers))
        unexpected = sorted(set(headers) - set(expected))
        if missing or unexpected:
            raise CalibrationDataError(f"{path} does not hold the post_runner inputs: missing {missing}, "
                                       f"unexpected {unexpected} (expected exactly {sorted(expected)})")
        for name, (shape, dtype) in headers.items():
            spec = expected[name]
            if dtype.hasobject:
                raise CalibrationDataError(f"{path}: '{name}' holds Python objects; only numeric arrays are read")
            if shape != tuple(spec.shape) or dtype != spec.dtype:
                raise CalibrationDataError(f"{path}: '{name}' is {dtype} {shape} but the post_runner input is "
                                           f"{spec.dtype} {tuple(spec.shape)} (made for another engine size?)")
    return paths


def iter_post_samples(paths: Iterable[Path]) -> Iterator[dict[str, np.ndarray]]:
    """Load the checked .npz files one at a time (never with pickle)."""
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as archive:
                sample = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # damaged after the header check
            raise CalibrationDataError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); generate it again "
                                       "(flashstereo-gen-post-calib --force)") from exc
        yield sample
