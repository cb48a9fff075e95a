"""The INT8 recipe of docs/INT8.md end to end at 64x128 on the CPU, and its refusals of bad input.

download (fake Middlebury server on 127.0.0.1) -> build_int8 -> gen_post_calib -> build_int8_post ->
int8_quality. TensorRT cannot be installed here: the engine step is checked for its clear stop, and
build_engine against a fake module that records the documented TensorRT 10/11 calls.
"""
import json
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from flashstereo_ros import CpuStereoPipeline, calibration, contract, quantize, resources, synthetic
from flashstereo_ros.errors import BackendUnavailableError, ModelError
from flashstereo_ros.tools import build_int8, build_int8_post, download_calib_data, gen_post_calib_data, int8_quality
from conftest import post_model_without
from test_calib_data import middlebury_server  # noqa: F401  (fixture)

SIZE = (64, 128)
FEAT, POST = resources.bundled_models(".onnx", SIZE)


@pytest.fixture(scope="module")
def recipe(middlebury_server, tmp_path_factory):  # noqa: F811
    """Run steps 1-4 once; return the folder and the tools' printed output."""
    root = tmp_path_factory.mktemp("recipe")
    engines = root / "engines"
    steps = [
        (download_calib_data.main, ["--out-dir", str(root / "pairs"), "--n", "4", "--height", "64", "--width", "128",
                                    "--base-url", middlebury_server]),
        (build_int8.main, ["--onnx", str(FEAT), "--engine-out", str(engines / "feature_runner_int8.engine"),
                           "--calib-dir", str(root / "pairs")]),
        (gen_post_calib_data.main, ["--calib-dir", str(root / "pairs"), "--out-dir", str(root / "npz"),
                                    "--feat-engine", str(FEAT), "--post-engine", str(POST)]),
        (build_int8_post.main, ["--onnx", str(POST), "--engine-out", str(engines / "post_runner_int8.engine"),
                                "--npz-dir", str(root / "npz")]),
    ]
    for step, args in steps:
        assert step(args) == 0, f"{step.__module__} failed"
    return root


@pytest.mark.parametrize("stem,stage", [("feature_runner_int8", "feature_runner"),
                                        ("post_runner_int8", "post_runner")])
def test_qdq_models_are_valid_and_shaped_for_tensorrt(recipe, stem, stage):
    engines = recipe / "engines"
    float_model = FEAT if stage == "feature_runner" else POST
    for path, float_type in ((engines / f"{stem}.onnx", "FLOAT"), (engines / f"{stem}_fp16.onnx", "FLOAT16")):
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        summary = quantize.verify_qdq(path, float_model)
        assert summary.stage == stage and summary.float_type == float_type
        assert summary.quantize_nodes > 0 and summary.dequantize_nodes > 0
        model = onnx.load(str(path))
        zero_points = [init for init in model.graph.initializer if init.name.endswith("_zero_point")]
        assert zero_points and all(zp.data_type == onnx.TensorProto.INT8 for zp in zero_points)
        assert all(not np.any(onnx.numpy_helper.to_array(zp)) for zp in zero_points)
    if stage == "feature_runner":  # the three descriptor convolutions: per-channel int8 weights
        assert len(quantize.verify_qdq(engines / f"{stem}.onnx").per_channel_weights) == 3
    assert not (engines / f"{stem}.engine").exists()  # no TensorRT here


