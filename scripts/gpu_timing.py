"""Stock vs GPU-resident timing on a CUDA machine (run by scripts/gpu_check.sh).

Per pipeline: a warm-up, then N frames over rotating synthetic 480x640 pairs; per-frame host wall clock
(image in, disparity out) and the pipeline's CUDA-event stage times; medians, traffic, and whether each
output equals the stock pipeline's bit for bit. Then the norm and GWC kernels alone (events, medians)
with their effective bandwidth. Prints markdown tables; --out writes everything as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from flashstereo_ros import contract, cuda, gwc, kernels, synthetic
from flashstereo_ros.pipeline import FlashStereoPipeline
from flashstereo_ros.stock import StockPipeline

BATCH = 20
BAD_PX = 3.0
STAGE_ORDER = ("preprocess", "h2d", "feature", "d2h_features", "norm", "cast", "h2d_features", "gwc", "d2h_volume",
               "h2d_post", "post", "postprocess", "depth_points", "d2h", "total")


def accuracy(outputs, scenes) -> dict:
    """Mean absolute error and share within BAD_PX of the ground truth on the observable pixels."""
    errors = np.concatenate([np.abs(out - s.disparity)[s.valid] for out, s in zip(outputs, scenes)])
    return {"mae_px": float(errors.mean()), "within_3px": float((errors <= BAD_PX).mean())}


def measure(pipe, pairs, frames: int, warmup: int) -> dict:
    for i in range(warmup):
        pipe.infer(*pairs[i % len(pairs)])
    wall, stages = [], {}
    for i in range(frames):
        start = time.perf_counter()
        pipe.infer(*pairs[i % len(pairs)])
        wall.append((time.perf_counter() - start) * 1e3)
        for name, ms in pipe.timings.items():
            stages.setdefault(name, []).append(ms)
    outputs = [pipe.infer(*pair) for pair in pairs]
    return {"wall_ms": {p: float(np.percentile(wall, p)) for p in (50, 90, 99)},
            "stages_ms": {name: float(np.median(v)) for name, v in stages.items()},
            "traffic": dict(pipe.traffic), "memory": pipe.memory_bytes(), "outputs": outputs}


def kernel_times(models_geometry, reps: int) -> dict:
    """Median device time of the norm and GWC kernels on random data of the engine's shapes."""
    geo = models_geometry
    stream = cuda.Stream()
    rng = np.random.default_rng(0)
    shape = geo.feature_outputs[contract.FEATURES_LEFT_04].shape
    feat_dtype = geo.feature_outputs[contract.FEATURES_LEFT_04].dtype
    feats = []
    for _ in range(2):
        buf = cuda.DeviceBuffer(shape, feat_dtype)
        buf.upload(rng.standard_normal(shape).astype(feat_dtype))
        feats.append(buf)
    normed = [cuda.DeviceBuffer(shape, np.float16) for _ in range(2)]
    volume = cuda.DeviceBuffer(geo.post_inputs[contract.GWC_VOLUME].shape, geo.volume_dtype)
    group_channels = shape[1] // geo.groups
    launches = {
        "group_norm (L+R)": (kernels.GroupNormKernel(group_channels, feat_dtype).prepare(
            *feats, *normed, geo.groups, shape[2] * shape[3]), 2 * feats[0].nbytes + 2 * normed[0].nbytes),
        "gwc_volume": (kernels.GwcKernel(group_channels, geo.disparities, geo.volume_dtype).prepare(
            *normed, volume, geo.groups, shape[2], shape[3]), 2 * normed[0].nbytes + volume.nbytes),
    }
    result = {}
    start, end = cuda.Event(), cuda.Event()
    for name, (launch, nbytes) in launches.items():
        times = []
        for _ in range(reps):  # BATCH back-to-back launches per event pair: the host launch gap stays hidden
            start.record(stream)
            for _ in range(BATCH):
                launch.run(stream)
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_ms(end) / BATCH)
        ms = float(np.median(times[reps // 10:]))
        result[name] = {"median_us": ms * 1e3, "bytes": nbytes, "GB_per_s": nbytes / ms / 1e6}
    # the volume is still right: compare with numpy once
    left, right = normed[0].download(stream), normed[1].download(stream)
    expect = gwc.gwc_volume(left, right, geo.groups, geo.disparities, geo.volume_dtype)
    result["gwc_volume"]["equals_numpy"] = bool(np.array_equal(volume.download(stream), expect))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="folder with feature_runner and post_runner models")
    parser.add_argument("--suffix", default=".pt2", help="model file suffix (.pt2 torch, .engine TensorRT)")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--kernel-reps", type=int, default=200)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    folder = Path(args.models)
    feat, post = folder / f"feature_runner{args.suffix}", folder / f"post_runner{args.suffix}"
    results, geometry, pairs, scenes = {}, None, None, None
    for label, make in (("stock", lambda: StockPipeline(feat, post)),
                        ("resident", lambda: FlashStereoPipeline(feat, post)),
                        ("resident+graph", lambda: FlashStereoPipeline(feat, post, use_cuda_graph=True))):
        pipe = make()
        try:
            geometry = pipe.geometry
            if pairs is None:  # synthetic scenes at the engine size, rotated per frame
                scenes = [synthetic.make_scene(kind, *pipe.input_size, seed=100 + i)
                          for i, kind in enumerate(synthetic.SCENES)]  # outputs are kept for these, in order
                pairs = [(scene.left, scene.right) for scene in scenes]
            results[label] = measure(pipe, pairs, args.frames, args.warmup)
            results[label]["accuracy"] = accuracy(results[label]["outputs"], scenes)
        finally:
            pipe.close()
    stock = results["stock"]
    reference = stock["outputs"]
    for r in results.values():
        r["speedup"] = stock["wall_ms"][50] / r["wall_ms"][50]
        r["bit_identical_to_stock"] = all(np.array_equal(a, b) for a, b in zip(r.pop("outputs"), reference))
    kernel = kernel_times(geometry, args.kernel_reps)

    size = "x".join(map(str, (geometry.height, geometry.width)))
    lines = ["", f"## stock vs GPU-resident, {size}, {args.suffix} models, {cuda.primary_context(0).name}, "
                 f"{args.frames} frames (median of host wall clock per frame; stages: CUDA-event medians)", "",
             "| pipeline | wall p50 ms | p90 ms | p99 ms | speed-up | H2D MiB (copies) | D2H MiB (copies) | "
             "device MiB | bit-identical to stock | MAE px | within 3 px |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        t = r["traffic"]
        lines.append(f"| {label} | {r['wall_ms'][50]:.2f} | {r['wall_ms'][90]:.2f} | {r['wall_ms'][99]:.2f} | "
                     f"{r['speedup']:.2f}x | {t['h2d'] / 2**20:.2f} ({t['h2d_count']}) | "
                     f"{t['d2h'] / 2**20:.2f} ({t['d2h_count']}) | {r['memory']['device'] / 2**20:.0f} | "
                     f"{'yes' if r['bit_identical_to_stock'] else 'NO'} | {r['accuracy']['mae_px']:.3f} | "
                     f"{r['accuracy']['within_3px'] * 100:.1f}% |")
    names = sorted({s for r in results.values() for s in r["stages_ms"]},
                   key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER))
    lines += ["", "| stage (ms, median) | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for name in names:
        cells = [f"{r['stages_ms'][name]:.3f}" if name in r["stages_ms"] else "-" for r in results.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"| kernel alone ({BATCH} back-to-back launches per event pair) | median us | MB moved | GB/s |",
              "|---|---|---|---|"]
    for name, k in kernel.items():
        lines.append(f"| {name} | {k['median_us']:.1f} | {k['bytes'] / 1e6:.1f} | {k['GB_per_s']:.0f} |")
    lines.append(f"\nGWC kernel on random data equals numpy: {kernel['gwc_volume']['equals_numpy']}")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"pipelines": results, "kernels": kernel}, indent=2))
    ok = all(r["bit_identical_to_stock"] for r in results.values()) and kernel["gwc_volume"]["equals_numpy"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
