"""One loaded engine pair per (models, device, backend) in a process, shared by every node that asks.

Several stereo nodes in one process (one per camera pair) then share one CUDA context and one set of
engines and buffers. A pipeline runs one frame at a time, so each entry carries its own lock; nodes with
different models run concurrently.
"""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from .pipelines import create_pipeline, resolve_device


@dataclasses.dataclass
class SharedPipeline:
    key: tuple
    pipeline: Any
    lock: threading.Lock
    users: int = 0
    warmed: bool = False  # one warm-up frame per pipeline, whichever node runs it


_entries: dict[tuple, SharedPipeline] = {}
_entries_lock = threading.Lock()


def pipeline_key(feat_engine: str | None, post_engine: str | None, device: str, backend: str | None) -> tuple:
    """Resolved model paths, device ('auto' resolved) and backend: equal keys can share one pipeline."""
    feat = str(Path(feat_engine).expanduser().resolve()) if feat_engine else ""
    post = str(Path(post_engine).expanduser().resolve()) if post_engine else ""
    return feat, post, resolve_device(device, feat_engine or None, backend or None), backend or ""


def acquire(feat_engine: str | None, post_engine: str | None, device: str = "auto",
            backend: str | None = None) -> SharedPipeline:
    """The shared pipeline for these models, loaded on first use; pair every acquire with a release."""
    key = pipeline_key(feat_engine, post_engine, device, backend)
    with _entries_lock:  # loading under the lock: a second node waits for, then shares, the first load
        entry = _entries.get(key)
        if entry is None:
            pipeline = create_pipeline(feat_engine or None, post_engine or None, device=key[2],
                                       backend=backend or None)
            entry = _entries[key] = SharedPipeline(key, pipeline, threading.Lock())
        entry.users += 1
        return entry


def release(entry: SharedPipeline) -> None:
    """Drop one user; the last one closes the pipeline (frees the engines and buffers)."""
    with _entries_lock:
        entry.users -= 1
        if entry.users > 0 or _entries.get(entry.key) is not entry:
            return
        del _entries[entry.key]
    with entry.lock:
        close = getattr(entry.pipeline, "close", None)
        if close is not None:
            close()


def loaded() -> list[SharedPipeline]:
    with _entries_lock:
        return list(_entries.values())