@pytest.mark.parametrize("stem,float_model", [("feature_runner_int8", FEAT), ("post_runner_int8", POST)])
def test_onnx_runtime_runs_the_qdq_models(recipe, stem, float_model):
    reference = ort.InferenceSession(str(float_model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in reference.get_inputs():
        dtype = np.float16 if arg.type == "tensor(float16)" else np.float32
        high = 255.0 if arg.name in ("left", "right") else 1.0
        feeds[arg.name] = rng.uniform(0, high, arg.shape).astype(dtype)
    expected = reference.run(None, feeds)
    for suffix in ("", "_fp16"):
        session = ort.InferenceSession(str(recipe / "engines" / f"{stem}{suffix}.onnx"),
                                       providers=["CPUExecutionProvider"])
        outputs = session.run(None, feeds)
        assert [o.shape for o in outputs] == [e.shape for e in expected]
        assert all(np.isfinite(o).all() for o in outputs)


def test_calibration_cache_is_portable_and_skips_calibration(recipe, tmp_path, capsys):
    engines = recipe / "engines"
    cache = json.loads((engines / "feature_runner_int8.calib.json").read_text())
    assert cache["format"] == quantize.CACHE_FORMAT and cache["samples"] == 4
    assert cache["model_sha256"] == quantize.file_sha256(FEAT)
    # another machine: only the cache and the float model, no calibration pairs
    assert build_int8.main(["--onnx", str(FEAT), "--engine-out", str(tmp_path / "feature_runner_int8.engine"),
                            "--calib-cache", str(engines / "feature_runner_int8.calib.json")]) == 0
    assert "calibration skipped" in capsys.readouterr().out
    assert (tmp_path / "feature_runner_int8.onnx").read_bytes() == (engines / "feature_runner_int8.onnx").read_bytes()


def test_stops_after_the_onnx_with_a_clear_message_without_tensorrt(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, even where it exists
    assert build_int8_post.main(["--onnx", str(POST), "--engine-out", str(tmp_path / "post.engine"),
                                 "--npz-dir", str(recipe / "npz")]) == 0
    out = capsys.readouterr().out
    assert "TensorRT is not importable here: stopped after the ONNX" in out
    assert "trtexec --onnx=" in out and "--stronglyTyped" in out
    assert (tmp_path / "post.onnx").is_file() and not (tmp_path / "post.engine").exists()


def test_quality_table_compares_every_precision_with_fp32(recipe, tmp_path, capsys):
    engines = recipe / "engines"
    result_file = tmp_path / "quality.json"
    assert int8_quality.main(["--feat-onnx", str(FEAT), "--post-onnx", str(POST),
                              "--feat-int8", str(engines / "feature_runner_int8.onnx"),
                              "--post-int8", str(engines / "post_runner_int8.onnx"),
                              "--synthetic", "4", "--calib-dir", str(recipe / "pairs"),
                              "--json-out", str(result_file)]) == 0
    table = capsys.readouterr().out
    print(table)
    for name in int8_quality.CONFIGS:
        assert f"| {name} |" in table
    results = json.loads(result_file.read_text())["results"]
    assert results["FP32"]["bit_identical"] and results["FP32"]["rel_l1"] == 0.0
    for name in int8_quality.CONFIGS[1:]:
        assert not results[name]["bit_identical"]
        assert 0.0 < results[name]["rel_l1"] < 0.03 and results[name]["cosine"] > 0.99
    assert results["FP16"]["rel_l1"] < 0.002  # float16 rounding only
    assert all("visible" in r for r in results.values())  # synthetic pairs: ground truth known
    for name in int8_quality.CONFIGS:  # quantization must not wreck accuracy against ground truth
        assert results[name]["epe_gt"] < results["FP32"]["epe_gt"] * 1.1 + 0.05


def test_quality_refuses_evaluation_pairs_that_were_calibration_pairs(recipe, capsys):
    engines = recipe / "engines"
    assert int8_quality.main(["--feat-onnx", str(FEAT), "--post-onnx", str(POST),
                              "--feat-int8", str(engines / "feature_runner_int8.onnx"),
                              "--post-int8", str(engines / "post_runner_int8.onnx"),
                              "--eval-dir", str(recipe / "pairs"), "--calib-dir", str(recipe / "pairs")]) == 2
    assert "are also calibration pairs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bad input

def test_empty_calibration_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert build_int8.main(["--onnx", str(FEAT), "--engine-out", str(tmp_path / "f.engine"),
                            "--calib-dir", str(tmp_path / "empty")]) == 2
    assert "holds no pairs" in capsys.readouterr().err


def test_calibration_pairs_of_another_size(tmp_path, capsys):
    calibration.write_pair_set(calibration.synthetic_pairs(2, (32, 64)), tmp_path / "pairs", "test")
    assert build_int8.main(["--onnx", str(FEAT), "--engine-out", str(tmp_path / "f.engine"),
                            "--calib-dir", str(tmp_path / "pairs")]) == 2
    assert "is 64x32 but the model takes 128x64" in capsys.readouterr().err


def test_npz_with_unexpected_arrays(recipe, tmp_path, capsys):
    source = sorted((recipe / "npz").glob("*.npz"))[0]
    with np.load(source, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "sample.npz", confidence=np.zeros((1, 1, 64, 128), np.float32), **arrays)
    assert build_int8_post.main(["--onnx", str(POST), "--engine-out", str(tmp_path / "p.engine"),
                                 "--npz-dir", str(tmp_path / "npz")]) == 2
    assert "unexpected ['confidence']" in capsys.readouterr().err


def test_onnx_that_is_not_a_stereo_stage(tmp_path, capsys):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "classifier", [x], [y])
    path = tmp_path / "classifier.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    assert build_int8.main(["--onnx", str(path), "--engine-out", str(tmp_path / "f.engine"),
                            "--calib-dir", str(tmp_path)]) == 2
    assert "neither a feature_runner" in capsys.readouterr().err
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not onnx at all")
    assert build_int8_post.main(["--onnx", str(tmp_path / "garbage.onnx"), "--engine-out", str(tmp_path / "p.engine"),
                                 "--npz-dir", str(tmp_path)]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_the_other_stage_is_refused_with_the_right_tool_named(tmp_path, capsys):
    assert build_int8.main(["--onnx", str(POST), "--engine-out", str(tmp_path / "f.engine"),
                            "--calib-dir", str(tmp_path)]) == 2
    assert "is a post_runner, not a feature_runner (arguments swapped? a post_runner is quantized with " \
           "flashstereo-build-int8-post)" in capsys.readouterr().err


def test_calibration_cache_of_another_model_is_refused(recipe, tmp_path, capsys):
    post_cache = recipe / "engines" / "post_runner_int8.calib.json"
    assert build_int8_post.main(["--onnx", str(resources.bundled_models(".onnx")[1]),
                                 "--engine-out", str(tmp_path / "p.engine"), "--calib-cache", str(post_cache)]) == 2
    assert "computed for another model" in capsys.readouterr().err
    (tmp_path / "bogus.json").write_text('{"ranges": {}}')
    assert build_int8.main(["--onnx", str(FEAT), "--engine-out", str(tmp_path / "f.engine"),
                            "--calib-cache", str(tmp_path / "bogus.json")]) == 2
    assert "is not a flashstereo INT8 calibration cache" in capsys.readouterr().err


def test_an_edited_or_mismatched_calibration_cache_is_refused(recipe, tmp_path, capsys):
    engines = recipe / "engines"
    payload = json.loads((engines / "feature_runner_int8.calib.json").read_text())
    cases = []
    for name, change in (("nan", lambda c: c["ranges"].__setitem__(next(iter(c["ranges"])), ["NaN", "NaN"])),
                         ("zero", lambda c: c["ranges"].__setitem__(next(iter(c["ranges"])), [0, 0])),
                         ("missing", lambda c: c["ranges"].pop("sum_1")),  # an input of a quantized op
                         ("minmax", lambda c: c.update(method="minmax", percentile=None))):
        edited = json.loads(json.dumps(payload))
        change(edited)
        (tmp_path / f"{name}.json").write_text(json.dumps(edited))
        cases.append(name)
    messages = {"nan": "not finite", "zero": "not finite", "missing": "calibrate again",
                "minmax": "computed with minmax, not the requested percentile"}
    for name in cases:
        out = tmp_path / name / "feature_runner_int8.engine"
        assert build_int8.main(["--onnx", str(FEAT), "--engine-out", str(out),
                                "--calib-cache", str(tmp_path / f"{name}.json")]) == 2, name
        assert messages[name] in capsys.readouterr().err, name
        assert not out.with_suffix(".onnx").exists()  # nothing half-built is left


def test_models_that_cannot_be_quantized_are_refused_before_calibrating(recipe, tmp_path, capsys):
    quantized = recipe / "engines" / "feature_runner_int8.onnx"
    assert build_int8.main(["--onnx", str(quantized), "--engine-out", str(tmp_path / "f.engine"),
                            "--calib-dir", str(recipe / "pairs")]) == 2
    assert "already holds" in capsys.readouterr().err and not (tmp_path / "f.calib.json").exists()
    old = onnx.load(str(FEAT))
    old.opset_import[0].version = 12
    with pytest.raises(ModelError, match="opset 12; per-channel Q/DQ needs opset 13"):
        quantize.check_float_model(old, "feature_runner.onnx")


def test_damaged_or_non_finite_calibration_tensors_are_named(recipe, tmp_path, capsys):
    source = sorted((recipe / "npz").glob("*.npz"))[0]
    (tmp_path / "npz").mkdir()
    damaged = bytearray(source.read_bytes())
    middle = len(damaged) // 2
    damaged[middle:middle + 100] = bytes(100)  # the zip headers stay intact: the data's CRC fails
    (tmp_path / "npz" / source.name).write_bytes(bytes(damaged))
    assert build_int8_post.main(["--onnx", str(POST), "--engine-out", str(tmp_path / "p.engine"),
                                 "--npz-dir", str(tmp_path / "npz")]) == 2
    assert f"{source.name}: cannot be read" in capsys.readouterr().err
    with np.load(source, allow_pickle=False) as archive:
        arrays = {name: archive[name].copy() for name in archive.files}
    arrays["gwc_volume"].flat[0] = np.inf
    with pytest.raises(ModelError, match="'gwc_volume' holds NaN or inf"):
        quantize.calibrate(POST, [arrays], log=lambda m: None)


# ----------------------------------------------------------------------- TensorRT, through a fake module

def fake_tensorrt(parse_ok=True):
    """The parts of the TensorRT 10/11 Python API that build_engine uses, recording how they are called."""
    calls = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.0-fake"
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            calls.append(("Logger", severity))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):  # a strongly typed build must not set precision flags
            calls.append(("set_flag", flag))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return "network"

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network", network))
            return b"serialized-engine"

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            return parse_ok

        def get_error(self, index):
            return "unsupported operator Foo"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt, calls


