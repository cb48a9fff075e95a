"""End to end over real topics: the node started as a user starts it (console entry, CPU, bundled 480x640
stand-in), a camera stand-in publishing from a second process; once with a reliable camera on default
transports, once with a best-effort camera and FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA in both processes."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("rclpy")

from flashstereo_ros import colorize, depth, synthetic  # noqa: E402
from flashstereo_ros.ros_testing import NodeProcess, camera_infos, node_command, ros_env  # noqa: E402
from flashstereo_ros.tools.demo import error_report  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

# transport -> (camera publishes reliable, LARGE_DATA in both processes, ROS domain)
TRANSPORTS = {"reliable_default_transports": (True, False, 61), "best_effort_large_data": (False, True, 62)}
ENGINE_WIDTH, MAX_DISP = 640, 192
MAE_BOUND_PX, BAD_PX, GOOD_FRACTION = 1.0, 3.0, 0.90
DEPTH_TOLERANCE, DEPTH_GOOD_FRACTION = 0.01, 0.90
FRAMES = [  # cx_offset = cx_left - cx_right, pixels: non-zero to check the disparity convention
    {"kind": "planes", "height": 480, "width": 640, "seed": 1, "encoding": "bgr8", "cx_offset": -6.0,
     "frame_id": "stereo_left_optical"},
    {"kind": "slanted", "height": 375, "width": 500, "seed": 2, "encoding": "rgb8", "cx_offset": 3.0,
     "frame_id": "stereo_left_optical"},
]
OUTPUTS = ["disparity", "disparity/color", "depth", "depth/camera_info", "points2"]


@pytest.fixture(scope="module", params=list(TRANSPORTS))
def exchanged(request, tmp_path_factory):
    reliable, large_data, domain = TRANSPORTS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    env = ros_env(domain, large_data)
    node = NodeProcess(node_command() + ["--ros-args", "-p", "device:=cpu"], env, folder / "node.log")
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"reliable": reliable, "outputs": OUTPUTS, "frames": FRAMES}))
    try:
        client = subprocess.run([sys.executable, "-m", "flashstereo_ros.ros_testing", str(spec),
                                 str(folder / "out.npz")], env=env, capture_output=True, text=True, timeout=150)
    finally:
        code = node.stop()
    log = node.log()
    print(log)
    assert client.returncode == 0, f"client: {client.stdout}{client.stderr}\nnode log:\n{log}"
    assert code == 0, f"the node did not shut down cleanly (exit {code}):\n{log}"
    data = np.load(folder / "out.npz")
    return {"arrays": data, "meta": json.loads(str(data["meta"])), "log": log, "transport": request.param}


def scene_of(frame):
    return synthetic.make_scene(frame["kind"], frame["height"], frame["width"], frame["seed"])


def expected_camera(frame, scene):
    left, right = camera_infos(scene.focal_px, scene.baseline_m, frame["width"], frame["height"], frame["cx_offset"])
    return depth.StereoCamera.from_projections(left.p, right.p, frame["width"], frame["height"])


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_disparity_is_accurate_at_camera_resolution(exchanged, index):
    frame, scene = FRAMES[index], scene_of(FRAMES[index])
    disparity = exchanged["arrays"][f"{index}/disparity"]
    assert disparity.shape == (frame["height"], frame["width"]) and disparity.dtype == np.float32
    # the published d' = d - (cx_left - cx_right): compare with the ground truth shifted the same way
    report = error_report(disparity, scene.disparity - np.float32(frame["cx_offset"]), scene.valid)
    print(exchanged["transport"], frame["width"], "x", frame["height"], report)
    assert report["mae_px"] < MAE_BOUND_PX
    assert 100 - report["bad3_percent"] > GOOD_FRACTION * 100


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_disparity_message_fields(exchanged, index):
    frame, scene = FRAMES[index], scene_of(FRAMES[index])
    meta = exchanged["meta"][index]["disparity"]
    scale = frame["width"] / ENGINE_WIDTH
    assert meta["encoding"] == "32FC1"
    assert meta["frame_id"] == meta["image_frame_id"] == frame["frame_id"]
    assert meta["f"] == pytest.approx(scene.focal_px, rel=1e-6)
    assert meta["t"] == pytest.approx(scene.baseline_m, rel=1e-6)
    assert meta["min_disparity"] == pytest.approx(-frame["cx_offset"], abs=1e-4)
    assert meta["max_disparity"] == pytest.approx((MAX_DISP - 1) * scale - frame["cx_offset"], abs=1e-3)
    assert 0 < meta["delta_d"] <= 1
    assert meta["valid_window"] == [0, 0, frame["width"], frame["height"]]


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_color_image_is_the_turbo_colouring_of_the_disparity(exchanged, index):
    color = exchanged["arrays"][f"{index}/color"]
    assert exchanged["meta"][index]["color"]["encoding"] == "bgr8"
    disparity = exchanged["arrays"][f"{index}/disparity"]
    assert color.shape == disparity.shape + (3,)
    assert np.array_equal(color, colorize.colorize(disparity, colorize.disparity_range(disparity[::4, ::4])))


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_depth_is_f_t_over_d(exchanged, index):
    frame = FRAMES[index]
    meta = exchanged["meta"][index]
    disparity, z = exchanged["arrays"][f"{index}/disparity"], exchanged["arrays"][f"{index}/depth"]
    assert meta["depth"]["encoding"] == "32FC1" and meta["depth"]["frame_id"] == frame["frame_id"]
    assert z.shape == disparity.shape and z.dtype == np.float32
    # the convention, exactly: Z = f * T / d with the DisparityImage's own f, T and d
    positive = disparity > 0
    expected = np.float32(meta["disparity"]["f"] * meta["disparity"]["t"]) / disparity[positive]
    np.testing.assert_allclose(z[positive], expected, rtol=1e-6)
    # REP 118 as depth.py: d' = 0 is at infinity, d' < 0 (behind infinity) is no measurement
    assert np.isposinf(z[disparity == 0]).all() and np.isnan(z[disparity < 0]).all()


def test_depth_of_planes_is_within_one_percent_of_truth(exchanged):
    index = 0  # fronto-parallel planes at known depths, cx offset -6 px
    frame, scene = FRAMES[index], scene_of(FRAMES[index])
    z = exchanged["arrays"][f"{index}/depth"]
    true_z = scene.focal_px * scene.baseline_m / (scene.disparity - frame["cx_offset"])
    relative = np.abs(z - true_z)[scene.valid] / true_z[scene.valid]  # pixels seen by both cameras
    print(exchanged["transport"], f"depth: median {np.median(relative) * 100:.3f}%, "
          f"within 1%: {(relative <= DEPTH_TOLERANCE).mean() * 100:.2f}%")
    assert np.median(relative) < DEPTH_TOLERANCE
    assert (relative <= DEPTH_TOLERANCE).mean() > DEPTH_GOOD_FRACTION


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_depth_camera_info_is_the_left_camera(exchanged, index):
    frame, scene = FRAMES[index], scene_of(FRAMES[index])
    left, _ = camera_infos(scene.focal_px, scene.baseline_m, frame["width"], frame["height"], frame["cx_offset"])
    info = exchanged["meta"][index]["depth_info"]
    assert (info["width"], info["height"]) == (frame["width"], frame["height"])
    assert info["frame_id"] == frame["frame_id"]
    np.testing.assert_array_equal(info["k"], left.k)
    np.testing.assert_array_equal(info["p"], left.p)


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_point_cloud_back_projects_depth_with_left_colours(exchanged, index):
    frame, scene = FRAMES[index], scene_of(FRAMES[index])
    camera = expected_camera(frame, scene)
    meta = exchanged["meta"][index]["points"]
    assert [f[0] for f in meta["fields"]] == ["x", "y", "z", "rgb"]
    assert [f[1] for f in meta["fields"]] == [0, 4, 8, 12] and {f[2] for f in meta["fields"]} == {7}  # FLOAT32
    assert meta["is_dense"] is False and meta["frame_id"] == frame["frame_id"]
    cloud, z = exchanged["arrays"][f"{index}/points"], exchanged["arrays"][f"{index}/depth"]
    assert cloud.shape == (frame["height"], frame["width"], 4)  # organised, stride 1 (default)
    v, u = np.mgrid[0:frame["height"], 0:frame["width"]]
    finite = np.isfinite(z)
    np.testing.assert_allclose(cloud[..., 2][finite], z[finite], rtol=1e-6)
    np.testing.assert_allclose(cloud[..., 0][finite], ((u - camera.cx) * z / camera.fx)[finite], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cloud[..., 1][finite], ((v - camera.cy) * z / camera.fy)[finite], rtol=1e-5, atol=1e-6)
    assert np.isnan(cloud[..., :3][~finite]).all()
    rgb = cloud[..., 3].copy().view(np.uint32)
    r, g, b = (scene.left[..., c].astype(np.uint32) for c in range(3))
    packed = (r << 16) | (g << 8) | b
    assert np.array_equal(rgb, packed)


def test_the_node_adapted_its_qos_to_the_camera(exchanged):
    # auto QoS: a best-effort camera makes the node re-subscribe best-effort (and say so)
    if exchanged["transport"] == "best_effort_large_data":
        assert "subscribing best_effort" in exchanged["log"]
    else:
        assert "subscribing best_effort" not in exchanged["log"]
    assert math.isfinite(exchanged["meta"][0]["stamp"])
