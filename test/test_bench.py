"""flashstereo-bench on the CPU path: the precision sweep, its table and JSON (the GPU run is on the device)."""
import json

import pytest

from flashstereo_ros import resources
from flashstereo_ros.tools import bench


def test_sweep_reports_every_combination_with_agreement_and_accuracy(tmp_path, capsys):
    feat, post = (str(p) for p in resources.bundled_models(".onnx", (64, 128)))
    out = tmp_path / "bench.json"
    code = bench.main(["--sweep", "--feat-fp16", feat, "--feat-int8", feat, "--post-fp16", post,
                       "--post-int8", post, "--device", "cpu", "--reps", "3", "--warmup", "1",
                       "--json", str(out), "--chart", str(tmp_path / "chart.png")])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == ["feat fp16 / post fp16", "feat fp16 / post int8",
                                           "feat int8 / post fp16", "feat int8 / post int8"]
    for row in rows:
        assert row["pipeline"] == "cpu"
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p90"] <= row["latency_ms"]["p99"]
        assert set(row["stages_ms"]) >= {"feature", "norm", "gwc", "post", "total"}
        # the same model files in every slot: the agreement must be exact
        assert row["agreement"]["bit_identical"] and row["agreement"]["rel_l1"] == 0.0
        assert 0.0 < row["accuracy"]["mae_px"] < 5.0
    table = capsys.readouterr().out
    assert "| feat int8 / post int8 | cpu |" in table and "| stage (median ms) |" in table


def test_depth_points_cost_is_reported_with_the_published_bytes(tmp_path, capsys):
    feat, post = (str(p) for p in resources.bundled_models(".onnx", (64, 128)))
    out = tmp_path / "bench.json"
    assert bench.main(["--feat", feat, "--post", post, "--device", "cpu", "--reps", "2", "--warmup", "1",
                       "--depth-points", "--json", str(out), "--chart", str(tmp_path / "chart.png")]) == 0
    cost = json.loads(out.read_text())["depth_points"]
    h, w = 64, 128
    assert cost["size"] == f"{w}x{h}" and cost["frames"] == 20
    assert cost["disparity"]["published_bytes"] == h * w * 4
    assert cost["depth+points"]["published_bytes"] == h * w * (4 + 4 + 16)  # disparity, depth, x y z rgb
    assert cost["depth+points"]["depth_points_ms"] > 0
    assert "depth + points (cpu, 128x64" in capsys.readouterr().out


def test_gpu_extras_refused_on_cpu(capsys):
    assert bench.main(["--device", "cpu", "--kernels"]) == 2
    assert "need the GPU pipeline" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [(["--sweep"], "--feat-fp16"), (["--feat", "x.onnx"], "both --feat")])
def test_incomplete_arguments(argv, message, capsys):
    assert bench.main(argv + ["--device", "cpu"]) == 2
    assert message in capsys.readouterr().err


def test_overhead_floor_adds_the_copies_to_the_frames_own_kernels():
    row = bench.Row("c", "flash+graph", {"p50": 2.0, "p90": 2.1, "p99": 2.2}, 500.0,
                    {"preprocess": 0.01, "feature": 0.7, "norm": 0.02, "gwc": 0.01, "post": 0.8, "postprocess": 0.0,
                     "h2d": 0.3, "d2h": 0.05, "total": 1.9}, {}, {}, overhead_ms=0.5)
    copies = {"upload_ms": 0.04, "upload_bytes": 1843200, "upload_GB_per_s": 46.08, "download_ms": 0.03,
              "download_bytes": 1228800, "download_GB_per_s": 40.96}
    floor = bench.overhead_floor(row, copies)
    assert floor["kernels_ms"] == pytest.approx(0.04)  # the measured h2d/d2h stages are not counted twice
    assert floor["floor_ms"] == pytest.approx(0.11)
    assert floor["floor_share"] == pytest.approx(0.11 / 1.61)
    assert floor["overhead_share"] == pytest.approx(0.25)
    text = bench.format_extras({"copies": copies, "overhead_floor": floor})
    assert "both images up 40.0 us (46.1 GB/s), disparity down 30.0 us (41.0 GB/s)" in text
    assert "= 0.110 ms, 6.8% of a frame with these engines (1.50 ms); measured overhead 0.500 ms, 25.0%" in text
