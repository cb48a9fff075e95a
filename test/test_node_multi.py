"""Several stereo nodes in one process (one per camera pair), one executor, one shared engine pair; run-time
parameters; outputs computed only for subscribers; the per-frame timing topic."""
import math
import subprocess
import sys

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from flashstereo_ros import resources, shared_pipelines, synthetic  # noqa: E402
from flashstereo_ros.node import FlashStereoNode, timing_message_type  # noqa: E402
from flashstereo_ros.ros_testing import (NodeProcess, StereoClient, camera_infos, disparity_array,  # noqa: E402
                                         image_msg, init_context, node_command, now_ns, ros_env, spin_until)
from flashstereo_ros.tools.demo import error_report  # noqa: E402

pytestmark = [pytest.mark.ros]
DOMAIN = 64
H, W = 64, 128
SMALL_MODEL = {"feat_engine": str(resources.bundled_models(".onnx", (H, W))[0]),
               "post_engine": str(resources.bundled_models(".onnx", (H, W))[1]), "device": "cpu"}
SCENES = {"cam_a": synthetic.make_scene("planes", H, W, seed=11), "cam_b": synthetic.make_scene("mixed", H, W, seed=12)}
MAE_BOUND_PX, GOOD_PERCENT = 1.0, 90.0


class Graph:
    def __init__(self):
        self.context = init_context(DOMAIN)
        self.nodes = {ns: FlashStereoNode(namespace=ns, parameter_overrides=SMALL_MODEL, context=self.context)
                      for ns in SCENES}
        self.ros = rclpy.create_node("cameras", context=self.context)
        # cam_b's client listens to the disparity only: its depth and points must not be computed
        self.clients = {"cam_a": StereoClient(self.ros, "cam_a"),
                        "cam_b": StereoClient(self.ros, "cam_b", outputs=["disparity"])}
        self.timing = []
        self.ros.create_subscription(timing_message_type(), "/cam_b/flashstereo/timing",
                                     lambda msg: self.timing.append(msg), 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        for node in [*self.nodes.values(), self.ros]:
            self.executor.add_node(node)
        assert spin_until(self.executor, lambda: all(c.matched() for c in self.clients.values()), 20)

    def exchange(self, namespace, output="disparity"):
        scene = SCENES[namespace]
        infos = camera_infos(scene.focal_px, scene.baseline_m, W, H)
        stamp = now_ns(self.ros)
        self.clients[namespace].publish_pair(image_msg(scene.left, "rgb8"), image_msg(scene.right, "rgb8"), infos,
                                             stamp)
        return spin_until(self.executor, lambda: self.clients[namespace].latest(output, stamp), 10)

    def close(self):
        for node in self.nodes.values():
            node.destroy_node()
        self.ros.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture(scope="module")
def graph():
    graph = Graph()
    yield graph
    graph.close()
    assert shared_pipelines.loaded() == []  # the last node released the engines


def test_both_nodes_share_one_engine_pair(graph):
    a, b = graph.nodes["cam_a"], graph.nodes["cam_b"]
    assert a._shared is b._shared and a._shared.users == 2


@pytest.mark.parametrize("namespace", list(SCENES))
def test_each_camera_pair_gets_its_own_correct_disparity(graph, namespace):
    msg = graph.exchange(namespace)
    assert msg is not None and msg.header.frame_id == "camera_left_optical_frame"
    scene = SCENES[namespace]
    report = error_report(disparity_array(msg), scene.disparity, scene.valid)
    print(namespace, report)
    assert report["mae_px"] < MAE_BOUND_PX and 100 - report["bad3_percent"] > GOOD_PERCENT


def test_outputs_nobody_subscribes_to_are_not_computed(graph):
    graph.timing.clear()
    assert graph.exchange("cam_b") is not None
    timing = spin_until(graph.executor, lambda: graph.timing and graph.timing[-1], 5)
    if isinstance(timing, DiagnosticStatus):
        stages = {kv.key[:-3] for kv in timing.values if kv.key.endswith("_ms") and kv.key != "latency_ms"}
        latency = float(next(kv.value for kv in timing.values if kv.key == "latency_ms"))
    else:
        stages, latency = set(timing.stages), timing.latency_ms
    assert {"feature", "gwc", "post", "publish_disparity", "node_total"} <= stages
    assert not stages & {"publish_color", "publish_depth", "publish_points"}
    assert math.isfinite(latency) and latency > 0


def test_points_stride_and_switches_apply_at_run_time(graph):
    node = graph.nodes["cam_a"]
    assert node.set_parameters([Parameter("points_stride", value=3)])[0].successful
    cloud = graph.exchange("cam_a", "points2")
    assert (cloud.height, cloud.width) == (math.ceil(H / 3), math.ceil(W / 3))
    assert node.set_parameters([Parameter("publish_points", value=False)])[0].successful
    stamp_msg = graph.exchange("cam_a", "depth")
    assert stamp_msg is not None
    spin_until(graph.executor, lambda: False, 0.3)
    stamp = stamp_msg.header.stamp
    assert graph.clients["cam_a"].latest("points2", stamp.sec * 10**9 + stamp.nanosec) is None
    node.set_parameters([Parameter("publish_points", value=True), Parameter("points_stride", value=1)])


def test_bad_parameter_values_are_refused_with_a_reason(graph):
    node = graph.nodes["cam_a"]
    result = node.set_parameters_atomically([Parameter("min_depth", value=5.0), Parameter("max_depth", value=2.0)])
    assert not result.successful and "max_depth" in result.reason
    assert node.get_parameter("min_depth").value == 0.0
    assert not node.set_parameters([Parameter("points_stride", value=0)])[0].successful  # below its range
    assert not node.set_parameters([Parameter("qos_reliability", value="reliable")])[0].successful  # read-only
    if hasattr(node, "add_pre_set_parameters_callback"):  # `ros2 param set ... max_depth 50` sends an int
        assert node.set_parameters([Parameter("max_depth", value=50)])[0].successful
        assert node.get_parameter("max_depth").value == 50.0
        assert node.set_parameters([Parameter("max_depth", value=0.0)])[0].successful


def test_depth_limits_apply(graph):
    node = graph.nodes["cam_a"]
    scene = SCENES["cam_a"]
    far = float(np.median(scene.depth))  # half the pixels are farther than this
    assert node.set_parameters([Parameter("max_depth", value=far)])[0].successful
    depth_msg = graph.exchange("cam_a", "depth")
    node.set_parameters([Parameter("max_depth", value=0.0)])
    from flashstereo_ros.ros_convert import array_from_image

    z = array_from_image(depth_msg)
    assert np.isposinf(z).any() and np.nanmax(z[np.isfinite(z)]) <= far


def test_console_entry_runs_one_node_per_namespace(tmp_path):
    command = node_command() + ["--namespaces", "front", "rear", "--ros-args"]
    for key, value in SMALL_MODEL.items():
        command += ["-p", f"{key}:={value}"]
    node = NodeProcess(command, ros_env(DOMAIN + 1), tmp_path / "node.log")
    context = init_context(DOMAIN + 1)
    ros = rclpy.create_node("cameras", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(ros)
    try:
        for namespace in ("front", "rear"):
            scene = SCENES["cam_a"]
            client = StereoClient(ros, namespace, outputs=["disparity"])
            assert spin_until(executor, client.matched, 20), node.log()
            stamp = now_ns(ros)
            client.publish_pair(image_msg(scene.left, "rgb8"), image_msg(scene.right, "rgb8"),
                                camera_infos(scene.focal_px, scene.baseline_m, W, H), stamp)
            assert spin_until(executor, lambda: client.latest("disparity", stamp), 10), node.log()
    finally:
        ros.destroy_node()
        rclpy.shutdown(context=context)
        code = node.stop()
    assert code == 0 and "shared by 2 node(s)" in node.log()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_a_process_that_exits_mid_frame_lets_the_frame_finish(tmp_path):
    """Ctrl-C in an application that never destroys its nodes: the interpreter must not tear the engines down
    under a running frame (that aborted the process); the node's exit hook waits for the frame."""
    script = tmp_path / "app.py"
    script.write_text(f"""
import sys, threading, time
import numpy as np
import rclpy
from flashstereo_ros.node import FlashStereoNode

rclpy.init(domain_id={DOMAIN + 2})
node = FlashStereoNode(namespace="exit", parameter_overrides={SMALL_MODEL!r})
started = threading.Event()

def slow_frame(*args):
    started.set()
    time.sleep(1.0)
    open({str(tmp_path / "finished")!r}, "w").close()

node._process = slow_frame
node._slot.put((None, None, None, None))
started.wait(30)
sys.exit(0)  # no destroy_node, no shutdown
""")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            env=ros_env(DOMAIN + 2))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "finished").exists()


def test_input_subscriptions_have_no_qos_event_handlers(graph):
    """The node re-subscribes from a timer when publishers change QoS; under a MultiThreadedExecutor an event
    handler destroyed while the spin thread adds it to the wait set raised InvalidHandle there and stopped
    every node of the process (rclpy 9)."""
    for node in graph.nodes.values():
        subscriptions = [sub for sub in node._subscriptions_by_input if sub is not None]
        assert len(subscriptions) == 4 and all(not sub.event_handlers for sub in subscriptions)
