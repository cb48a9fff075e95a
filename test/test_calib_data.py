"""Calibration data: Middlebury download from a local fake server, local copies, synthetic sets, post tensors.

The fake server (127.0.0.1, any free port) serves <root>/datasets/<Scene>-perfect/im0.png and im1.png,
the layout of vision.middlebury.edu/stereo/data/scenes2014, filled with small synthetic pairs.
"""
import functools
import http.server
import json
import threading

import cv2
import numpy as np
import pytest

from flashstereo_ros import calibration, contract, gwc, resources, synthetic
from flashstereo_ros.tools import download_calib_data, gen_post_calib_data

from conftest import post_model_without

SERVER_SIZE = (90, 140)  # not the engine size: the tool must resize
ENGINE_SIZE = (64, 128)
GOOD_SCENES = calibration.MIDDLEBURY_2014_SCENES[:6]


def write_rgb(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def make_fake_middlebury(root):
    """Six good scenes, plus 'Corrupt' (im1 is not a PNG) and 'Mismatched' (im1 has another size)."""
    for index, scene in enumerate(GOOD_SCENES):
        pair = synthetic.make_scene("mixed", *SERVER_SIZE, seed=100 + index)
        write_rgb(root / "datasets" / f"{scene}-perfect" / "im0.png", pair.left)
        write_rgb(root / "datasets" / f"{scene}-perfect" / "im1.png", pair.right)
    pair = synthetic.make_scene("planes", *SERVER_SIZE, seed=200)
    write_rgb(root / "datasets" / "Corrupt-perfect" / "im0.png", pair.left)
    (root / "datasets" / "Corrupt-perfect" / "im1.png").write_bytes(b"<html>not found</html>")
    write_rgb(root / "datasets" / "Mismatched-perfect" / "im0.png", pair.left)
    write_rgb(root / "datasets" / "Mismatched-perfect" / "im1.png", pair.right[:, :100])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def middlebury_server(tmp_path_factory):
    """Base URL of a fake Middlebury 2014 server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("middlebury")
    make_fake_middlebury(root)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def download(base_url, out_dir, *extra):
    return download_calib_data.main(["--out-dir", str(out_dir), "--height", str(ENGINE_SIZE[0]),
                                     "--width", str(ENGINE_SIZE[1]), "--base-url", base_url, *extra])


def test_download_resizes_verifies_and_writes_a_manifest(middlebury_server, tmp_path, capsys):
    out = tmp_path / "calib"
    assert download(middlebury_server, out, "--n", "4") == 0
    pairs = calibration.load_pairs(out, ENGINE_SIZE)
    assert [p.name for p in pairs] == sorted(GOOD_SCENES[:4])
    manifest = json.loads((out / calibration.MANIFEST_FILE).read_text())
    assert manifest["size"] == list(ENGINE_SIZE) and manifest["scenes"] == list(GOOD_SCENES[:4])
    assert len(manifest["sha256"]) == 8
    # the pair really is the server's pair, area-resized
    served = cv2.imread(str(out / "Adirondack" / "im0.png"))
    assert served.shape == (*ENGINE_SIZE, 3)
    original = synthetic.make_scene("mixed", *SERVER_SIZE, seed=100).left
    expected = cv2.resize(original, ENGINE_SIZE[::-1], interpolation=cv2.INTER_AREA)
    assert np.array_equal(pairs[0].left, expected)
    assert "wrote 4 pairs of 128x64" in capsys.readouterr().out


def test_download_never_overwrites_without_force(middlebury_server, tmp_path, capsys):
    out = tmp_path / "calib"
    assert download(middlebury_server, out, "--n", "2") == 0
    before = (out / calibration.MANIFEST_FILE).read_text()
    assert download(middlebury_server, out, "--n", "3") == 2
    assert "pass --force" in capsys.readouterr().err
    assert (out / calibration.MANIFEST_FILE).read_text() == before
    assert download(middlebury_server, out, "--n", "3", "--force") == 0
    assert len(calibration.load_pairs(out)) == 3


def test_force_does_not_delete_a_folder_the_tool_did_not_write(middlebury_server, tmp_path, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    assert download(middlebury_server, foreign, "--n", "1", "--force") == 2
    assert "not deleted even with --force" in capsys.readouterr().err
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"


@pytest.mark.parametrize("scene,message", [
    ("Corrupt", "Corrupt-perfect/im1.png is not a PNG file"),
    ("Mismatched", "left image is 140x90 but right image is 100x90"),
    ("Nonexistent", "Nonexistent-perfect/im0.png: HTTP 404"),
])
def test_bad_downloads_are_named_and_nothing_is_written(middlebury_server, tmp_path, capsys, scene, message):
    out = tmp_path / "calib"
    assert download(middlebury_server, out, "--n", "2", "--scenes", f"Adirondack,{scene}") == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unreachable_server_says_how_to_work_offline(tmp_path, capsys):
    # port 9 (discard) on 127.0.0.1: nothing listens, the connection is refused at once
    assert download("http://127.0.0.1:9", tmp_path / "calib", "--n", "1", "--timeout", "5") == 2
    assert "--from-dir" in capsys.readouterr().err


def test_from_dir_reads_a_local_middlebury_copy(tmp_path, capsys):
    local = tmp_path / "middlebury"
    make_fake_middlebury(local)
    out = tmp_path / "calib"
    args = ["--out-dir", str(out), "--height", "64", "--width", "128", "--from-dir", str(local / "datasets")]
    # the local copy holds the corrupt scene too: the whole import fails, names it, and writes nothing
    assert download_calib_data.main(args + ["--n", "8"]) == 2
    assert "Corrupt-perfect/im1.png is not a PNG file" in capsys.readouterr().err
    assert not out.exists()
    for bad in ("Corrupt-perfect", "Mismatched-perfect"):
        for image in (local / "datasets" / bad).iterdir():
            image.unlink()
        (local / "datasets" / bad).rmdir()
    assert download_calib_data.main(args + ["--n", "3"]) == 0
    assert [p.name for p in calibration.load_pairs(out, ENGINE_SIZE)] == sorted(GOOD_SCENES)[:3]


def test_synthetic_pairs_for_machines_without_internet(tmp_path):
    out = tmp_path / "calib"
    assert download_calib_data.main(["--out-dir", str(out), "--height", "64", "--width", "128",
                                     "--synthetic", "5", "--seed", "7"]) == 0
    pairs = calibration.load_pairs(out, ENGINE_SIZE)
    assert len(pairs) == 5
    first = synthetic.make_scene(synthetic.SCENES[0], 64, 128, seed=7)
    by_name = {p.name: p for p in pairs}
    assert np.array_equal(by_name["synthetic_planes_0007"].left, first.left)
    assert json.loads((out / calibration.MANIFEST_FILE).read_text())["source"].startswith("synthetic")


def test_load_pairs_rejects_empty_folders_and_wrong_sizes(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(calibration.CalibrationDataError, match="holds no pairs"):
        calibration.load_pairs(empty)
    small = tmp_path / "small"
    calibration.write_pair_set(calibration.synthetic_pairs(2, (32, 64)), small, "test")
    with pytest.raises(calibration.CalibrationDataError, match="is 64x32 but the model takes 128x64"):
        calibration.load_pairs(small, ENGINE_SIZE)
    lonely = tmp_path / "lonely"
    write_rgb(lonely / "scene" / "im0.png", np.zeros((32, 64, 3), np.uint8))
    with pytest.raises(calibration.CalibrationDataError, match="has im0.png but no im1.png"):
        calibration.load_pairs(lonely)


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "calib"
    calibration.write_pair_set(calibration.synthetic_pairs(3, ENGINE_SIZE, seed=11), out, "test")
    return out


@pytest.fixture(scope="module")
def post_npz(small_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("npz") / "post"
    feat, post = resources.bundled_models(".onnx", ENGINE_SIZE)
    assert gen_post_calib_data.main(["--calib-dir", str(small_pairs), "--out-dir", str(out),
                                     "--feat-engine", str(feat), "--post-engine", str(post)]) == 0
    return out


def post_specs():
    from flashstereo_ros.quantize import expect_stage

    return expect_stage(resources.bundled_models(".onnx", ENGINE_SIZE)[1], "post_runner")[1]


def test_post_calib_npz_hold_exactly_the_post_inputs_and_a_consistent_volume(post_npz):
    paths = calibration.check_post_samples(post_npz, post_specs())
    assert len(paths) == 3
    with np.load(paths[0], allow_pickle=False) as sample:
        assert sorted(sample.files) == sorted(contract.POST_INPUTS)
        volume = sample[contract.GWC_VOLUME]
        groups, disparities = volume.shape[1:3]
        left = gwc.normalize_groups(sample[contract.FEATURES_LEFT_04], groups)
        right = gwc.normalize_groups(sample[contract.FEATURES_RIGHT_04], groups)
        assert volume.dtype == np.float16
        assert np.array_equal(volume, gwc.gwc_volume(left, right, groups, disparities, np.float16))


def test_gen_post_calib_never_overwrites_without_force(small_pairs, post_npz, capsys):
    feat, post = resources.bundled_models(".onnx", ENGINE_SIZE)
    args = ["--calib-dir", str(small_pairs), "--out-dir", str(post_npz), "--feat-engine", str(feat),
            "--post-engine", str(post)]
    assert gen_post_calib_data.main(args) == 2
    assert "pass --force" in capsys.readouterr().err


def test_gen_post_calib_refuses_pairs_of_another_size(tmp_path, capsys):
    pairs = tmp_path / "pairs"
    calibration.write_pair_set(calibration.synthetic_pairs(1, (32, 64)), pairs, "test")
    feat, post = resources.bundled_models(".onnx", ENGINE_SIZE)
    assert gen_post_calib_data.main(["--calib-dir", str(pairs), "--out-dir", str(tmp_path / "npz"),
                                     "--feat-engine", str(feat), "--post-engine", str(post)]) == 2
    assert "is 64x32 but the model takes 128x64" in capsys.readouterr().err


def _copy_npz(source, target, **changes):
    with np.load(source, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays.update(changes)
    for name in [n for n, v in changes.items() if v is None]:
        del arrays[name]
    np.savez(target, **arrays)


def test_npz_with_unexpected_missing_or_wrong_arrays_is_named(post_npz, tmp_path):
    source = sorted(post_npz.glob("*.npz"))[0]
    specs = post_specs()
    cases = [
        ({"extra_debug": np.zeros(3)}, r"unexpected \['extra_debug'\]"),
        ({contract.GWC_VOLUME: None}, r"missing \['gwc_volume'\]"),
        ({contract.GWC_VOLUME: np.zeros((1, 8, 48, 16, 32), np.float32)}, "'gwc_volume' is float32"),
        ({"stem_2x": np.array([{"a": 1}], dtype=object)}, "holds Python objects|'stem_2x' is object"),
    ]
    for index, (changes, message) in enumerate(cases):
        folder = tmp_path / f"case{index}"
        folder.mkdir()
        _copy_npz(source, folder / "sample.npz", **changes)
        with pytest.raises(calibration.CalibrationDataError, match=message):
            calibration.check_post_samples(folder, specs)
    (tmp_path / "notzip").mkdir()
    (tmp_path / "notzip" / "sample.npz").write_bytes(b"not a zip archive")
    with pytest.raises(calibration.CalibrationDataError, match="not a readable .npz"):
        calibration.check_post_samples(tmp_path / "notzip", specs)
    (tmp_path / "none").mkdir()
    with pytest.raises(calibration.CalibrationDataError, match="holds no .npz"):
        calibration.check_post_samples(tmp_path / "none", specs)


def test_scene_names_and_duplicates_are_checked(middlebury_server, tmp_path, capsys):
    assert download(middlebury_server, tmp_path / "calib", "--n", "1", "--scenes", "../../etc") == 2
    assert "is not a Middlebury scene name" in capsys.readouterr().err
    local = tmp_path / "local"
    pair = synthetic.make_scene("planes", *SERVER_SIZE, seed=3)
    for variant in ("perfect", "imperfect"):
        write_rgb(local / f"Piano-{variant}" / "im0.png", pair.left)
        write_rgb(local / f"Piano-{variant}" / "im1.png", pair.right)
    assert download_calib_data.main(["--out-dir", str(tmp_path / "calib"), "--height", "64", "--width", "128",
                                     "--from-dir", str(local), "--n", "2"]) == 2
    assert "several pairs are named ['Piano']" in capsys.readouterr().err


def test_max_samples_are_spread_over_the_set():
    names = [f"synthetic_{kind}_{i:04d}" for i in range(3) for kind in ("mixed", "planes", "slanted")]
    names.sort()
    picked = calibration.spread(names, 3)
    assert len({name.split("_")[1] for name in picked}) == 3  # all kinds, not the first three (one kind)
    assert calibration.spread(names, None) == names and calibration.spread(names, 50) == names


def test_staging_left_by_a_killed_run_is_removed(tmp_path):
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    stale = tmp_path / f".pairs.partial-{gone.pid}"
    stale.mkdir()
    (stale / "big.npz").write_bytes(b"\0" * 1024)
    pairs = calibration.synthetic_pairs(1, (64, 128), 0)
    calibration.write_pair_set(pairs, tmp_path / "pairs", "synthetic")
    assert not stale.exists() and (tmp_path / "pairs").is_dir()


def test_force_never_deletes_files_the_tool_did_not_write(tmp_path):
    out = tmp_path / "pairs"
    pairs = calibration.synthetic_pairs(2, (64, 128), 0)
    calibration.write_pair_set(pairs, out, "synthetic")
    (out / "MYNOTES.txt").write_text("mine")
    with pytest.raises(calibration.CalibrationDataError, match="MYNOTES.txt"):
        calibration.write_pair_set(pairs, out, "synthetic", force=True)
    assert (out / "MYNOTES.txt").read_text() == "mine"
    (out / "MYNOTES.txt").unlink()
    (out / calibration.MANIFEST_FILE).write_text("{broken")
    with pytest.raises(calibration.CalibrationDataError, match="not a manifest this tool wrote"):
        calibration.write_pair_set(pairs, out, "synthetic", force=True)
    (out / calibration.MANIFEST_FILE).unlink()
    calibration.write_pair_set(pairs, tmp_path / "again", "synthetic")
    calibration.write_pair_set(pairs, tmp_path / "again", "synthetic", force=True)  # its own files: replaced


def test_post_calib_npz_hold_only_the_inputs_a_pruned_post_model_takes(small_pairs, tmp_path):
    feat, pruned = post_model_without(tmp_path)
    assert gen_post_calib_data.main(["--calib-dir", str(small_pairs), "--out-dir", str(tmp_path / "npz"),
                                     "--feat-engine", str(feat), "--post-engine", str(pruned)]) == 0
    paths = sorted((tmp_path / "npz").glob("*.npz"))
    assert len(paths) == 3
    for path in paths:
        with np.load(path, allow_pickle=False) as sample:
            assert sorted(sample.files) == sorted(set(contract.POST_INPUTS) - {"features_left_32"})
