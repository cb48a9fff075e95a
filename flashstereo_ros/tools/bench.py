"""flashstereo-bench: stock vs GPU-resident latency, stage breakdown, traffic and agreement, in one run.

    flashstereo-bench --feat F --post P [--left L --right R] --reps 50
    flashstereo-bench --sweep --feat-fp16 A --feat-int8 B --post-fp16 C --post-int8 D
    flashstereo-bench ... --kernels --memory-frames 1000 --pipelined      (GPU extras)
    flashstereo-bench ... --depth-points                                  (depth + point cloud cost)

Every configuration runs every pipeline on the same rotating inputs after a warm-up. Latency is host
wall-clock per frame (image in, disparity out); stage times come from the pipelines (CUDA events on the
GPU). Each row reports median and tail percentiles, throughput, the speed-up over the stock pipeline
measured in the same run, the disparity's agreement with the first configuration's first pipeline (the
FP16 stock output in a sweep), and the error against ground truth when the inputs are synthetic scenes.
GPU extras: the norm and GWC kernels alone against the measured device-to-device copy bandwidth, device
memory over many frames, and throughput with frames in flight on one and on several streams. Without a
GPU it benchmarks the CPU pipeline (ONNX Runtime), so the tool runs anywhere.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from .. import contract, synthetic
from ..depth import StereoCamera
from ..errors import FlashStereoError
from ..metrics import AgreementAccumulator
from ..pipelines import DEVICES, default_models, resolve_device
from . import at_least, require_writable
from .demo import BAD_PIXEL_THRESHOLD, read_rgb

PERCENTILES = (50, 90, 99)
PIPELINES = ("stock", "flash", "flash+graph", "cpu")
ENGINE_STAGES = ("feature", "post")
FLOOR_KERNEL_STAGES = ("preprocess", "norm", "gwc", "postprocess")  # the GPU-resident frame's own kernels
KERNEL_BATCH = 20  # back-to-back launches per event pair, so the host launch gap stays hidden
COPY_BYTES = 256 * 2**20
THROUGHPUT_REPEATS = 3  # runs per throughput figure (median)
ROTATED_SETS = 4  # buffer sets the kernels rotate over in their DRAM-bound timing (4 x 66 MB > the L2)
STAGE_ORDER = ("preprocess", "h2d", "feature", "d2h_features", "norm", "cast", "h2d_features", "gwc", "d2h_volume",
               "h2d_post", "post", "postprocess", "depth_points", "d2h", "total")


@dataclasses.dataclass
class Inputs:
    pairs: list[tuple[np.ndarray, np.ndarray]]
    truth: list[synthetic.StereoScene | None]  # ground truth where the pair is synthetic


@dataclasses.dataclass
class Row:
    config: str
    pipeline: str
    latency_ms: dict[str, float]
    hz: float
    stages_ms: dict[str, float]
    traffic: dict[str, int]
    memory: dict[str, int]
    overhead_ms: float | None = None  # latency minus the engines' own time
    speedup: float | None = None
    agreement: dict | None = None
    accuracy: dict | None = None


def make_inputs(args, size: tuple[int, int]) -> Inputs:
    """The user's pair, or synthetic scenes at the engine size (rotated per frame, with ground truth)."""
    if args.left or args.right:
        if not (args.left and args.right):
            raise FlashStereoError("give both --left and --right")
        return Inputs([(read_rgb(args.left), read_rgb(args.right))], [None])
    scenes = [synthetic.make_scene(synthetic.SCENES[i % len(synthetic.SCENES)], size[0], size[1], seed=100 + i)
              for i in range(args.pairs)]
    return Inputs([(s.left, s.right) for s in scenes], scenes)


