"""Wrong arguments to the public constructors and a broken onnx.yaml are named where they are given."""
import numpy as np
import pytest

from flashstereo_ros import CpuStereoPipeline, cuda, resources
from flashstereo_ros.contract import ModelConfig
from flashstereo_ros.errors import ModelError, StereoInputError

SMALL_MODELS = resources.bundled_models(".onnx", (64, 128))


@pytest.mark.parametrize("options,error,message", [
    ({"input_h": "64", "input_w": 128}, TypeError, "input_h must be a positive integer or None, got str '64'"),
    ({"input_h": 64, "input_w": 128.0}, TypeError, "input_w must be a positive integer or None, got float"),
    ({"input_h": True}, TypeError, "input_h must be a positive integer or None, got bool"),
    ({"input_w": 0}, ValueError, "input_w must be a positive integer or None, got 0"),
    ({"threads": 1.5}, TypeError, "threads must be a positive integer or None, got float 1.5"),
    ({"threads": -1}, ValueError, "threads must be a positive integer or None, got -1"),
])
def test_cpu_pipeline_arguments_are_checked(options, error, message):
    with pytest.raises(error, match=message):
        CpuStereoPipeline(*SMALL_MODELS, **options)


def test_numpy_integers_are_valid_sizes_and_thread_counts():
    pipe = CpuStereoPipeline(*SMALL_MODELS, input_h=np.int64(64), input_w=np.int32(128), threads=np.int16(1))
    assert pipe.input_size == (64, 128)
    pipe.close()


@pytest.mark.parametrize("class_path", ["flashstereo_ros.pipeline.FlashStereoPipeline",
                                        "flashstereo_ros.stock.StockPipeline"])
def test_gpu_pipelines_check_the_input_size_before_any_cuda_call(monkeypatch, class_path):
    import importlib

    module, name = class_path.rsplit(".", 1)
    pipeline_class = getattr(importlib.import_module(module), name)

    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA was called before the arguments were checked")

    monkeypatch.setattr(cuda, "primary_context", no_cuda)
    with pytest.raises(TypeError, match="input_h must be a positive integer"):
        pipeline_class(*SMALL_MODELS, input_h="480", input_w=640)


@pytest.mark.parametrize("content,message", [
    (b"\xff\xfe\x00\x81 not text", "cannot read model config .*onnx.yaml .*UTF-8"),
    (b"max_disp: [192\n", "cannot read model config .*onnx.yaml"),
    (b"- 192\n", "onnx.yaml must be a YAML mapping, got list"),
    (b"max_disp: 192.5\n", "onnx.yaml: malformed value \\(max_disp must be an integer, got 192.5\\)"),
    (b"image_size: 64x128\n", "onnx.yaml: malformed value \\(image_size must be \\[height, width\\]"),
    (b"tensor_names: {1: x, gwc_volume: y}\n", "onnx.yaml: tensor_names must map contract names"),
    (b"max_disp: " + b"9" * 5001 + b"\n", "cannot read model config .*onnx.yaml .*4300 digits"),
])
def test_broken_onnx_yaml_is_a_model_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "onnx.yaml").write_bytes(content)
    with pytest.raises(ModelError, match=message):
        ModelConfig.load(tmp_path / "onnx.yaml")


def test_binary_onnx_yaml_beside_the_models_is_a_model_error(tmp_path):
    for model in SMALL_MODELS:
        (tmp_path / model.name).write_bytes(model.read_bytes())
    (tmp_path / "onnx.yaml").write_bytes(bytes(range(256)))
    with pytest.raises(ModelError, match="onnx.yaml"):
        CpuStereoPipeline(tmp_path / SMALL_MODELS[0].name, tmp_path / SMALL_MODELS[1].name)


def test_model_path_in_a_symlink_loop_is_a_model_error_naming_it(tmp_path):
    loop = tmp_path / "feature_runner.onnx"
    loop.symlink_to(loop)
    with pytest.raises(ModelError, match="feature_runner.onnx cannot be resolved"):
        ModelConfig.beside(loop, SMALL_MODELS[1])


@pytest.mark.parametrize("options, message", [
    ({"camera": "front"}, "camera must be a StereoCamera"),
    ({"want_depth": True}, "need the stereo camera"),
    ({"camera": "small", "want_points": True, "points_stride": 2.5}, "integer >= 1"),
    ({"camera": "small", "want_points": True, "points_stride": 0}, "integer >= 1"),
    ({"camera": "small", "want_points": True, "points_stride": 10**30}, "integer >= 1 and <= 2147483647"),
    ({"camera": "small", "limits": None}, "limits must be a DepthLimits"),
    ({"camera": "other size"}, "does not match the camera"),
])
def test_output_requests_are_checked_before_the_frame_runs(options, message):
    from flashstereo_ros import synthetic
    from flashstereo_ros.depth import StereoCamera

    def camera(h, w):
        fx = 0.8 * w
        return StereoCamera.from_projections([fx, 0, w / 2, 0, 0, fx, h / 2, 0, 0, 0, 1, 0],
                                             [fx, 0, w / 2, -fx * 0.1, 0, fx, h / 2, 0, 0, 0, 1, 0], w, h)

    cameras = {"small": camera(64, 128), "other size": camera(48, 96)}
    options = {k: cameras.get(v, v) if k == "camera" else v for k, v in options.items()}
    scene = synthetic.make_scene("planes", 64, 128, seed=2)
    pipe = CpuStereoPipeline(*resources.bundled_models(".onnx", (64, 128)))
    with pytest.raises(StereoInputError, match=message):
        pipe.process(scene.left, scene.right, **options)
    assert pipe.infer(scene.left, scene.right).shape == (64, 128)


@pytest.mark.parametrize("limits", [None, "0.5 20"])
def test_limits_that_are_not_depth_limits_are_an_input_error(limits):
    from flashstereo_ros import synthetic
    from flashstereo_ros.depth import StereoCamera

    camera = StereoCamera.from_projections([100.0, 0, 64, 0, 0, 100, 32, 0, 0, 0, 1, 0],
                                           [100.0, 0, 64, -10, 0, 100, 32, 0, 0, 0, 1, 0], 128, 64)
    scene = synthetic.make_scene("planes", 64, 128, seed=2)
    pipe = CpuStereoPipeline(*SMALL_MODELS)
    with pytest.raises(StereoInputError, match="limits must be a DepthLimits"):
        pipe.process(scene.left, scene.right, camera=camera, limits=limits, want_depth=True)
