"""The CPU pipeline: accuracy on synthetic scenes with ground truth, input handling, clear errors."""
import shutil

import numpy as np
import onnx
import pytest
import yaml

from flashstereo_ros import CpuStereoPipeline, resources, synthetic
from flashstereo_ros.errors import ModelError, StereoInputError

from conftest import post_model_without

ACCURACY_SCENES = [("planes", 1), ("slanted", 2), ("occlusion", 3), ("mixed", 4)]
MAE_BOUND_PX, BAD_PX, GOOD_FRACTION = 1.0, 3.0, 0.90


@pytest.fixture(scope="module")
def pipe():
    return CpuStereoPipeline()


@pytest.fixture(scope="module")
def small_pipe():
    return CpuStereoPipeline(*resources.bundled_models(".onnx", (64, 128)))


def accuracy(disparity, scene):
    err = np.abs(disparity - scene.disparity)[scene.valid]
    return float(err.mean()), float((err <= BAD_PX).mean())


@pytest.mark.parametrize("kind,seed", ACCURACY_SCENES)
def test_disparity_accuracy_on_synthetic_scene(pipe, kind, seed):
    scene = synthetic.make_scene(kind, 480, 640, seed=seed)
    disparity = pipe.infer(scene.left, scene.right)
    mae, good = accuracy(disparity, scene)
    print(f"{kind}: MAE {mae:.3f} px, within {BAD_PX:.0f} px {good * 100:.2f}% of {scene.valid.sum()} pixels")
    assert disparity.shape == (480, 640) and disparity.dtype == np.float32
    assert mae < MAE_BOUND_PX and good > GOOD_FRACTION


def test_camera_size_not_multiple_of_32_is_resized_and_scaled_back(pipe):
    scene = synthetic.make_scene("planes", 375, 500, seed=7)
    disparity = pipe.infer(scene.left, scene.right)
    mae, good = accuracy(disparity, scene)
    print(f"375x500 -> 480x640 -> 375x500: MAE {mae:.3f} px, within 3 px {good * 100:.2f}%")
    assert disparity.shape == (375, 500)
    assert mae < MAE_BOUND_PX and good > GOOD_FRACTION


def test_encodings_agree(small_pipe):
    scene = synthetic.make_scene("mixed", 64, 128, seed=1)
    rgb = small_pipe.infer(scene.left, scene.right)
    bgr = small_pipe.infer(scene.left[..., ::-1].copy(), scene.right[..., ::-1].copy(), encoding="bgr8")
    alpha = np.full(scene.left.shape[:2] + (1,), 255, np.uint8)
    rgba = small_pipe.infer(np.concatenate([scene.left, alpha], 2), np.concatenate([scene.right, alpha], 2))
    assert np.array_equal(rgb, bgr) and np.array_equal(rgb, rgba)
    grey = (scene.left.mean(axis=2)).astype(np.uint8), (scene.right.mean(axis=2)).astype(np.uint8)
    mono = small_pipe.infer(*grey, encoding="mono8")
    assert mono.shape == rgb.shape and np.isfinite(mono).all()


def test_timings_cover_every_stage(small_pipe):
    scene = synthetic.make_scene("planes", 64, 128)
    small_pipe.infer(scene.left, scene.right)
    assert set(small_pipe.timings) >= {"preprocess", "feature", "norm", "gwc", "post", "total"}
    assert all(v >= 0 for v in small_pipe.timings.values())


@pytest.mark.parametrize("left,right,message", [
    (np.zeros((64, 128, 3), np.uint8), np.zeros((64, 120, 3), np.uint8), "one size"),
    (np.zeros((64, 128, 3), np.float32), np.zeros((64, 128, 3), np.float32), "uint8"),
    (np.zeros((64, 128, 2), np.uint8), np.zeros((64, 128, 2), np.uint8), r"\(H,W,1\|3\|4\)"),
    (np.zeros((0, 128, 3), np.uint8), np.zeros((0, 128, 3), np.uint8), "empty"),
    ([[0]], [[0]], "numpy array"),
])
def test_bad_images_are_named(small_pipe, left, right, message):
    with pytest.raises(StereoInputError, match=message):
        small_pipe.infer(left, right)


