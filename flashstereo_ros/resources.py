"""Where the package's files are: bundled models, sample assets, kernel sources, configs.

The same lookup serves a source checkout (editable pip install, colcon --symlink-install), a pip
install (data files under <prefix>/share/flashstereo_ros) and a colcon install (ament share folder).
"""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = "flashstereo_ros"
PACKAGE_DIR = Path(__file__).resolve().parent
MODELS_DIR = PACKAGE_DIR / "data" / "models"
DEFAULT_MODEL_SIZE = (480, 640)


@lru_cache(maxsize=None)
def share_dirs() -> tuple[Path, ...]:
    """Folders that may hold launch/, config/, kernels/, assets/: checkout first, then installs."""
    candidates = [PACKAGE_DIR.parent, Path(sys.prefix) / "share" / PACKAGE]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # not a ROS install, or the package is not registered with ament
        pass
    return tuple(dict.fromkeys(c for c in candidates if c.is_dir()))


def share_file(*parts: str) -> Path:
    """The first existing share_dirs()/parts; FileNotFoundError naming where it looked."""
    for base in share_dirs():
        path = base.joinpath(*parts)
        if path.exists():
            return path
    looked = ", ".join(str(b) for b in share_dirs()) or "(no share folder found)"
    raise FileNotFoundError(f"{'/'.join(parts)} is not installed with {PACKAGE} (looked in {looked})")


def model_dir(height: int = DEFAULT_MODEL_SIZE[0], width: int = DEFAULT_MODEL_SIZE[1]) -> Path:
    """Folder of the bundled stand-in model for an engine size."""
    return MODELS_DIR / f"standin_{height}x{width}"


def bundled_models(suffix: str = ".onnx", size: tuple[int, int] = DEFAULT_MODEL_SIZE) -> tuple[Path, Path]:
    """(feature_runner, post_runner) paths of the bundled stand-in model with the given suffix."""
    folder = model_dir(*size)
    return folder / f"feature_runner{suffix}", folder / f"post_runner{suffix}"


def asset(name: str) -> Path:
    return share_file("assets", name)
