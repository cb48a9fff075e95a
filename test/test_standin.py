"""The stand-in model: valid ONNX, exactly the two-stage contract, and ONNX Runtime == torch."""
import numpy as np
import onnx
import pytest
import yaml

from flashstereo_ros import contract, resources, standin, synthetic
from flashstereo_ros.gwc import gwc_volume, normalize_groups

FEATURE_CHANNELS = {"features_left_04": 224, "features_left_08": 192, "features_left_16": 320,
                    "features_left_32": 304, "features_right_04": 224, "stem_2x": 32}
ELEM_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}


def expected_io(h, w, volume_dtype=np.float16):
    """The contract table of DESIGN.md for an h x w engine: name -> (shape, dtype)."""
    images = {name: ((1, 3, h, w), np.float32) for name in contract.FEATURE_INPUTS}
    feats = {name: ((1, FEATURE_CHANNELS[name], h // contract.STRIDES[name], w // contract.STRIDES[name]), np.float32)
             for name in contract.FEATURE_OUTPUTS}
    volume = {contract.GWC_VOLUME: ((1, 8, 48, h // 4, w // 4), volume_dtype)}
    return images, feats, {**feats, **volume}, {contract.DISPARITY: ((1, 1, h, w), np.float32)}


def onnx_io(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)

    def table(values):
        return {v.name: (tuple(d.dim_value for d in v.type.tensor_type.shape.dim),
                         ELEM_TYPES[v.type.tensor_type.elem_type]) for v in values}

    return table(model.graph.input), table(model.graph.output)


@pytest.mark.parametrize("size", [(480, 640), (64, 128)])
def test_bundled_onnx_matches_contract(size):
    feat, post = resources.bundled_models(".onnx", size)
    images, feats, post_inputs, outputs = expected_io(*size)
    assert onnx_io(feat) == (images, feats)
    assert onnx_io(post) == (post_inputs, outputs)
    config = yaml.safe_load((feat.parent / "onnx.yaml").read_text())
    assert (config["max_disp"], config["cv_group"], config["image_size"]) == (192, 8, list(size))


@pytest.fixture(scope="module")
def scene_inputs():
    scene = synthetic.make_scene("planes", 64, 128, seed=3)
    planar = [img.transpose(2, 0, 1)[None].astype(np.float32) for img in (scene.left, scene.right)]
    return planar


def test_onnxruntime_equals_torch_module(scene_inputs):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    feat_path, post_path = resources.bundled_models(".onnx", (64, 128))
    feature, post = standin.build_modules(standin.StandInOptions(64, 128))
    left, right = scene_inputs
    with torch.no_grad():
        torch_feats = [t.numpy() for t in feature(torch.from_numpy(left), torch.from_numpy(right))]
    ort_feats = ort.InferenceSession(str(feat_path)).run(None, {"left": left, "right": right})
    for name, a, b in zip(contract.FEATURE_OUTPUTS, ort_feats, torch_feats):
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b), name

    volume = gwc_volume(normalize_groups(torch_feats[0], 8), normalize_groups(torch_feats[4], 8), 8, 48)
    post_inputs = dict(zip(contract.FEATURE_OUTPUTS, torch_feats), gwc_volume=volume)
    with torch.no_grad():
        torch_disp = post(*(torch.from_numpy(post_inputs[n]) for n in contract.POST_INPUTS)).numpy()
    ort_disp = ort.InferenceSession(str(post_path)).run(None, post_inputs)[0]
    assert np.linalg.norm(ort_disp - torch_disp) <= 1e-4 * np.linalg.norm(torch_disp)


@pytest.mark.slow
def test_export_at_another_size_and_float32_volume(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    options = standin.StandInOptions(96, 160, volume_dtype="float32")
    standin.export(tmp_path, options, formats=("onnx",))
    images, feats, post_inputs, outputs = expected_io(96, 160, np.float32)
    assert onnx_io(tmp_path / "feature_runner.onnx") == (images, feats)
    assert onnx_io(tmp_path / "post_runner.onnx") == (post_inputs, outputs)


def test_weights_are_deterministic():
    pytest.importorskip("torch")
    first, _ = standin.build_modules(standin.StandInOptions(64, 128))
    second, _ = standin.build_modules(standin.StandInOptions(64, 128))
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name


@pytest.mark.parametrize("options, formats, match", [
    (standin.StandInOptions(100, 128), ("onnx",), "multiples of 32"),
    (standin.StandInOptions(0, 128), ("onnx",), "multiples of 32"),
    (standin.StandInOptions(64, 128, extra_layers=1, extra_channels=0), ("onnx",), "extra channels"),
    (standin.StandInOptions(64, 128), ("foo",), "formats must be"),
    (standin.StandInOptions(64, 128), (), "formats must be"),
])
def test_generator_rejects_bad_options_before_writing(tmp_path, options, formats, match):
    with pytest.raises(ValueError, match=match):
        standin.export(tmp_path / "out", options, formats)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:  # the command line: an argparse error, exit code 2
        standin.main(["--out", str(tmp_path / "out"), "--height", str(options.height), "--width",
                      str(options.width), "--extra-layers", str(options.extra_layers), "--extra-channels",
                      str(options.extra_channels), "--formats", ",".join(formats)])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("size", [(480, 640), (64, 128)])
def test_bundled_onnx_disparity_is_finite_at_hard_edges(size):
    """A black/white checkerboard: every upsampling guide colour is far from its neighbours', where weights
    that are not taken relative to the nearest colour all underflow and the ratio is 0/0."""
    from flashstereo_ros import CpuStereoPipeline

    h, w = size
    yy, xx = np.mgrid[:h, :w]
    board = (((yy // 8) + (xx // 8)) % 2 * 255).astype(np.uint8)
    feat, post = resources.bundled_models(".onnx", size)
    pipe = CpuStereoPipeline(str(feat), str(post), input_h=h, input_w=w)
    for left, right in ((board, np.roll(board, 5, axis=1)), (np.full_like(board, 255), np.zeros_like(board))):
        assert np.isfinite(pipe.infer(left, right)).all()


@pytest.mark.parametrize("size", [(480, 640), (64, 128)])
def test_the_same_image_twice_gives_zero_disparity(size):
    """At either end of the disparity range the sub-pixel step has one neighbour only: it must not move
    the peak (it used to put every zero disparity at -0.5 px, and so behind the camera)."""
    from flashstereo_ros import CpuStereoPipeline

    scene = synthetic.make_scene("mixed", *size, seed=4)
    pipe = CpuStereoPipeline(*resources.bundled_models(".onnx", size))
    assert np.array_equal(pipe.infer(scene.left, scene.left), np.zeros(size, np.float32))
