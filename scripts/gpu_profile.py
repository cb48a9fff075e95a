"""Device-side profiling for docs/GPU.md and docs/PERFORMANCE.md (run on the GPU machine, before gpu_check.sh).

    python3 scripts/gpu_profile.py --models /tmp/standin_480x640 [--out DIR] [--parts gwc,host,pipelined]

gwc        the GWC kernel's variants at the stand-in shape, each compared with gwc.gwc_volume (bits, values
           that differ) and timed like flashstereo-bench --kernels (20 back-to-back launches per
           event pair, median of 200), registers and resident blocks per SM from the driver; each also
           with 4 rotating input/output sets (128 MB, more than the 50 MB L2).
           kernels/gwc_v1.cu, when present (an older gwc.cu, TILE_X 64, 4 x 8), is timed too; so is
           kernels/gwc_prev.cu, when present (an earlier pipelined gwc.cu, e.g. `git show HEAD:kernels/gwc.cu`,
           built with the current GwcKernel's defines and grid rule), for an A/B in the same run.
host       where the host time of one graph-mode process() goes: sections timed with perf_counter inside
           the call, cProfile's top functions, and micro-benchmarks of the staging copies and driver calls;
           with and without the helper thread that stages the right image.
pipelined  two pipelines on two streams: the GPU alone (graph launches, no host work) against one stream,
           and the earlier design's threaded measurement (one host thread per pipeline), for comparison.
A pipeline module flashstereo_ros/_pipeline_v1.py, when present (an older pipeline.py), is measured
beside the current one. Prints short tables; writes profile.json under --out.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flashstereo_ros import contract, cuda, gwc, kernels, synthetic  # noqa: E402
from flashstereo_ros.tools.bench import volume_difference  # noqa: E402

RESULTS: dict = {}


def section(name):
    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n===== {name}", flush=True)
            start = time.perf_counter()
            try:
                RESULTS[name] = fn(*args, **kwargs)
            except Exception:  # one part failing must not hide the others
                traceback.print_exc()
                RESULTS[name] = {"error": traceback.format_exc()}
            print(f"----- {name}: {time.perf_counter() - start:.1f} s", flush=True)
        return run
    return wrap


def event_median(stream, launch, reps=200, batch=20) -> float:
    start, end = cuda.Event(), cuda.Event()
    times = []
    for _ in range(reps):
        start.record(stream)
        for _ in range(batch):
            launch(stream)
        end.record(stream)
        end.synchronize()
        times.append(start.elapsed_ms(end) / batch)
    return float(np.median(times[reps // 10:]))


# ------------------------------------------------------------------------------------------------ GWC
GWC_VARIANTS = [  # (label, GwcKernel options)
    ("tensor, half rows (default on sm_80+)", {"variant": "tensor"}),
    ("tensor, row tile", {"variant": "tensor", "max_tile": 160}),
    ("tensor, tile 32", {"variant": "tensor", "max_tile": 32}),
    ("tensor, half rows, launch bounds with minimum 1 block", {"variant": "tensor", "min_blocks": 1}),
    ("tensor, half rows, minimum 6 blocks/SM", {"variant": "tensor", "min_blocks": 6}),
    ("tensor, half rows, minimum 7 blocks/SM", {"variant": "tensor", "min_blocks": 7}),
    ("pipelined 8x16, all that fit, 4 copy groups per item (exact)", {"variant": "pipelined"}),
    ("pipelined 8x16, half rows (tile 80), 4 groups", {"variant": "pipelined", "max_tile": 80}),
    ("pipelined 8x8", {"variant": "pipelined", "kt": 8}),
]


def _summation_error(left, right, groups, disparities, stream) -> dict:
    """Float32 volumes of the tensor and the exact kernel against the float64 sums of the same products."""
    exact = np.zeros((1, groups, disparities) + left.shape[2:], np.float64)
    lf, rf = (x.astype(np.float64).reshape(1, groups, -1, *x.shape[2:]) for x in (left, right))
    for d in range(disparities):
        exact[:, :, d, :, d:] = (lf[..., d:] * rf[..., :rf.shape[-1] - d]).sum(axis=2)
    dl, dr = cuda.DeviceBuffer(left.shape, np.float16), cuda.DeviceBuffer(right.shape, np.float16)
    dl.upload(left)
    dr.upload(right)
    out = cuda.DeviceBuffer(exact.shape, np.float32)
    errors = {}
    for variant in ("tensor", "pipelined"):
        kernels.GwcKernel(left.shape[1] // groups, disparities, np.float32, variant=variant).prepare(
            dl, dr, out, groups, *left.shape[2:]).run(stream)
        err = np.abs(out.download(stream).astype(np.float64) - exact)
        errors[variant] = {"max": float(err.max()), "mean": float(err.mean())}
    return {"variant": "float32 volume vs float64 sum", "summation_error": errors}


def _func_info(kernel) -> dict:
    drv = cuda.driver
    regs = cuda.check(drv.cuFuncGetAttribute(drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS, kernel.handle),
                      "cuFuncGetAttribute")
    local = cuda.check(drv.cuFuncGetAttribute(drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES,
                                              kernel.handle), "cuFuncGetAttribute")
    return {"registers": int(regs), "local_bytes": int(local)}


def _occupancy(kernel, threads) -> int:
    return int(cuda.check(cuda.driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(kernel.handle, threads, 0),
                          "cuOccupancyMaxActiveBlocksPerMultiprocessor"))


@section("gwc")
def gwc_sweep(shape=(1, 224, 120, 160), groups=8, disparities=48):
    cuda.primary_context(0)
    stream = cuda.Stream()
    rng = np.random.default_rng(0)
    left = gwc.normalize_groups(rng.standard_normal(shape).astype(np.float32), groups)
    right = gwc.normalize_groups(rng.standard_normal(shape).astype(np.float32), groups)
    t = time.perf_counter()
    expect = gwc.gwc_volume(left, right, groups, disparities, np.float16)
    print(f"numpy reference {time.perf_counter() - t:.1f} s")
    dl, dr = cuda.DeviceBuffer(shape, np.float16), cuda.DeviceBuffer(shape, np.float16)
    dl.upload(left)
    dr.upload(right)
    volume = cuda.DeviceBuffer(expect.shape, np.float16)
    src, dst = cuda.DeviceBuffer((256 << 20,), np.uint8), cuda.DeviceBuffer((256 << 20,), np.uint8)
    copy_ms = event_median(stream, lambda s: dst.copy_from_device_async(src, s))
    copy_rate = 2 * (256 << 20) / copy_ms / 1e6
    nbytes = 2 * dl.nbytes + volume.nbytes
    _, c, h, w = shape
    rows = []
    print(f"device copy {copy_rate:.0f} GB/s; GWC moves {nbytes / 1e6:.1f} MB "
          f"(floor {nbytes / copy_rate / 1e3:.1f} us)")
    variants = list(GWC_VARIANTS)
    if (ROOT / "kernels" / "gwc_v1.cu").exists():
        variants.insert(0, ("v1 (committed 4x8 t64)", None))
    if (ROOT / "kernels" / "gwc_prev.cu").exists():
        variants.insert(1, ("previous gwc.cu, all that fit", ("gwc_prev.cu", {})))

    def prepare(options, a, b, v):
        """(kernel, launch, tile, block) of one variant over buffers a, b -> v"""
        if options is None:
            defines = {"GROUP_CHANNELS": c // groups, "DISPARITIES": disparities, "OUT_HALF": 1}
            kernel = kernels.load_module("gwc_v1.cu", defines).kernel("gwc_volume")
            block, grid, tile = (16, 6, 1), (-(-w // 64), h, groups), 64
            # v1 took (left, right, vol, height, width): the driver reads only the first 5 parameters
            return kernel, kernel.prepare(grid, block, (a, b, v, h, w, 0)), tile, block
        if isinstance(options, tuple):  # (source, extra defines): the current host's tile and grid rule
            k = kernels.GwcKernel(c // groups, disparities, np.float16, variant="pipelined")
            tile = k.tile_for(w)
            kernel = kernels.load_module(options[0], {**k.defines(tile), **options[1]}).kernel("gwc_volume")
            block = k.block(tile)
            sms = cuda.primary_context(0).attribute("MULTIPROCESSOR_COUNT")
            grid = (min(-(-w // tile) * h * groups, sms * kernel.resident_blocks(block[0] * block[1])),)
            return kernel, kernel.prepare(grid, block, (a, b, v, groups, h, w)), tile, block
        k = kernels.GwcKernel(c // groups, disparities, np.float16, **options)
        tile = k.tile_for(w)
        return k.kernel(tile), k.prepare(a, b, v, groups, h, w), tile, k.block(tile)

    for label, options in variants:
        try:
            kernel, launch, tile, block = prepare(options, dl, dr, volume)
            grid = launch.grid
            volume.fill_nan_async(stream)
            launch.run(stream)
            got = volume.download(stream)
            ulps = np.abs(got.view(np.int16).astype(np.int32) - expect.view(np.int16).astype(np.int32))
            ms = event_median(stream, launch.run)
            threads = block[0] * block[1]
            row = {"variant": label, "tile": tile, "threads": threads, "grid": list(grid), **_func_info(kernel),
                   "blocks_per_sm": _occupancy(kernel, threads), "median_us": ms * 1e3,
                   "GB_per_s": nbytes / ms / 1e6, "fraction_of_copy": nbytes / ms / 1e6 / copy_rate,
                   **volume_difference(got, expect), "max_ulp": int(ulps.max()),
                   "finite": bool(np.isfinite(got).all())}
        except Exception as exc:  # a variant that does not build or launch is reported, not fatal
            row = {"variant": label, "error": str(exc)[:300]}
        rows.append(row)
        print(row, flush=True)
    rows.append(_summation_error(left, right, groups, disparities, stream))
    print(rows[-1], flush=True)
    rotated = []
    sets = []
    for i in range(4):  # 4 input/output sets (128 MB, more than the L2): DRAM-bound timing
        bufs = [cuda.DeviceBuffer(shape, np.float16), cuda.DeviceBuffer(shape, np.float16),
                cuda.DeviceBuffer(expect.shape, np.float16)]
        bufs[0].upload(left)
        bufs[1].upload(right)
        sets.append(bufs)
    for label, options in variants + [v for v in variants[:2] if v[1] is not None]:  # the first ones twice: noise
        if options is None:
            continue
        prepared = [prepare(options, a, b, v)[1] for a, b, v in sets]
        state = {"i": 0}

        def rotate(s):
            prepared[state["i"] % 4].run(s)
            state["i"] += 1

        ms = event_median(stream, rotate, reps=100)
        rotated.append({"variant": label, "median_us": ms * 1e3, "GB_per_s": nbytes / ms / 1e6,
                        "fraction_of_copy": nbytes / ms / 1e6 / copy_rate})
        print("rotating 4 sets:", rotated[-1], flush=True)
    dram = {r["variant"]: r for r in rotated}
    print("\n| variant | tile | threads | grid | regs | blocks/SM fit | us | GB/s | of copy | rotating us | of copy "
          "| bit-identical | values differing | max ulp |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "summation_error" in r:
            print(f"| {r['variant']}: " + ", ".join(f"{k} max {e['max']:.2e} mean {e['mean']:.2e}"
                                                     for k, e in r["summation_error"].items()) + " |")
        elif "error" in r:
            print(f"| {r['variant']} | error: {r['error'][:80]} |")
        else:
            d = dram.get(r["variant"])
            rot = f"{d['median_us']:.1f} | {d['fraction_of_copy'] * 100:.0f}%" if d else "- | -"
            print(f"| {r['variant']} | {r['tile']} | {r['threads']} | {r['grid']} | {r['registers']} "
                  f"({r['local_bytes']} B local) | "
                  f"{r['blocks_per_sm']} | {r['median_us']:.1f} | {r['GB_per_s']:.0f} | "
                  f"{r['fraction_of_copy'] * 100:.0f}% | {rot} | {r['equals_numpy']} | {r['values_differing']} | "
                  f"{r['max_ulp']} |")
    return {"copy_GB_per_s": copy_rate, "bytes": nbytes, "variants": rows, "rotated": rotated}


# ------------------------------------------------------------------------------------------------ host
def _inputs(n=4, size=(480, 640)):
    scenes = [synthetic.make_scene(synthetic.SCENES[i % len(synthetic.SCENES)], *size, seed=100 + i)
              for i in range(n)]
    return [(s.left, s.right) for s in scenes]


class _StagingThreshold:
    """Context: pipeline.PARALLEL_STAGING_BYTES set to `value` (None: left as it is)."""

    def __init__(self, value):
        self.value = value

    def __enter__(self):
        from flashstereo_ros import pipeline

        self.saved = pipeline.PARALLEL_STAGING_BYTES
        if self.value is not None:
            pipeline.PARALLEL_STAGING_BYTES = self.value

    def __exit__(self, *exc):
        from flashstereo_ros import pipeline

        pipeline.PARALLEL_STAGING_BYTES = self.saved


def _pipeline_classes():
    """(name, class, context) of each pipeline version to compare."""
    from flashstereo_ros.pipeline import FlashStereoPipeline

    classes = [("current", FlashStereoPipeline, _StagingThreshold(None)),
               ("current, staging on one thread", FlashStereoPipeline, _StagingThreshold(1 << 62))]
    if (ROOT / "flashstereo_ros" / "_pipeline_v1.py").exists():
        from flashstereo_ros._pipeline_v1 import FlashStereoPipeline as Old

        classes.append(("v1", Old, _StagingThreshold(None)))
    return classes


def _latency(pipe, pairs, frames):
    lat = []
    for i in range(frames):
        t = time.perf_counter()
        pipe.infer(*pairs[i % len(pairs)])
        lat.append((time.perf_counter() - t) * 1e3)
    return lat


def _each_pipeline_class(measure_one, models, frames) -> dict:
    """measure_one(name, cls, models, pairs, frames) for the current pipeline (and v1 when present)."""
    pairs = _inputs()
    out = {}
    for name, cls, context in _pipeline_classes():
        with context:
            out[name] = measure_one(name, cls, models, pairs, frames)
    return out


@section("host")
def host_profile(models, frames=400):
    out = _each_pipeline_class(_host_one, models, frames)
    out["micro_us"] = _micro()
    print("micro (us):", out["micro_us"])
    return out


def _host_one(name, cls, models, pairs, frames):
    pipe = cls(models / "feature_runner.pt2", models / "post_runner.pt2", use_cuda_graph=True)
    try:
        for i in range(20):
            pipe.infer(*pairs[i % 4])
        lat = _latency(pipe, pairs, frames)
        gpu, stages = [], {}
        for i in range(100):
            pipe.infer(*pairs[i % 4])
            t = dict(pipe.timings)
            gpu.append(t["total"])
            for k, v in t.items():
                stages.setdefault(k, []).append(v)
        res = {"p50_ms": float(np.median(lat)), "p90_ms": float(np.percentile(lat, 90)),
               "gpu_total_ms": float(np.median(gpu)),
               "stages_ms": {k: float(np.median(v)) for k, v in stages.items()},
               "raw_graph_launch": bool(getattr(getattr(pipe, "_graph", None), "_exec", None) is not None)}
        res["host_ms"] = res["p50_ms"] - res["gpu_total_ms"]
        if name.startswith("current"):
            res["sections_us"] = _sections(pipe, pairs)
        prof = cProfile.Profile()
        prof.enable()
        _latency(pipe, pairs, 200)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(22)
        res["cprofile_top"] = buf.getvalue()
        print(f"--- {name}: p50 {res['p50_ms']:.3f} ms, GPU events total {res['gpu_total_ms']:.3f} ms, "
              f"host {res['host_ms']:.3f} ms, raw graph launch {res['raw_graph_launch']}")
        print("stages:", {k: round(v, 4) for k, v in res["stages_ms"].items()})
        if "sections_us" in res:
            print("sections (us, median per frame):", res["sections_us"])
        print(res["cprofile_top"][:3000])
        return res
    finally:
        pipe.close()


def _sections(pipe, pairs, frames=300):
    """perf_counter around each step of process(), by wrapping the pipeline's own methods."""
    from flashstereo_ros import images, pipeline as pmod

    acc: dict[str, list[float]] = {}

    def timed(name, fn):
        def run(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc.setdefault(name, []).append((time.perf_counter() - t) * 1e6)
        return run

    saved = {}
    for name in ("_issue_inputs", "_issue_outputs", "_wait"):
        saved[name] = getattr(pipe, name)
        setattr(pipe, name, timed("_wait (GPU wait, hand-over)" if name == "_wait" else name, saved[name]))
    graph_launch = pipe._graph.launch
    pipe._graph.launch = timed("graph.launch", graph_launch)
    check_pair = images.check_pair
    images.check_pair = timed("check_pair", check_pair)
    stager = getattr(pipe, "_stager", None)
    if stager is not None:
        stager.wait = timed("  of which waiting for the staging thread", stager.wait)
    try:
        walls = []
        for i in range(frames):
            t = time.perf_counter()
            pipe.infer(*pairs[i % len(pairs)])
            walls.append((time.perf_counter() - t) * 1e6)
    finally:
        for name in saved:
            delattr(pipe, name)
        pipe._graph.launch = graph_launch
        images.check_pair = check_pair
        if stager is not None:
            del stager.wait
    out = {k: round(float(np.median(v)), 1) for k, v in acc.items()}
    out["wall"] = round(float(np.median(walls)), 1)
    timed_total = sum(v for k, v in out.items() if k != "wall" and not k.startswith(" "))
    out["rest (lock, plan, slot, call overhead)"] = round(out["wall"] - timed_total, 1)
    _ = pmod
    return out


def _micro() -> dict:
    res = {}
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    imgs = [img.copy() for _ in range(8)]
    pinned = cuda.PinnedBuffer(img.shape, np.uint8)
    pinned2 = cuda.PinnedBuffer(img.shape, np.uint8)
    disp = cuda.PinnedBuffer((480, 640), np.float32)

    def med(fn, n=300):
        for _ in range(20):
            fn()
        ts = []
        for i in range(n):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e6)
        return round(float(np.median(ts)), 1)

    state = {"i": 0}

    def stage_one():
        state["i"] += 1
        np.copyto(pinned.array, imgs[state["i"] % 8])

    res["copyto 0.92 MB -> pinned"] = med(stage_one)
    res["copy 1.2 MB pinned -> new array"] = med(lambda: disp.array.copy())
    # both images staged by two threads at once (a persistent worker takes the right image)
    go, done = threading.Event(), threading.Event()
    job = {}

    def worker():
        while True:
            go.wait()
            go.clear()
            if job.get("stop"):
                return
            np.copyto(pinned2.array, job["src"])
            done.set()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()

    def both_parallel():
        state["i"] += 1
        job["src"] = imgs[(state["i"] + 1) % 8]
        done.clear()
        go.set()
        np.copyto(pinned.array, imgs[state["i"] % 8])
        done.wait()

    def both_serial():
        state["i"] += 1
        np.copyto(pinned.array, imgs[state["i"] % 8])
        np.copyto(pinned2.array, imgs[(state["i"] + 1) % 8])

    res["stage both, serial"] = med(both_serial)
    res["stage both, 2 threads (Events)"] = med(both_parallel)
    job["stop"] = True
    go.set()
    from flashstereo_ros.pipeline import _Stager

    stager = _Stager()

    def both_stager():
        state["i"] += 1
        stager.start(pinned2.array, imgs[(state["i"] + 1) % 8])
        np.copyto(pinned.array, imgs[state["i"] % 8])
        stager.wait()

    res["stage both, pipeline._Stager"] = med(both_stager)
    # both images in row bands over more threads: helpers (persistent, lock hand-over like _Stager) and this one
    class BandWorker(_Stager):
        def _run(self):
            while True:
                self._go.acquire()
                jobs = self._job
                if jobs is None:
                    return
                for dst, src in jobs:
                    np.copyto(dst, src)
                self._done.release()

    for workers in (2, 4, 8):
        helpers = [BandWorker() for _ in range(workers - 1)]
        bands = np.array_split(np.arange(img.shape[0]), workers)

        def both_banded(helpers=helpers, bands=bands):
            state["i"] += 1
            src = (imgs[state["i"] % 8], imgs[(state["i"] + 1) % 8])
            per = [[(dst[b[0]:b[-1] + 1], s_[b[0]:b[-1] + 1]) for dst, s_ in zip((pinned.array, pinned2.array), src)]
                   for b in bands]
            for helper, jobs in zip(helpers, per[1:]):
                helper._job = jobs
                helper._go.release()
            for dst, s_ in per[0]:
                np.copyto(dst, s_)
            for helper in helpers:
                helper._done.acquire()

        res[f"stage both, {workers} threads in row bands"] = med(both_banded)
        for helper in helpers:
            helper.close()
    stream0 = cuda.Stream()
    dev0, dev1 = cuda.DeviceBuffer(img.shape, np.uint8), cuda.DeviceBuffer(img.shape, np.uint8)

    def pageable_upload():
        state["i"] += 1
        dev0.copy_from_host_async(imgs[state["i"] % 8], stream0)
        dev1.copy_from_host_async(imgs[(state["i"] + 1) % 8], stream0)
        stream0.synchronize()

    def pinned_upload():
        dev0.copy_from_host_async(pinned, stream0)
        dev1.copy_from_host_async(pinned2, stream0)
        stream0.synchronize()

    def staged_upload():
        both_stager()
        pinned_upload()

    res["upload both from pageable memory (driver staging), synchronized"] = med(pageable_upload)
    res["upload both from pinned memory, synchronized"] = med(pinned_upload)
    res["stage both (_Stager) + upload from pinned, synchronized"] = med(staged_upload)
    tiny = np.zeros(16, np.uint8)
    tiny_dst = np.zeros(16, np.uint8)

    def handoff():
        stager.start(tiny_dst, tiny)
        stager.wait()

    res["_Stager handoff (16 B)"] = med(handoff)
    stager.close()
    stream = cuda.Stream()
    ev = cuda.Event()
    res["cuEventRecord"] = med(lambda: ev.record(stream))
    res["cuStreamSynchronize (idle)"] = med(stream.synchronize)
    dev = cuda.DeviceBuffer(img.shape, np.uint8)
    res["cuMemcpyHtoDAsync call"] = med(lambda: dev.copy_from_host_async(pinned, stream))
    stream.synchronize()
    e2 = cuda.Event()
    ev.record(stream)
    e2.record(stream)
    stream.synchronize()
    res["cuEventElapsedTime"] = med(lambda: ev.elapsed_ms(e2))
    res["ctx.make_current"] = med(cuda.primary_context(0).make_current)
    return res