def make_pipeline(kind: str, feat: str, post: str, backend: str | None):
    if kind == "cpu":
        from ..cpu_pipeline import CpuStereoPipeline

        return CpuStereoPipeline(feat, post, backend=backend)
    if kind == "stock":
        from ..stock import StockPipeline

        return StockPipeline(feat, post, backend=backend)
    if kind not in ("flash", "flash+graph"):
        raise FlashStereoError(f"unknown pipeline '{kind}'; choose from {PIPELINES}")
    from ..pipeline import FlashStereoPipeline

    return FlashStereoPipeline(feat, post, backend=backend, use_cuda_graph=(kind == "flash+graph"))


def measure(pipe, inputs: Inputs, reps: int, warmup: int):
    """Wall-clock latency per frame, per-stage medians, and one output per input pair."""
    pairs = inputs.pairs
    for i in range(warmup):
        pipe.infer(*pairs[i % len(pairs)])
    latencies, stages = [], {}
    for i in range(reps):
        left, right = pairs[i % len(pairs)]
        start = time.perf_counter()
        pipe.infer(left, right)
        latencies.append((time.perf_counter() - start) * 1e3)
        for stage, ms in pipe.timings.items():
            stages.setdefault(stage, []).append(ms)
    outputs = [pipe.infer(*pair) for pair in pairs]
    return np.array(latencies), {k: float(np.median(v)) for k, v in stages.items()}, outputs


def agreement(outputs, reference) -> dict:
    pooled = AgreementAccumulator()
    for out, ref in zip(outputs, reference):
        pooled.add(out, ref)
    return pooled.result()


def accuracy(outputs, truth) -> dict | None:
    scenes = [(out, s) for out, s in zip(outputs, truth) if s is not None]
    if not scenes:
        return None
    errors = np.concatenate([np.abs(out - s.disparity)[s.valid] for out, s in scenes])
    return {"mae_px": float(errors.mean()), "within_3px": float((errors <= BAD_PIXEL_THRESHOLD).mean())}


def bench_config(label, feat, post, kinds, inputs, args, reference):
    """Rows for one (feat, post) configuration; returns them and the reference outputs for later rows."""
    rows = []
    for kind in kinds:
        pipe = make_pipeline(kind, feat, post, args.backend)
        try:
            lat, stages, outputs = measure(pipe, inputs, args.reps, args.warmup)
            traffic, memory = dict(getattr(pipe, "traffic", {}) or {}), pipe.memory_bytes()
        finally:
            pipe.close()
        reference = reference if reference is not None else outputs
        pct = {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(lat, PERCENTILES))}
        engines = sum(stages.get(s, 0.0) for s in ENGINE_STAGES)
        rows.append(Row(label, kind, pct, 1e3 / pct["p50"], stages, traffic, memory,
                        overhead_ms=pct["p50"] - engines if engines else None,
                        agreement=agreement(outputs, reference), accuracy=accuracy(outputs, inputs.truth)))
    stock = next((r for r in rows if r.pipeline == "stock"), None)
    for row in rows:
        row.speedup = stock.latency_ms["p50"] / row.latency_ms["p50"] if stock else None
    return rows, reference