def test_wrong_channels_for_encoding(small_pipe):
    with pytest.raises(StereoInputError, match="needs 1 channel"):
        small_pipe.infer(np.zeros((64, 128, 3), np.uint8), np.zeros((64, 128, 3), np.uint8), encoding="mono8")
    with pytest.raises(StereoInputError, match="not supported"):
        small_pipe.infer(np.zeros((64, 128), np.uint8), np.zeros((64, 128), np.uint8), encoding="bayer_rggb8")


def test_size_mismatch_with_resize_disabled():
    pipe = CpuStereoPipeline(*resources.bundled_models(".onnx", (64, 128)), resize=False)
    with pytest.raises(StereoInputError, match="resizing is disabled"):
        pipe.infer(np.zeros((60, 128, 3), np.uint8), np.zeros((60, 128, 3), np.uint8))


def test_input_size_must_match_engine():
    with pytest.raises(ModelError, match="take 64x128 images"):
        CpuStereoPipeline(*resources.bundled_models(".onnx", (64, 128)), input_h=480, input_w=640)


def test_missing_model_file(tmp_path):
    feat, _ = resources.bundled_models(".onnx", (64, 128))
    with pytest.raises(ModelError, match="not found"):
        CpuStereoPipeline(feat, tmp_path / "post_runner.onnx")


def test_corrupt_model_file(tmp_path):
    feat, _ = resources.bundled_models(".onnx", (64, 128))
    bad = tmp_path / "post_runner.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(ModelError, match="cannot load"):
        CpuStereoPipeline(feat, bad)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelError, match="suffix"):
        CpuStereoPipeline(path, path)


def renamed_copy(tmp_path, old, new):
    """The 64x128 models with one post_runner input renamed (graph input and its uses)."""
    src = resources.model_dir(64, 128)
    for name in ("feature_runner.onnx", "onnx.yaml"):
        shutil.copy(src / name, tmp_path / name)
    model = onnx.load(str(src / "post_runner.onnx"))
    for value in model.graph.input:
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
    onnx.save(model, str(tmp_path / "post_runner.onnx"))
    return tmp_path / "feature_runner.onnx", tmp_path / "post_runner.onnx"


def test_onnx_with_other_names_is_refused_naming_them(tmp_path):
    feat, post = renamed_copy(tmp_path, "gwc_volume", "cost_volume")
    with pytest.raises(ModelError, match=r"missing inputs \['gwc_volume'\]") as info:
        CpuStereoPipeline(feat, post)
    assert "cost_volume" in str(info.value)


def test_tensor_names_in_onnx_yaml_map_other_names(tmp_path):
    feat, post = renamed_copy(tmp_path, "gwc_volume", "cost_volume")
    config = yaml.safe_load((tmp_path / "onnx.yaml").read_text())
    config["tensor_names"] = {"gwc_volume": "cost_volume"}
    (tmp_path / "onnx.yaml").write_text(yaml.safe_dump(config))
    scene = synthetic.make_scene("planes", 64, 128)
    renamed = CpuStereoPipeline(feat, post).infer(scene.left, scene.right)
    original = CpuStereoPipeline(*resources.bundled_models(".onnx", (64, 128))).infer(scene.left, scene.right)
    assert np.array_equal(renamed, original)


def test_onnx_yaml_that_disagrees_with_the_engine(tmp_path):
    feat, post = renamed_copy(tmp_path, "stem_2x", "stem_2x")
    config = yaml.safe_load((tmp_path / "onnx.yaml").read_text())
    config["max_disp"] = 256
    (tmp_path / "onnx.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ModelError, match="max_disp=256 disagrees"):
        CpuStereoPipeline(feat, post)


def test_a_post_engine_without_a_feature_input_it_does_not_read_runs(tmp_path, small_pipe):
    """TensorRT and the legacy ONNX exporter drop inputs a pruned post stage does not read: such an engine
    gets the feature outputs it declares. Here features_left_32 becomes a constant holding this scene's
    values, so the output must equal the full model's bit for bit."""
    scene = synthetic.make_scene("planes", 64, 128, seed=5)
    expected = small_pipe.infer(scene.left, scene.right)
    pruned = CpuStereoPipeline(*post_model_without(tmp_path, "features_left_32",
                                                   small_pipe.buffers["features_left_32"].copy()))
    try:
        assert "features_left_32" not in pruned.geometry.post_inputs
        assert np.array_equal(pruned.infer(scene.left, scene.right), expected)
    finally:
        pruned.close()


def test_a_post_engine_without_the_volume_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"post_runner is missing inputs \['gwc_volume'\]"):
        CpuStereoPipeline(*post_model_without(tmp_path, "gwc_volume"))