# ------------------------------------------------------------------------------------------ pipelined
@section("pipelined")
def pipelined(models, frames=200):
    return _each_pipeline_class(_pipelined_one, models, frames)


def _pipelined_one(name, cls, models, pairs, frames):
    pipes = [cls(models / "feature_runner.pt2", models / "post_runner.pt2", use_cuda_graph=True) for _ in range(2)]
    try:
        for p in pipes:
            for i in range(12):
                p.infer(*pairs[i % 4])
        res = {}
        if name == "current":  # the GPU alone: graph launches back to back, no host work per frame
            a, b = pipes
            for label, order in (("one stream", [a]), ("two streams", [a, b])):
                n = 100
                for p in order:
                    p.stream.synchronize()
                t = time.perf_counter()
                for i in range(n):
                    p = order[i % len(order)]
                    p._graph.launch(p.stream)
                for p in order:
                    p.stream.synchronize()
                res[f"gpu only, {label}: ms per frame"] = (time.perf_counter() - t) * 1e3 / n
        single = _latency(pipes[0], pairs, frames // 2)
        latency = float(np.median(single))
        errors = []

        def worker(k):
            try:
                for i in range(k, frames, 2):
                    pipes[k].infer(*pairs[i % 4])
            except BaseException as exc:
                errors.append(exc)

        for rep in range(2):
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t
            if errors:
                raise errors[0]
            res[f"run{rep}: pipelined Hz"] = frames / wall
            res[f"run{rep}: ratio"] = frames / wall * latency / 1e3
        res["latency_ms"] = latency
        res["single_hz"] = 1e3 / latency
        print(name, {k: round(v, 3) for k, v in res.items()})
        return res
    finally:
        for p in pipes:
            p.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("/tmp/standin_480x640"))
    parser.add_argument("--out", type=Path, default=Path("/tmp"))
    parser.add_argument("--parts", default="gwc,host,pipelined")
    args = parser.parse_args()
    cuda.primary_context(0)
    print("device:", cuda.primary_context(0).name, "nvrtc", kernels.nvrtc_version())
    parts = args.parts.split(",")
    if "gwc" in parts:
        gwc_sweep()
    if "host" in parts:
        host_profile(args.models)
    if "pipelined" in parts:
        pipelined(args.models)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    _ = contract
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