def kernel_roofline(feat: str, post: str, backend: str | None, reps: int) -> dict:
    """The norm and GWC kernels alone (CUDA events, medians) against a large device-to-device copy.

    Each kernel is timed twice: over one set of buffers (as a frame runs it: its inputs were just written,
    and the 50 MB L2 of an H100 holds much of them) and rotating over ROTATED_SETS sets (together larger
    than the L2, so every byte comes from and goes to DRAM, like the 256 MiB copy)."""
    from .. import cuda, gwc, kernels
    from ..engines import load_engine_pair
    from ..runners import DEVICE

    stream = cuda.Stream()
    engines = load_engine_pair(feat, post, backend, DEVICE, stream=stream.ptr)
    geo = engines.geometry
    engines.close()
    rng = np.random.default_rng(0)
    spec = geo.feature_outputs[contract.FEATURES_LEFT_04]
    group_channels = spec.shape[1] // geo.groups
    norm_kernel = kernels.GroupNormKernel(group_channels, spec.dtype)
    gwc_kernel = kernels.GwcKernel(group_channels, geo.disparities, geo.volume_dtype)
    # the exact (channel-order) kernel beside the tensor-core default, for the ratio in the same run
    exact_kernel = (kernels.GwcKernel(group_channels, geo.disparities, geo.volume_dtype, variant="pipelined")
                    if gwc_kernel.variant == "tensor" else None)
    height, width = spec.shape[2], spec.shape[3]
    sets = []
    for _ in range(ROTATED_SETS):
        feats = []
        for _ in range(2):
            buf = cuda.DeviceBuffer(spec.shape, spec.dtype)
            buf.upload(rng.standard_normal(spec.shape).astype(spec.dtype))
            feats.append(buf)
        normed = [cuda.DeviceBuffer(spec.shape, np.float16) for _ in range(2)]
        volume = cuda.DeviceBuffer(geo.post_inputs[contract.GWC_VOLUME].shape, geo.volume_dtype)
        item = {"norm": norm_kernel.prepare(*feats, *normed, geo.groups, height * width),
                "gwc": gwc_kernel.prepare(*normed, volume, geo.groups, height, width),
                "normed": normed, "volume": volume,
                "norm_bytes": 2 * feats[0].nbytes + 2 * normed[0].nbytes,
                "gwc_bytes": 2 * normed[0].nbytes + volume.nbytes}
        if exact_kernel:
            item["gwc_exact"] = exact_kernel.prepare(*normed, volume, geo.groups, height, width)
        sets.append(item)
    for item in sets:  # every set's volume input holds normalised features
        item["norm"].run(stream)
    copy_src, copy_dst = cuda.DeviceBuffer((COPY_BYTES,), np.uint8), cuda.DeviceBuffer((COPY_BYTES,), np.uint8)

    def copy(s, i):
        copy_dst.copy_from_device_async(copy_src, s)

    def launch_of(key, rotate):
        return lambda s, i: sets[i % ROTATED_SETS if rotate else 0][key].run(s)

    launches = {  # name -> (launch(stream, i), bytes that must move: each input read once, each output written once)
        "device copy": (copy, 2 * COPY_BYTES),
        "group_norm (L+R)": (launch_of("norm", False), sets[0]["norm_bytes"]),
        "gwc_volume": (launch_of("gwc", False), sets[0]["gwc_bytes"]),
        "group_norm (L+R), rotating": (launch_of("norm", True), sets[0]["norm_bytes"]),
        "gwc_volume, rotating": (launch_of("gwc", True), sets[0]["gwc_bytes"]),
    }
    if exact_kernel:
        launches["gwc_volume exact (pipelined)"] = (launch_of("gwc_exact", False), sets[0]["gwc_bytes"])
        launches["gwc_volume exact (pipelined), rotating"] = (launch_of("gwc_exact", True), sets[0]["gwc_bytes"])
    start, end = cuda.Event(), cuda.Event()
    result = {}
    for name, (launch, nbytes) in launches.items():
        times = []
        for _ in range(reps):
            start.record(stream)
            for i in range(KERNEL_BATCH):
                launch(stream, i)
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_ms(end) / KERNEL_BATCH)
        ms = float(np.median(times[reps // 10:]))
        result[name] = {"median_us": ms * 1e3, "bytes": nbytes, "GB_per_s": nbytes / ms / 1e6}
    copy_rate = result["device copy"]["GB_per_s"]
    for name in launches:
        if name != "device copy":
            result[name]["fraction_of_copy"] = result[name]["GB_per_s"] / copy_rate
    left, right = sets[0]["normed"][0].download(stream), sets[0]["normed"][1].download(stream)
    expect = gwc.gwc_volume(left, right, geo.groups, geo.disparities, geo.volume_dtype)
    sets[0]["gwc"].run(stream)  # the exact kernel may have written this volume last
    result["gwc_volume"].update(volume_difference(sets[0]["volume"].download(stream), expect),
                                variant=gwc_kernel.describe(width))
    return result


def transfer_floor(inputs: Inputs, reps: int) -> dict:
    """The frame's host<->device copies alone (pinned memory, CUDA events, medians): both images up, the
    float32 disparity down. With the frame's own kernel stages they bound the overhead from below."""
    from .. import cuda

    stream = cuda.Stream()
    left, right = inputs.pairs[0]
    sides = [(cuda.PinnedBuffer(img.shape, np.uint8), cuda.DeviceBuffer(img.shape, np.uint8)) for img in (left, right)]
    for (pinned, _), img in zip(sides, (left, right)):
        pinned.array[...] = img
    disparity = (cuda.DeviceBuffer(left.shape[:2], np.float32), cuda.PinnedBuffer(left.shape[:2], np.float32))
    start, end = cuda.Event(), cuda.Event()

    def timed(issue) -> float:
        times = []
        for _ in range(reps):
            start.record(stream)
            issue()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_ms(end))
        return float(np.median(times[reps // 10:]))

    try:
        upload_ms = timed(lambda: [dev.copy_from_host_async(pinned, stream) for pinned, dev in sides])
        download_ms = timed(lambda: disparity[0].copy_to_host_async(disparity[1], stream))
    finally:
        for buf in (*(b for pair in sides for b in pair), *disparity):
            buf.close()
        stream.close()
    upload_bytes, download_bytes = left.nbytes + right.nbytes, disparity[1].nbytes
    return {"upload_ms": upload_ms, "upload_bytes": upload_bytes, "upload_GB_per_s": upload_bytes / upload_ms / 1e6,
            "download_ms": download_ms, "download_bytes": download_bytes,
            "download_GB_per_s": download_bytes / download_ms / 1e6}


def overhead_floor(row: Row, copies: dict) -> dict:
    """The least overhead a frame of `row` can have: its copies at the measured PCIe rate plus the device
    work between them that is not an engine (each of which needs the step before it to finish)."""
    kernels_ms = sum(row.stages_ms.get(s, 0.0) for s in FLOOR_KERNEL_STAGES)
    floor = copies["upload_ms"] + copies["download_ms"] + kernels_ms
    engines = sum(row.stages_ms.get(s, 0.0) for s in ENGINE_STAGES)
    return {"pipeline": row.pipeline, "kernels_ms": kernels_ms, "floor_ms": floor,
            "floor_share": floor / (engines + floor), "engines_ms": engines, "overhead_ms": row.overhead_ms,
            "overhead_share": row.overhead_ms / row.latency_ms["p50"]}


def volume_difference(got: np.ndarray, expect: np.ndarray) -> dict:
    """How a kernel's volume differs from gwc.gwc_volume's: bit-identical, values that differ, largest difference."""
    diff = np.abs(got.astype(np.float64) - expect.astype(np.float64))
    return {"equals_numpy": bool(np.array_equal(got.view(np.uint8), expect.view(np.uint8))),
            "values_differing": int(np.count_nonzero(diff)), "values": int(diff.size),
            "max_abs_difference": float(diff.max()) if diff.size else 0.0}


def memory_over_frames(feat, post, backend, inputs: Inputs, frames: int, graph: bool) -> dict:
    """Device memory (driver's free bytes and the pipeline's own count) before and after many frames."""
    from .. import cuda

    pipe = make_pipeline("flash+graph" if graph else "flash", feat, post, backend)
    try:
        for pair in inputs.pairs:
            pipe.infer(*pair)
        free_before, held_before = cuda.memory_info()[0], pipe.memory_bytes()["device"]
        for i in range(frames):
            pipe.infer(*inputs.pairs[i % len(inputs.pairs)])
        free_after, held_after = cuda.memory_info()[0], pipe.memory_bytes()["device"]
    finally:
        pipe.close()
    return {"frames": frames, "held_bytes": held_after, "held_growth_bytes": held_after - held_before,
            "driver_free_drop_bytes": free_before - free_after}


def pipelined_throughput(feat, post, backend, inputs: Inputs, frames: int, graph: bool, streams: int = 2) -> dict:
    """Frames/s with frames in flight (PipelinedStereo, one host thread; median of THROUGHPUT_REPEATS runs)
    against 1/latency (median) of one pipeline running one frame at a time: first one pipeline with its
    next frame issued while the GPU runs the last (the host work hidden), then `streams` pipelines, whose
    GPU work overlaps (frame N+1's feature stage beside frame N's post stage)."""
    from ..pipelined import PipelinedStereo

    kind = "flash+graph" if graph else "flash"
    pipes = [make_pipeline(kind, feat, post, backend) for _ in range(streams)]
    group = PipelinedStereo(pipes)
    try:
        for pipe in pipes:
            for pair in inputs.pairs:
                pipe.infer(*pair)
        single_ms = measure(pipes[0], inputs, frames, warmup=0)[0]

        def rate(target: PipelinedStereo) -> float:
            """Median frames/s of THROUGHPUT_REPEATS runs of `frames` frames."""
            rates = []
            for _ in range(THROUGHPUT_REPEATS):
                pairs = (inputs.pairs[i % len(inputs.pairs)] for i in range(frames))
                start = time.perf_counter()
                count = sum(1 for _ in target.map(pairs))
                rates.append(count / (time.perf_counter() - start))
            return float(np.median(rates))

        queued_hz = rate(PipelinedStereo(pipes[:1]))
        pipelined_hz = rate(group)
    finally:
        group.close()
    latency = float(np.median(single_ms)) / 1e3
    return {"pipeline": kind, "frames": frames, "streams": streams, "latency_ms": latency * 1e3,
            "single_hz": 1.0 / latency, "queued_hz": queued_hz, "queued_ratio": queued_hz * latency,
            "pipelined_hz": pipelined_hz, "ratio": pipelined_hz * latency}


def depth_points_cost(feat, post, backend, inputs: Inputs, frames: int, kind: str) -> dict:
    """What depth + a full-resolution point cloud add to a frame: the depth_points stage (CUDA events on the
    GPU), the latency against disparity alone, and the bytes downloaded against the bytes published."""
    h, w = inputs.pairs[0][0].shape[:2]
    fx, baseline = 0.8 * w, 0.12
    camera = StereoCamera.from_projections([fx, 0, w / 2, 0, 0, fx, h / 2, 0, 0, 0, 1, 0],
                                           [fx, 0, w / 2 - 4, -fx * baseline, 0, fx, h / 2, 0, 0, 0, 1, 0], w, h)
    pipe = make_pipeline(kind, feat, post, backend)
    result = {"pipeline": kind, "frames": frames, "size": f"{w}x{h}"}
    try:
        for mode, want in (("disparity", False), ("depth+points", True)):
            def run(i):
                return pipe.process(*inputs.pairs[i % len(inputs.pairs)], camera=camera, want_depth=want,
                                    want_points=want)

            for i in range(max(3, len(inputs.pairs))):  # warm-up (and graph capture for this setup)
                run(i)
            latencies, stage = [], []
            for i in range(frames):
                start = time.perf_counter()
                out = run(i)
                latencies.append((time.perf_counter() - start) * 1e3)
                stage.append(pipe.timings["depth_points"])
            published = sum(a.nbytes for a in (out.disparity, out.depth, out.points) if a is not None)
            traffic = getattr(pipe, "traffic", None) or {}
            result[mode] = {"latency_p50_ms": float(np.median(latencies)), "depth_points_ms": float(np.median(stage)),
                            "published_bytes": published, "d2h_bytes": traffic.get("d2h")}
    finally:
        pipe.close()
    result["extra_ms"] = result["depth+points"]["latency_p50_ms"] - result["disparity"]["latency_p50_ms"]
    return result


def format_table(rows: list[Row]) -> str:
    header = ("config", "pipeline", "p50 ms", "p90 ms", "p99 ms", "Hz", "speed-up", "overhead ms", "H2D MiB",
              "D2H MiB", "device MiB", "rel L1", "max abs", "bit-identical", "MAE px", "within 3 px")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        def mib(key):
            return f"{r.traffic[key] / 2**20:.2f}" if key in r.traffic else "-"

        cells = (r.config, r.pipeline, f"{r.latency_ms['p50']:.2f}", f"{r.latency_ms['p90']:.2f}",
                 f"{r.latency_ms['p99']:.2f}", f"{r.hz:.1f}", f"{r.speedup:.2f}x" if r.speedup else "-",
                 f"{r.overhead_ms:.2f}" if r.overhead_ms is not None else "-", mib("h2d"), mib("d2h"),
                 f"{r.memory.get('device', 0) / 2**20:.0f}", f"{r.agreement['rel_l1']:.2e}",
                 f"{r.agreement['max_abs']:.3g}", "yes" if r.agreement["bit_identical"] else "no",
                 f"{r.accuracy['mae_px']:.3f}" if r.accuracy else "-",
                 f"{r.accuracy['within_3px'] * 100:.1f}%" if r.accuracy else "-")
        lines.append("| " + " | ".join(cells) + " |")
    stage_names = sorted({s for r in rows for s in r.stages_ms}, key=_stage_order)
    lines += ["", "| stage (median ms) | " + " | ".join(f"{r.config}: {r.pipeline}" for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for name in stage_names:
        lines.append(f"| {name} | " + " | ".join(f"{r.stages_ms[name]:.3f}" if name in r.stages_ms else "-"
                                                 for r in rows) + " |")
    return "\n".join(lines)


def _stage_order(name: str):
    return (STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER), name)


def format_extras(extras: dict) -> str:
    lines = []
    if "kernels" in extras:
        lines += ["", f"| kernel alone ({KERNEL_BATCH} launches per event pair) | median us | MB moved | GB/s | "
                      "of copy bandwidth |", "|---|---|---|---|---|"]
        for name, k in extras["kernels"].items():
            share = f"{k['fraction_of_copy'] * 100:.0f}%" if "fraction_of_copy" in k else "-"
            lines.append(f"| {name} | {k['median_us']:.1f} | {k['bytes'] / 1e6:.1f} | {k['GB_per_s']:.0f} | {share} |")
        gwc_row = extras["kernels"]["gwc_volume"]
        lines.append(f"GWC kernel ({gwc_row.get('variant', '?')}) on random data against numpy's channel-order sum: "
                     f"bit-identical {gwc_row['equals_numpy']}, {gwc_row.get('values_differing', 0)} of "
                     f"{gwc_row.get('values', 0)} values differ, by at most "
                     f"{gwc_row.get('max_abs_difference', 0):.3g}; 'rotating': {ROTATED_SETS} buffer sets, larger "
                     "than the L2 together")
    if "copies" in extras:
        c = extras["copies"]
        lines.append(f"\nthe frame's copies alone (pinned, CUDA events): both images up {c['upload_ms'] * 1e3:.1f} us "
                     f"({c['upload_GB_per_s']:.1f} GB/s), disparity down {c['download_ms'] * 1e3:.1f} us "
                     f"({c['download_GB_per_s']:.1f} GB/s)")
    if "overhead_floor" in extras:
        f = extras["overhead_floor"]
        lines.append(f"overhead floor ({f['pipeline']}): those copies + preprocess, norm, GWC and postprocess "
                     f"({f['kernels_ms'] * 1e3:.1f} us) = {f['floor_ms']:.3f} ms, {f['floor_share'] * 100:.1f}% of a "
                     f"frame with these engines ({f['engines_ms']:.2f} ms); measured overhead {f['overhead_ms']:.3f} ms, "
                     f"{f['overhead_share'] * 100:.1f}% of the p50 latency")
    if "memory" in extras:
        m = extras["memory"]
        lines.append(f"\ndevice memory over {m['frames']} frames: pipeline holds {m['held_bytes'] / 2**20:.1f} MiB, "
                     f"grew by {m['held_growth_bytes']} B; driver free memory dropped by "
                     f"{m['driver_free_drop_bytes'] / 2**20:.2f} MiB")
    if "pipelined" in extras:
        p = extras["pipelined"]
        lines.append(f"frames in flight ({p['pipeline']}, {p['frames']} frames, one host thread): 1/latency "
                     f"{p['single_hz']:.1f} Hz (p50 {p['latency_ms']:.3f} ms); one stream, next frame queued "
                     f"{p['queued_hz']:.1f} Hz ({p['queued_ratio']:.2f}x); {p['streams']} streams "
                     f"{p['pipelined_hz']:.1f} Hz ({p['ratio']:.2f}x)")
    if "depth_points" in extras:
        d = extras["depth_points"]
        with_dp, alone = d["depth+points"], d["disparity"]
        downloaded = f"{with_dp['d2h_bytes']:,} B downloaded" if with_dp["d2h_bytes"] is not None else "host path"
        lines.append(f"\ndepth + points ({d['pipeline']}, {d['size']}, stride 1, {d['frames']} frames): depth_points "
                     f"stage {with_dp['depth_points_ms']:.3f} ms; latency p50 {with_dp['latency_p50_ms']:.2f} ms vs "
                     f"{alone['latency_p50_ms']:.2f} ms disparity alone ({d['extra_ms']:+.3f} ms); "
                     f"{with_dp['published_bytes']:,} B published, {downloaded}")
    return "\n".join(lines)


def write_chart(rows: list[Row], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    stages = [s for s in sorted({s for r in rows for s in r.stages_ms}, key=_stage_order) if s != "total"]
    labels = [f"{r.config}\n{r.pipeline}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
    bottom = np.zeros(len(rows))
    for stage in stages:
        values = np.array([r.stages_ms.get(stage, 0.0) for r in rows])
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom += values
    ax.set_ylabel("median stage time (ms)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def configs_from_args(args) -> list[tuple[str, str | None, str | None]]:
    if args.sweep:
        feats = [(n, p) for n, p in (("fp16", args.feat_fp16), ("int8", args.feat_int8)) if p]
        posts = [(n, p) for n, p in (("fp16", args.post_fp16), ("int8", args.post_int8)) if p]
        if not args.feat_fp16 or not args.post_fp16:
            raise FlashStereoError("--sweep needs at least --feat-fp16 and --post-fp16")
        return [(f"feat {fn} / post {pn}", fp, pp) for fn, fp in feats for pn, pp in posts]
    if (args.feat is None) != (args.post is None):
        raise FlashStereoError("give both --feat and --post, or neither for the bundled stand-in model")
    return [(Path(args.feat).parent.name if args.feat else "bundled stand-in", args.feat, args.post)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feat", help="feature_runner model (.engine/.plan/.pt2/.onnx)")
    parser.add_argument("--post", help="post_runner model")
    parser.add_argument("--left")
    parser.add_argument("--right")
    parser.add_argument("--pairs", type=at_least(1), default=4, help="synthetic pairs to rotate through (no --left)")
    parser.add_argument("--reps", type=at_least(1), default=20)
    parser.add_argument("--warmup", type=at_least(0), default=5)
    parser.add_argument("--sweep", action="store_true", help="every feat x post precision combination")
    parser.add_argument("--feat-fp16")
    parser.add_argument("--feat-int8")
    parser.add_argument("--post-fp16")
    parser.add_argument("--post-int8")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--backend", choices=("tensorrt", "onnxruntime", "torch"))
    parser.add_argument("--pipelines", help="comma list of " + ", ".join(PIPELINES)
                        + " (default: stock,flash,flash+graph on a GPU, cpu otherwise)")
    parser.add_argument("--kernels", action="store_true", help="GPU: norm and GWC kernels vs copy bandwidth")
    parser.add_argument("--memory-frames", type=at_least(0), default=0, help="GPU: device memory over this many frames")
    parser.add_argument("--pipelined", action="store_true",
                        help="GPU: throughput with frames in flight (one stream, then --streams streams)")
    parser.add_argument("--streams", type=at_least(1), default=2, help="pipelines (CUDA streams) for --pipelined")
    parser.add_argument("--depth-points", action="store_true",
                        help="what metric depth and a full-resolution point cloud add to a frame")
    parser.add_argument("--json", default="bench.json")
    parser.add_argument("--chart", default="bench_stages.png")
    args = parser.parse_args(argv)
    chosen = [kind.strip() for kind in args.pipelines.split(",") if kind.strip()] if args.pipelines else None
    if chosen is not None and (not chosen or set(chosen) - set(PIPELINES)):
        parser.error(f"--pipelines {args.pipelines!r}: choose from {', '.join(PIPELINES)}")
    require_writable(parser, "--json", args.json)
    require_writable(parser, "--chart", args.chart)

    try:
        configs = configs_from_args(args)
        device = resolve_device(args.device, configs[0][1], args.backend)
        if configs[0][1] is None:
            configs = [(configs[0][0], *map(str, default_models(device)))]
        kinds = chosen or (["stock", "flash", "flash+graph"] if device == "cuda" else ["cpu"])
        gpu_extras = args.kernels or args.memory_frames or args.pipelined
        if gpu_extras and device != "cuda":
            raise FlashStereoError("--kernels, --memory-frames and --pipelined need the GPU pipeline")
        probe = make_pipeline(kinds[-1], configs[0][1], configs[0][2], args.backend)
        size = probe.input_size
        probe.close()
        inputs = make_inputs(args, size)
        rows, reference = [], None
        for label, feat, post in configs:
            config_rows, reference = bench_config(label, feat, post, kinds, inputs, args, reference)
            rows += config_rows
        feat, post = configs[0][1], configs[0][2]
        graph = "flash+graph" in kinds
        extras = {}
        if args.kernels:
            extras["kernels"] = kernel_roofline(feat, post, args.backend, max(args.reps, 50))
            extras["copies"] = transfer_floor(inputs, max(args.reps, 50))
            resident = [r for r in rows if r.pipeline.startswith("flash") and r.overhead_ms is not None]
            if resident:
                extras["overhead_floor"] = overhead_floor(resident[-1], extras["copies"])
        if args.memory_frames:
            extras["memory"] = memory_over_frames(feat, post, args.backend, inputs, args.memory_frames, graph)
        if args.pipelined:
            extras["pipelined"] = pipelined_throughput(feat, post, args.backend, inputs, max(2 * args.reps, 40),
                                                       graph, args.streams)
        if args.depth_points:
            extras["depth_points"] = depth_points_cost(feat, post, args.backend, inputs, max(args.reps, 20), kinds[-1])
    except (FlashStereoError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    source = "given pair" if inputs.truth[0] is None else f"{len(inputs.pairs)} synthetic pairs"
    print(f"{source} rotated, {args.warmup} warm-up + {args.reps} timed frames per row, "
          f"engine size {size[1]}x{size[0]}, device {device}")
    print(format_table(rows) + format_extras(extras))
    Path(args.json).write_text(json.dumps({"rows": [dataclasses.asdict(r) for r in rows], **extras}, indent=2))
    charted = write_chart(rows, args.chart)
    print(f"wrote {args.json}" + (f" and {args.chart}" if charted else " (no matplotlib: no chart)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