def test_build_engine_uses_a_strongly_typed_network(recipe, tmp_path, monkeypatch):
    trt, calls = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    fp16 = recipe / "engines" / "feature_runner_int8_fp16.onnx"
    engine = quantize.build_engine(fp16, tmp_path / "feature_runner_int8.engine", workspace_mib=256, log=lambda m: None)
    assert engine.read_bytes() == b"serialized-engine"
    assert ("create_network", 1 << 5) in calls and ("parse_from_file", str(fp16)) in calls
    assert ("set_memory_pool_limit", "WORKSPACE", 256 << 20) in calls
    assert not [c for c in calls if c[0] == "set_flag"]


def test_build_engine_reports_parser_errors_and_missing_tensorrt(tmp_path, monkeypatch):
    trt, _ = fake_tensorrt(parse_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(ModelError, match="unsupported operator Foo"):
        quantize.build_engine(FEAT, tmp_path / "x.engine", log=lambda m: None)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)  # TensorRT 8.6
    with pytest.raises(BackendUnavailableError, match="need TensorRT 10 or newer"):
        quantize.build_engine(FEAT, tmp_path / "x.engine", log=lambda m: None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not importable"):
        quantize.build_engine(FEAT, tmp_path / "x.engine", log=lambda m: None)


def test_calibration_samples_must_fit_the_model():
    wrong = {"left": np.zeros((1, 3, 32, 64), np.float32), "right": np.zeros((1, 3, 32, 64), np.float32)}
    with pytest.raises(ModelError, match=r"calibration sample 1: 'left' is float32 \(1, 3, 32, 64\)"):
        quantize.calibrate(FEAT, [wrong], log=lambda m: None)
    with pytest.raises(ModelError, match="no calibration samples"):
        quantize.calibrate(FEAT, [], log=lambda m: None)
    with pytest.raises(ModelError, match="unknown calibration method 'kl'"):
        quantize.QuantSettings(method="kl")


# ------------------------------------------------------------------ models as exporters really write them

def save_with_external_data(source, folder, location):
    """The model as torch.onnx.export(..., dynamo=True) writes it: graph in .onnx, the weights in `location`.
    Tensors under 256 bytes stay inline, as torch leaves them: ONNX Runtime reads axes and shape constants
    while it loads the graph, before external data (with size_threshold=0 it cannot load the stand-in)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    onnx.save_model(onnx.load(str(source)), str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=256)
    return target


def disparity_of(feat, post):
    scene = synthetic.make_scene("planes", *SIZE, seed=5)
    pipe = CpuStereoPipeline(feat, post, resize=False)
    try:
        return pipe.infer(scene.left, scene.right).copy()
    finally:
        pipe.close()


def test_models_with_external_data_go_through_the_whole_recipe(tmp_path, capsys):
    models = tmp_path / "models"
    feat = save_with_external_data(FEAT, models, "feature_runner.onnx.data")
    post = save_with_external_data(POST, models, "post_weights.bin")  # any name the model's entries give
    calibration.write_pair_set(calibration.synthetic_pairs(2, SIZE), tmp_path / "pairs", "test")
    engines = tmp_path / "engines"
    assert build_int8.main(["--onnx", str(feat), "--engine-out", str(engines / "feature_runner_int8.engine"),
                            "--calib-dir", str(tmp_path / "pairs")]) == 0
    assert gen_post_calib_data.main(["--calib-dir", str(tmp_path / "pairs"), "--out-dir", str(tmp_path / "npz"),
                                     "--feat-engine", str(feat), "--post-engine", str(post)]) == 0
    assert build_int8_post.main(["--onnx", str(post), "--engine-out", str(engines / "post_runner_int8.engine"),
                                 "--npz-dir", str(tmp_path / "npz")]) == 0
    assert int8_quality.main(["--feat-onnx", str(feat), "--post-onnx", str(post),
                              "--feat-int8", str(engines / "feature_runner_int8.onnx"),
                              "--post-int8", str(engines / "post_runner_int8.onnx"), "--synthetic", "1"]) == 0
    capsys.readouterr()
    for stem in ("feature_runner_int8", "post_runner_int8"):  # the input had external data: so do the outputs
        for name in (f"{stem}.onnx", f"{stem}_fp16.onnx"):
            assert (engines / f"{name}.data").is_file()
    # the pipeline loads them from their own folder: moved elsewhere, with nothing of models/ left
    moved = tmp_path / "moved"
    engines.rename(moved)
    models.rename(tmp_path / "gone")
    for suffix in ("", "_fp16"):
        disparity = disparity_of(moved / f"feature_runner_int8{suffix}.onnx", moved / f"post_runner_int8{suffix}.onnx")
        assert np.isfinite(disparity).all()


def test_calibration_cache_covers_the_external_weights(tmp_path, capsys):
    feat = save_with_external_data(FEAT, tmp_path / "models", "feature_runner.onnx.data")
    calibration.write_pair_set(calibration.synthetic_pairs(1, SIZE), tmp_path / "pairs", "test")
    engine = tmp_path / "engines" / "feature_runner_int8.engine"
    assert build_int8.main(["--onnx", str(feat), "--engine-out", str(engine),
                            "--calib-dir", str(tmp_path / "pairs")]) == 0
    weights = tmp_path / "models" / "feature_runner.onnx.data"
    changed = bytearray(weights.read_bytes())
    changed[-4:] = np.float32(0.5).tobytes()  # retrained weights: the .onnx itself is byte for byte the same
    weights.write_bytes(bytes(changed))
    assert build_int8.main(["--onnx", str(feat), "--engine-out", str(engine),
                            "--calib-cache", str(engine.with_suffix(".calib.json"))]) == 2
    assert "computed for another model" in capsys.readouterr().err


def test_outputs_too_large_for_one_protobuf_are_written_with_external_data(recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "PROTOBUF_LIMIT", 0)  # stands for a model over protobuf's 2 GB
    engine = tmp_path / "feature_runner_int8.engine"
    assert build_int8.main(["--onnx", str(FEAT), "--engine-out", str(engine),
                            "--calib-cache", str(recipe / "engines" / "feature_runner_int8.calib.json")]) == 0
    for name in ("feature_runner_int8.onnx", "feature_runner_int8_fp16.onnx"):
        assert (tmp_path / f"{name}.data").is_file()
    assert np.isfinite(disparity_of(tmp_path / "feature_runner_int8.onnx", POST)).all()


def test_a_post_model_that_does_not_take_every_feature_output(tmp_path, capsys):
    pruned = post_model_without(tmp_path)[1]
    assert quantize.identify_stage(onnx.load(str(pruned)), pruned) == quantize.POST_STAGE
    calibration.write_pair_set(calibration.synthetic_pairs(2, SIZE), tmp_path / "pairs", "test")
    assert gen_post_calib_data.main(["--calib-dir", str(tmp_path / "pairs"), "--out-dir", str(tmp_path / "npz"),
                                     "--feat-engine", str(FEAT), "--post-engine", str(pruned)]) == 0
    engine = tmp_path / "engines" / "post_runner_int8.engine"
    assert build_int8_post.main(["--onnx", str(pruned), "--engine-out", str(engine),
                                 "--npz-dir", str(tmp_path / "npz")]) == 0
    qdq = engine.with_suffix(".onnx")
    inputs, _ = quantize.model_io(onnx.load(str(qdq)), qdq)
    assert sorted(inputs) == sorted(set(contract.POST_INPUTS) - {"features_left_32"})
    assert np.isfinite(disparity_of(FEAT, qdq)).all()


def test_a_post_stage_takes_the_volume_and_feature_outputs_only():
    def post_with_inputs(names):
        values = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in names]
        disp = onnx.helper.make_tensor_value_info("disp", onnx.TensorProto.FLOAT, [1])
        node = onnx.helper.make_node("Identity", [names[0]], ["disp"])
        return onnx.helper.make_model(onnx.helper.make_graph([node], "post", values, [disp]))

    assert quantize.identify_stage(post_with_inputs(["gwc_volume"]), "p.onnx") == quantize.POST_STAGE
    for names in (["features_left_04", "stem_2x"], ["gwc_volume", "confidence"], ["gwc_volume", "left"]):
        with pytest.raises(ModelError, match="neither a feature_runner"):
            quantize.identify_stage(post_with_inputs(names), "p.onnx")


def test_a_post_model_without_quantizable_ops_is_refused_in_one_line(recipe, tmp_path, capsys):
    model = onnx.load(str(POST))
    for node in model.graph.node:  # the box filters become max filters: no op left that the post stage quantizes
        if node.op_type == "AveragePool":
            node.op_type = "MaxPool"
            kept = [a for a in node.attribute if a.name != "count_include_pad"]
            del node.attribute[:]
            node.attribute.extend(kept)
    path = tmp_path / "post_runner.onnx"
    onnx.save(model, str(path))
    assert build_int8_post.main(["--onnx", str(path), "--engine-out", str(tmp_path / "p.engine"),
                                 "--npz-dir", str(recipe / "npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "has no ['Conv', 'ConvTranspose', 'MatMul', 'Gemm', 'AveragePool'] ops to quantize" in err


def test_symbolic_output_dims_that_onnx_runtime_resolves_are_accepted(tmp_path):
    model = onnx.load(str(FEAT))
    for output in model.graph.output:  # as the legacy exporter declares them
        for index, dim in enumerate(output.type.tensor_type.shape.dim):
            dim.dim_param = f"Slice{output.name}_dim_{index}"
    feat = tmp_path / "feature_runner.onnx"
    onnx.save(model, str(feat))
    assert np.isfinite(disparity_of(feat, POST)).all()  # the pipeline takes it
    calibration.write_pair_set(calibration.synthetic_pairs(1, SIZE), tmp_path / "pairs", "test")
    engine = tmp_path / "engines" / "feature_runner_int8.engine"
    assert build_int8.main(["--onnx", str(feat), "--engine-out", str(engine),
                            "--calib-dir", str(tmp_path / "pairs")]) == 0
    assert np.isfinite(disparity_of(engine.with_suffix(".onnx"), POST)).all()


@pytest.mark.parametrize("outputs", [["--engine-out", "{dir}/feature_runner.engine"],
                                     ["--engine-out", "{dir}/f.engine", "--onnx-out", "{dir}/feature_runner.onnx"],
                                     ["--engine-out", "{dir}/f.engine", "--calib-cache", "{dir}/feature_runner.onnx",
                                      "--recalibrate"]])
def test_outputs_that_would_overwrite_the_float_model_are_refused(tmp_path, capsys, outputs):
    """An engine beside its ONNX with the same stem names its Q/DQ output after the model itself."""
    model = tmp_path / "feature_runner.onnx"
    model.write_bytes(FEAT.read_bytes())
    calibration.write_pair_set(calibration.synthetic_pairs(2, SIZE), tmp_path / "pairs", "test")
    argv = ["--onnx", str(model), "--calib-dir", str(tmp_path / "pairs")] + [a.format(dir=tmp_path) for a in outputs]
    assert build_int8.main(argv) == 2
    assert "would overwrite the model" in capsys.readouterr().err
    assert model.read_bytes() == FEAT.read_bytes()
