"""The command-line tools refuse bad arguments with one `error:` line and exit status 2, before any work.

"Before any work" is checked by making the work itself (pipelines, calibration, downloads) fail the test.
"""
import pytest

from flashstereo_ros import calibration, resources
from flashstereo_ros.tools import (bench, build_int8, build_int8_post, demo, download_calib_data, gen_post_calib_data,
                                   int8_quality, scene)

FEAT, POST = (str(p) for p in resources.bundled_models(".onnx", (64, 128)))
DOCUMENTED_EVAL_SCENES = "Shopvac,Sticks,Storage,Sword1,Sword2,Umbrella,Vintage"  # README.md and docs/INT8.md


def exit_code(main, argv) -> int:
    """The status a shell would see: main's return value, or parser.error's SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def forbid(monkeypatch, module, name):
    def work(*args, **kwargs):
        raise AssertionError(f"{module.__name__}.{name} ran, but the arguments should have been refused first")

    monkeypatch.setattr(module, name, work)


@pytest.fixture
def missing_folder(tmp_path):
    return tmp_path / "missing"


@pytest.fixture
def under_a_file(tmp_path):
    """A path whose 'folder' is a regular file: no one can write there, root included."""
    (tmp_path / "file").write_text("")
    return tmp_path / "file"


# ------------------------------------------------------------------------------- flashstereo-download-calib

def test_scenes_without_n_fetch_every_scene_named(tmp_path, monkeypatch, capsys):
    fetched = []

    def fake_download(base_url, scenes, size, variant, timeout):
        fetched.extend(scenes)
        return calibration.synthetic_pairs(len(scenes), size)

    monkeypatch.setattr(download_calib_data.calibration, "download_middlebury", fake_download)
    assert download_calib_data.main(["--out-dir", str(tmp_path / "eval"), "--height", "64", "--width", "128",
                                     "--scenes", DOCUMENTED_EVAL_SCENES]) == 0
    assert fetched == DOCUMENTED_EVAL_SCENES.split(",")


@pytest.mark.parametrize("option,value", [("--height", "63"), ("--width", "100"), ("--height", "0")])
def test_engine_size_must_be_a_multiple_of_32(tmp_path, option, value, capsys):
    argv = ["--out-dir", str(tmp_path / "calib"), "--synthetic", "1", "--height", "64", "--width", "128"]
    argv[argv.index(option) + 1] = value
    assert exit_code(download_calib_data.main, argv) == 2
    assert f"error: {option} {value}: the engine size must be a multiple of 32" in capsys.readouterr().err
    assert not (tmp_path / "calib").exists()


@pytest.mark.parametrize("argv,message", [
    (["--synthetic", "0"], "argument --synthetic: must be at least 1, got 0"),
    (["--n", "0"], "argument --n: must be at least 1, got 0"),
    (["--synthetic", "1", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["--timeout", "0"], "--timeout must be positive"),
])
def test_download_counts_are_checked(tmp_path, argv, message, capsys):
    assert exit_code(download_calib_data.main, ["--out-dir", str(tmp_path / "calib")] + argv) == 2
    assert message in capsys.readouterr().err


def test_download_checks_its_output_folder_before_downloading(tmp_path, under_a_file, monkeypatch, capsys):
    forbid(monkeypatch, download_calib_data.calibration, "download_middlebury")
    assert exit_code(download_calib_data.main, ["--out-dir", str(under_a_file / "calib"), "--n", "1"]) == 2
    assert "error: --out-dir" in capsys.readouterr().err
    existing = tmp_path / "calib"
    calibration.write_pair_set(calibration.synthetic_pairs(1, (64, 128)), existing, "test")
    assert exit_code(download_calib_data.main, ["--out-dir", str(existing), "--n", "1"]) == 2
    assert "already holds calibration data; pass --force" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ flashstereo-bench

@pytest.mark.parametrize("argv,message", [
    (["--reps", "0"], "argument --reps: must be at least 1, got 0"),
    (["--reps", "-1"], "argument --reps: must be at least 1, got -1"),
    (["--pairs", "0"], "argument --pairs: must be at least 1, got 0"),
    (["--warmup", "-1"], "argument --warmup: must be at least 0, got -1"),
    (["--streams", "0"], "argument --streams: must be at least 1, got 0"),
    (["--pipelines", "cpu,gpu"], "--pipelines 'cpu,gpu': choose from"),
])
def test_bench_numbers_and_pipelines_are_checked(argv, message, monkeypatch, capsys):
    forbid(monkeypatch, bench, "make_pipeline")
    assert exit_code(bench.main, ["--device", "cpu", "--pipelines", "cpu"] + argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--json", "--chart"])
def test_bench_checks_its_output_folders_before_benchmarking(option, missing_folder, monkeypatch, capsys):
    forbid(monkeypatch, bench, "make_pipeline")
    path = str(missing_folder / "out")
    assert exit_code(bench.main, ["--device", "cpu", "--pipelines", "cpu", option, path]) == 2
    assert f"error: {option} {path}: {missing_folder} is not an existing folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- flashstereo-demo

@pytest.mark.parametrize("name", ["o.jpg2", "o"])
def test_demo_refuses_an_image_type_opencv_cannot_write(tmp_path, name, monkeypatch, capsys):
    forbid(monkeypatch, demo, "create_pipeline")
    assert exit_code(demo.main, ["--out", str(tmp_path / name)]) == 2
    assert "OpenCV cannot write this file type" in capsys.readouterr().err


@pytest.mark.parametrize("option,name", [("--out", "d.png"), ("--save-disparity", "d.npy")])
def test_demo_checks_its_output_folders_before_inference(option, name, missing_folder, monkeypatch, capsys):
    forbid(monkeypatch, demo, "create_pipeline")
    assert exit_code(demo.main, [option, str(missing_folder / name)]) == 2
    assert f"error: {option} {missing_folder / name}: {missing_folder} is not an existing folder" \
        in capsys.readouterr().err


def test_demo_reads_the_ground_truth_before_inference(tmp_path, monkeypatch, capsys):
    forbid(monkeypatch, demo, "create_pipeline")
    (tmp_path / "gt.png").write_text("not a PNG")
    assert demo.main(["--gt", str(tmp_path / "gt.png"), "--out", str(tmp_path / "d.png")]) == 2
    assert "error: " + str(tmp_path / "gt.png") + " is not a 16-bit single-channel disparity PNG" \
        in capsys.readouterr().err


def test_demo_needs_both_images(tmp_path, monkeypatch, capsys):
    forbid(monkeypatch, demo, "create_pipeline")
    assert exit_code(demo.main, ["--left", str(tmp_path / "l.png")]) == 2
    assert "give both --left and --right" in capsys.readouterr().err


# --------------------------------------------------------------------------------- INT8 build and quality tools

@pytest.fixture
def pairs(tmp_path):
    return calibration.write_pair_set(calibration.synthetic_pairs(1, (64, 128)), tmp_path / "pairs", "test")


@pytest.mark.parametrize("tool,onnx,data", [(build_int8, FEAT, "--calib-dir"), (build_int8_post, POST, "--npz-dir")])
def test_op_types_must_be_in_the_model(tool, onnx, data, tmp_path, pairs, monkeypatch, capsys):
    forbid(monkeypatch, build_int8.quantize, "calibrate")
    assert tool.main(["--onnx", onnx, "--engine-out", str(tmp_path / "e.engine"), data, str(pairs),
                      "--op-types", "AveragePool,Foo"]) == 2
    err = capsys.readouterr().err
    assert "error: --op-types Foo: not in" in err and "Concat" in err  # names what the model has


@pytest.mark.parametrize("option", ["--engine-out", "--onnx-out", "--calib-cache"])
def test_build_int8_checks_its_outputs_before_calibrating(option, tmp_path, pairs, under_a_file, monkeypatch,
                                                          capsys):
    forbid(monkeypatch, build_int8.quantize, "calibrate")
    argv = ["--onnx", FEAT, "--engine-out", str(tmp_path / "e.engine"), "--calib-dir", str(pairs),
            option, str(under_a_file / "sub" / "x.out")]
    assert exit_code(build_int8.main, argv) == 2
    assert f"error: {option} {under_a_file / 'sub' / 'x.out'}: {under_a_file} is not an existing folder" \
        in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--max-samples", "--workspace-mib"])
def test_build_int8_counts_are_checked(option, tmp_path, pairs, capsys):
    argv = ["--onnx", FEAT, "--engine-out", str(tmp_path / "e.engine"), "--calib-dir", str(pairs), option, "0"]
    assert exit_code(build_int8.main, argv) == 2
    assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err


def test_gen_post_calib_checks_its_arguments_before_inference(tmp_path, pairs, under_a_file, monkeypatch, capsys):
    forbid(monkeypatch, gen_post_calib_data, "create_pipeline")
    argv = ["--calib-dir", str(pairs), "--out-dir"]
    assert exit_code(gen_post_calib_data.main, argv + [str(tmp_path / "npz"), "--max-pairs", "0"]) == 2
    assert "argument --max-pairs: must be at least 1, got 0" in capsys.readouterr().err
    assert exit_code(gen_post_calib_data.main, argv + [str(under_a_file / "npz")]) == 2
    assert "error: --out-dir" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--synthetic", "0"], "argument --synthetic: must be at least 1, got 0"),
    (["--synthetic", "1", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["--synthetic", "1", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
])
def test_int8_quality_counts_are_checked(argv, message, monkeypatch, capsys):
    forbid(monkeypatch, int8_quality.quantize, "expect_stage")
    assert exit_code(int8_quality.main, ["--feat-int8", FEAT, "--post-int8", POST] + argv) == 2
    assert message in capsys.readouterr().err


def test_int8_quality_checks_its_json_folder_before_any_work(missing_folder, monkeypatch, capsys):
    forbid(monkeypatch, int8_quality.quantize, "expect_stage")
    path = missing_folder / "x.json"
    assert exit_code(int8_quality.main, ["--feat-int8", FEAT, "--post-int8", POST, "--synthetic", "1",
                                         "--json-out", str(path)]) == 2
    assert f"error: --json-out {path}: {missing_folder} is not an existing folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- flashstereo-make-scene

@pytest.mark.parametrize("argv,message", [
    (["--height", "1", "--width", "1"], "scene size 1x1 is too small"),
    (["--height", "0"], "scene size 0x640 is too small"),
    (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
])
def test_make_scene_checks_size_and_seed(tmp_path, argv, message, capsys):
    assert exit_code(scene.main, ["--out-dir", str(tmp_path / "out")] + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_make_scene_refuses_an_output_folder_it_cannot_write(under_a_file, capsys):
    assert exit_code(scene.main, ["--out-dir", str(under_a_file / "out"), "--height", "32", "--width", "32"]) == 2
    assert "error: --out-dir" in capsys.readouterr().err


def test_make_scene_prefix_cannot_leave_the_output_folder(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    assert exit_code(scene.main, ["--out-dir", str(out), "--prefix", "../../escape", "--height", "32",
                                  "--width", "32"]) == 2
    assert "must be a plain file name prefix" in capsys.readouterr().err
    assert not list(tmp_path.rglob("escape*"))
    assert scene.main(["--out-dir", str(out), "--prefix", "pair", "--height", "32", "--width", "32"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pair_camera.yaml", "pair_disp_gt.png", "pair_left.png",
                                                     "pair_right.png"]


# ------------------------------------------------------------------------------------- files that exist

def test_an_output_file_that_is_a_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    forbid(monkeypatch, demo, "create_pipeline")
    (tmp_path / "out.png").mkdir()
    assert exit_code(demo.main, ["--out", str(tmp_path / "out.png")]) == 2
    assert f"error: --out {tmp_path / 'out.png'}: there is a folder of that name" in capsys.readouterr().err


def test_make_scene_keeps_existing_files_unless_forced(tmp_path, capsys):
    argv = ["--out-dir", str(tmp_path), "--height", "32", "--width", "32"]
    assert scene.main(argv) == 0
    left = (tmp_path / "example_left.png").read_bytes()
    assert exit_code(scene.main, argv + ["--seed", "1"]) == 2
    assert "pass --force to overwrite" in capsys.readouterr().err
    assert (tmp_path / "example_left.png").read_bytes() == left
    assert scene.main(argv + ["--seed", "1", "--force"]) == 0
    assert (tmp_path / "example_left.png").read_bytes() != left


@pytest.mark.parametrize("argv,message", [(["--device", "bogus"], "--device bogus"),
                                          (["--out", "{file}"], "there is a file of that name")])
def test_make_standin_refuses_a_bad_device_or_output_before_tracing(tmp_path, argv, message, monkeypatch, capsys):
    from flashstereo_ros import standin

    forbid(monkeypatch, standin, "export")
    (tmp_path / "file").write_text("")
    argv = ["--out", str(tmp_path / "out")] + [a.format(file=tmp_path / "file") for a in argv]
    assert exit_code(standin.main, argv) == 2
    assert message in capsys.readouterr().err