def test_stages_swapped(tmp_path):
    feat, post = resources.bundled_models(".onnx", (64, 128))
    with pytest.raises(ModelError, match="feature_runner is missing inputs"):
        CpuStereoPipeline(post, feat)


def test_engine_output_outside_the_contract_gets_a_scratch_buffer(tmp_path, small_pipe):
    """A feature engine with an extra output (e.g. a debug tensor) still runs: it is bound to scratch memory."""
    source = resources.bundled_models(".onnx", (64, 128))[0].parent
    for item in source.iterdir():
        shutil.copy(item, tmp_path / item.name)
    model = onnx.load(str(tmp_path / "feature_runner.onnx"))
    stem = next(o for o in model.graph.output if o.name == "stem_2x")
    model.graph.node.append(onnx.helper.make_node("Identity", ["stem_2x"], ["debug_stem"]))
    extra = onnx.ValueInfoProto()
    extra.CopyFrom(stem)
    extra.name = "debug_stem"
    model.graph.output.append(extra)
    onnx.save(model, str(tmp_path / "feature_runner.onnx"))
    scene = synthetic.make_scene("planes", 64, 128, seed=3)
    extended = CpuStereoPipeline(str(tmp_path / "feature_runner.onnx"), str(tmp_path / "post_runner.onnx"))
    try:
        assert "scratch:debug_stem" in extended.buffers
        assert np.array_equal(extended.infer(scene.left, scene.right), small_pipe.infer(scene.left, scene.right))
    finally:
        extended.close()


def test_submit_and_pipelined_stereo_work_with_the_cpu_pipeline():
    """The CPU pipeline has nothing asynchronous: submit() computes at once, and PipelinedStereo still
    returns every output in order (no overlap, the same API)."""
    from flashstereo_ros import PipelinedStereo

    scenes = [synthetic.make_scene("mixed", 64, 128, seed=80 + i) for i in range(3)]
    with PipelinedStereo([CpuStereoPipeline(*resources.bundled_models(".onnx", (64, 128)))]) as group:
        frame = group.submit(scenes[0].left, scenes[0].right)
        assert frame.done()
        first = frame.result().disparity
        outputs = [out.disparity for out in group.map((s.left, s.right) for s in scenes)]
        expected = [group.pipelines[0].infer(s.left, s.right) for s in scenes]
    assert np.array_equal(first, expected[0])
    assert all(np.array_equal(a, b) for a, b in zip(outputs, expected))


def test_one_pipeline_used_from_several_threads_gives_the_single_threaded_results(small_pipe):
    """Frames from several threads take turns on the shared host buffers (as on the GPU pipeline)."""
    import threading

    scenes = [synthetic.make_scene("mixed", 64, 128, seed=seed) for seed in (11, 12)]
    expected = [small_pipe.infer(s.left, s.right) for s in scenes]
    start, wrong = threading.Barrier(4), []

    def run(worker):
        start.wait()
        for i in range(20):
            k = (worker + i) % 2
            if not np.array_equal(small_pipe.infer(scenes[k].left, scenes[k].right), expected[k]):
                wrong.append((worker, i))

    threads = [threading.Thread(target=run, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_context_manager_closes_and_a_closed_pipeline_says_so():
    from flashstereo_ros import create_pipeline

    scene = synthetic.make_scene("planes", 64, 128)
    with create_pipeline(*resources.bundled_models(".onnx", (64, 128)), device="cpu") as pipe:
        assert pipe.infer(scene.left, scene.right).shape == (64, 128)
    pipe.close()  # a second close is harmless
    with pytest.raises(StereoInputError, match="pipeline is closed"):
        pipe.infer(scene.left, scene.right)
    with pytest.raises(StereoInputError, match="pipeline is closed"):
        pipe.submit(scene.left, scene.right)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix itself warns
def test_np_matrix_images_are_taken_as_arrays(small_pipe):
    scene = synthetic.make_scene("planes", 64, 128)
    left, right = scene.left.mean(axis=2).astype(np.uint8), scene.right.mean(axis=2).astype(np.uint8)
    assert np.array_equal(small_pipe.infer(np.asmatrix(left), np.asmatrix(right)), small_pipe.infer(left, right))
