"""CameraInfo as real setups publish it: latched once (transient-local) before the node starts, or stamped
differently from the images. The node then uses the newest CameraInfo of each side and says so, instead
of waiting forever for infos with the images' stamps."""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402

from flashstereo_ros import resources, synthetic  # noqa: E402
from flashstereo_ros.diagnostics import WARN, status_level  # noqa: E402
from flashstereo_ros.node import PROBLEM_HOLD_S  # noqa: E402
from flashstereo_ros.ros_testing import (NodeProcess, StereoClient, camera_infos, image_msg, init_context,  # noqa: E402
                                         node_command, now_ns, ros_env, spin_until)

pytestmark = [pytest.mark.ros, pytest.mark.slow]
DOMAIN = 66
H, W = 64, 128
SCENE = synthetic.make_scene("planes", H, W, seed=8)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def start_node(namespace, tmp_path):
    feat, post = resources.bundled_models(".onnx", (H, W))
    return NodeProcess(node_command() + ["--ros-args", "-r", f"__ns:=/{namespace}", "-p", f"feat_engine:={feat}",
                                         "-p", f"post_engine:={post}", "-p", "device:=cpu"],
                       ros_env(DOMAIN), tmp_path / f"{namespace}.log")


@pytest.fixture(scope="module")
def ros():
    context = init_context(DOMAIN)
    node = rclpy.create_node("camera_stand_in", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield node, executor
    node.destroy_node()
    rclpy.shutdown(context=context)


def stream_images(node, executor, client, until, seconds, right_info_offset_ns=None, infos=None):
    """Image pairs at ~10 Hz (with infos stamped off by an offset, if given) until until() or timeout."""
    deadline = time.monotonic() + seconds
    left, right = image_msg(SCENE.left, "rgb8"), image_msg(SCENE.right, "rgb8")
    while time.monotonic() < deadline:
        stamp = now_ns(node)
        if infos is not None:
            client.publish(1, infos[0], stamp + right_info_offset_ns)
            client.publish(3, infos[1], stamp + right_info_offset_ns)
        client.publish(0, left, stamp)
        client.publish(2, right, stamp)
        found = spin_until(executor, until, 0.1)
        if found:
            return found
    return None


def test_a_calibration_latched_before_the_node_starts_is_used(ros, tmp_path):
    node, executor = ros
    infos = camera_infos(SCENE.focal_px, SCENE.baseline_m, W, H)
    info_pubs = [node.create_publisher(CameraInfo, f"/latched/{side}/camera_info", LATCHED)
                 for side in ("left", "right")]
    for pub, info in zip(info_pubs, infos):
        pub.publish(info)  # once, stamp 0, before the node exists
    stereo = start_node("latched", tmp_path)
    try:
        # this client's own (volatile) info publishers go elsewhere: the latched ones are the only infos here
        client = StereoClient(node, "latched", outputs=["disparity", "depth"], input_topics=[
            "/latched/left/image_rect", "/unused/left_info", "/latched/right/image_rect", "/unused/right_info"])
        assert spin_until(executor, lambda: all(p.get_subscription_count() for p in client.publishers[::2]), 30)
        depth = stream_images(node, executor, client, lambda: client.latest("depth"), 15.0)
        assert depth is not None, stereo.log()
        z = np.frombuffer(depth.data, np.float32).reshape(H, W)
        truth = SCENE.depth[SCENE.valid]
        assert np.median(np.abs(z[SCENE.valid] - truth) / truth) < 0.05
        # long enough for a silence warning, and for the start-up ones ("no publisher" before this client
        # existed, held PROBLEM_HOLD_S) to expire
        stream_images(node, executor, client, lambda: False, PROBLEM_HOLD_S + 2.0)
        statuses = [s for s in client.statuses("/latched/")]
        values = dict((kv.key, kv.value) for kv in statuses[-1].values)
        assert "newest of each side" in values["camera infos"]
        assert not any("camera_info" in s.message and status_level(s) >= WARN for s in statuses[-2:]), \
            [s.message for s in statuses[-2:]]
        assert "transient_local" in stereo.log()
    finally:
        code = stereo.stop()
        for pub in info_pubs:
            node.destroy_publisher(pub)
    assert code == 0


def test_camera_infos_stamped_differently_from_the_images_are_used(ros, tmp_path):
    node, executor = ros
    stereo = start_node("offset", tmp_path)
    try:
        client = StereoClient(node, "offset", outputs=["disparity", "points2"])
        assert spin_until(executor, client.matched, 30), stereo.log()
        infos = camera_infos(SCENE.focal_px, SCENE.baseline_m, W, H)
        cloud = stream_images(node, executor, client, lambda: client.latest("points2"), 15.0,
                              right_info_offset_ns=500_000_000, infos=infos)
        assert cloud is not None, stereo.log()
        assert "do not come with the images' stamps" in stereo.log()
        # infos stamped like the images again: matched by stamp, and said so after (never before) the switch away
        again = "come with the images' stamps again"
        stream_images(node, executor, client, lambda: again in stereo.log(), 15.0, right_info_offset_ns=0,
                      infos=infos)
        modes = [line for line in stereo.log().splitlines() if "with the images' stamps" in line]
        assert len(modes) == 2 and "do not come" in modes[0] and again in modes[1], modes
    finally:
        code = stereo.stop()
    assert code == 0
