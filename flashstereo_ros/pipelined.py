"""Throughput mode: frames spread over several GPU-resident pipelines, results in submission order.

One pipeline runs its frames in order on one stream; `submit()` already lets the host stage and issue
frame N+1 while the GPU runs frame N. Several pipelines (each with its own stream, buffers and engine
execution state) also let the GPU run frame N+1's feature stage beside frame N's post stage. That
raises frames/s, not the latency of a frame: use it to process recordings or a camera faster than one
frame's latency, not to cut the delay of the newest frame (the ROS node runs one frame at a time for that).

    with PipelinedStereo.load(streams=2) as group:
        for output in group.map(pairs):     # pairs: an iterable of (left, right) uint8 images
            ...                             # output: StereoOutput, in the order of the pairs
"""
from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .depth import StereoOutput
from .errors import StereoInputError


class PipelinedStereo:
    """Round-robin over `pipelines` with up to `in_flight` frames submitted and not yet returned
    (default: two per pipeline, so each stream has its next frame queued when one finishes). Closing it
    closes the pipelines."""

    def __init__(self, pipelines, in_flight: int | None = None):
        self.pipelines = list(pipelines)
        if not self.pipelines:
            raise StereoInputError("PipelinedStereo needs at least one pipeline")
        self.in_flight = int(in_flight) if in_flight is not None else 2 * len(self.pipelines)
        if self.in_flight < 1:
            raise StereoInputError(f"in_flight must be >= 1, got {in_flight}")
        self._next = 0

    @classmethod
    def load(cls, feat_engine_path: str | Path | None = None, post_engine_path: str | Path | None = None,
             streams: int = 2, in_flight: int | None = None, **options) -> "PipelinedStereo":
        """`streams` FlashStereoPipelines of the same engines (each holds its own copy of the engines'
        device memory); options as for FlashStereoPipeline."""
        from .pipeline import FlashStereoPipeline

        if streams < 1:
            raise StereoInputError(f"streams must be >= 1, got {streams}")
        pipelines = []
        try:
            for _ in range(streams):
                pipelines.append(FlashStereoPipeline(feat_engine_path, post_engine_path, **options))
        except Exception:
            for pipe in pipelines:
                pipe.close()
            raise
        return cls(pipelines, in_flight)

    def submit(self, left: np.ndarray, right: np.ndarray, **options):
        """Issue a frame on the next pipeline; returns its pending frame (`result()` waits for it)."""
        pipe = self.pipelines[self._next]
        self._next = (self._next + 1) % len(self.pipelines)
        return pipe.submit(left, right, **options)

    def map(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]], **options) -> Iterator[StereoOutput]:
        """The outputs of `pairs`, in order, with up to `in_flight` frames issued ahead (options as for
        process(), the same for every frame). A pair that cannot be submitted (bad input) raises after the
        outputs of the pairs before it; a frame that fails on the device raises in its place."""
        pending: collections.deque = collections.deque()
        for left, right in pairs:
            try:
                frame = self.submit(left, right, **options)
            except Exception:
                while pending:
                    yield pending.popleft().result()
                raise
            pending.append(frame)
            if len(pending) >= self.in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        for pipe in self.pipelines:
            pipe.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
