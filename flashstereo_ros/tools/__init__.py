"""Command-line tools. The argument checks they share, so that bad arguments fail before any work."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def at_least(minimum: int):
    """argparse type: an integer no smaller than `minimum`."""
    def integer(text: str) -> int:
        value = int(text)  # ValueError: argparse reports "invalid integer value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return integer


def require_writable(parser: argparse.ArgumentParser, option: str, path: str | Path,
                     make_parents: bool = False, is_folder: bool = False) -> None:
    """parser.error unless `path` can be written: a file (or with is_folder, a folder) that is not already
    something else, whose folder exists (or, for tools that make missing folders, its nearest existing
    ancestor does) and takes a test file."""
    path = Path(path)
    if path.exists() and path.is_dir() != is_folder:
        parser.error(f"{option} {path}: there is a {'file' if is_folder else 'folder'} of that name")
    folder = path.absolute().parent
    while make_parents and not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        parser.error(f"{option} {path}: {folder} is not an existing folder")
    try:
        with tempfile.TemporaryFile(dir=folder):  # a real write: os.access() says yes to root on read-only mounts
            pass
    except OSError as exc:
        parser.error(f"{option} {path}: cannot write in {folder} ({exc.strerror})")
