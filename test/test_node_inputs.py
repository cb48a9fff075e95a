"""Every input the node may get from a real camera, good or bad, over real topics.

The node runs as a user runs it (console entry, subprocess, small bundled model on the CPU, namespace
/cam). After each bad input: a WARN/ERROR diagnostic names the problem, a log line says it, the node lives
on and the next good pair is processed.
"""
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from flashstereo_ros import resources, synthetic  # noqa: E402
from flashstereo_ros.diagnostics import WARN, status_level  # noqa: E402
from flashstereo_ros.ros_testing import (NodeProcess, StereoClient, camera_infos, disparity_array, encode,  # noqa: E402
                                         image_msg, init_context, node_command, now_ns, ros_env, spin_until)

pytestmark = [pytest.mark.ros, pytest.mark.slow]
DOMAIN = 63
NAMESPACE = "cam"
H, W = 64, 128
SCENE = synthetic.make_scene("planes", H, W, seed=3)
ANSWER_TIMEOUT_S = 10.0
DIAGNOSTIC_TIMEOUT_S = 8.0


class Rig:
    """The node subprocess, an in-process camera client, and helpers to talk to the node."""

    def __init__(self, tmp_path):
        feat, post = resources.bundled_models(".onnx", (H, W))
        self.node = NodeProcess(node_command() + ["--ros-args", "-r", f"__ns:=/{NAMESPACE}", "-p", "device:=cpu",
                                                  "-p", f"feat_engine:={feat}", "-p", f"post_engine:={post}"],
                                ros_env(DOMAIN), tmp_path / "node.log")
        self.context = init_context(DOMAIN)
        self.ros = rclpy.create_node("camera_stand_in", context=self.context)
        self.client = StereoClient(self.ros, NAMESPACE)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.ros)
        self.infos = camera_infos(SCENE.focal_px, SCENE.baseline_m, W, H, cx_offset=1.5)
        assert self.spin(self.client.matched, 30.0), "the node never subscribed:\n" + self.node.log()

    def spin(self, predicate, timeout_s):
        return spin_until(self.executor, predicate, timeout_s)

    def pair(self, left_enc="rgb8", right_enc="rgb8", padding=0):
        return (image_msg(encode(SCENE.left, left_enc), left_enc, row_padding=padding),
                image_msg(encode(SCENE.right, right_enc), right_enc, row_padding=padding))

    def send(self, left, right, infos=None, stamp=None, right_stamp=None) -> int:
        stamp = now_ns(self.ros) if stamp is None else stamp
        self.client.publish_pair(left, right, infos or self.infos, stamp, right_stamp)
        return stamp

    def answer(self, stamp, output="disparity", timeout_s=ANSWER_TIMEOUT_S):
        return self.spin(lambda: self.client.latest(output, stamp), timeout_s)

    def good_pair_is_processed(self) -> np.ndarray:
        stamp = self.send(*self.pair())
        msg = self.answer(stamp)
        assert msg is not None, "a good pair was not processed:\n" + self.node.log()[-3000:]
        assert self.node.alive()
        return disparity_array(msg)

    def problem(self, keyword, since_ns, timeout_s=DIAGNOSTIC_TIMEOUT_S, level=WARN):
        """The first diagnostic status after since_ns at >= level whose message contains keyword."""
        def found():
            for array in list(self.client.diagnostics):
                stamp = array.header.stamp.sec * 10**9 + array.header.stamp.nanosec
                for status in array.status:
                    if (stamp >= since_ns and f"/{NAMESPACE}/" in status.name and status_level(status) >= level
                            and keyword in status.message):
                        return status
            return None
        return self.spin(found, timeout_s)

    def log_lines(self) -> int:
        return len(self.node.log().splitlines())

    def logged(self, keyword, after_line=0, timeout_s=3.0) -> bool:
        """A WARN/ERROR line containing keyword among the log lines after line number after_line."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = self.node.log().splitlines()[after_line:]
            if any(keyword in line and ("[WARN]" in line or "[ERROR]" in line) for line in lines):
                return True
            time.sleep(0.1)
        return False

    def close(self):
        self.ros.destroy_node()
        rclpy.shutdown(context=self.context)
        return self.node.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    rig = Rig(tmp_path_factory.mktemp("node_inputs"))
    try:
        yield rig
    finally:
        code = rig.close()
        print(rig.node.log()[-5000:])
    assert code == 0, "the node did not shut down cleanly"


def expect_refused(rig, send, keyword):
    since = now_ns(rig.ros)
    send()
    status = rig.problem(keyword, since)
    assert status is not None, f"no WARN/ERROR diagnostic containing {keyword!r}:\n" + rig.node.log()[-3000:]
    # logged once per kind of problem and period (a truncated and a too-short image differ only in numbers)
    assert rig.logged(keyword), f"no log line containing {keyword!r}"
    rig.good_pair_is_processed()
    return status


def test_a_good_pair_is_processed(rig):
    disparity = rig.good_pair_is_processed()
    assert disparity.shape == (H, W)


@pytest.mark.parametrize("left_enc,right_enc", [("bgr8", "bgr8"), ("rgba8", "rgba8"), ("bgra8", "bgra8"),
                                                ("bgr8", "rgba8")])
def test_colour_encodings_give_the_rgb8_result(rig, left_enc, right_enc):
    reference = rig.good_pair_is_processed()
    stamp = rig.send(*rig.pair(left_enc, right_enc))
    assert np.array_equal(disparity_array(rig.answer(stamp)), reference)


def test_mono8_is_accepted(rig):
    stamp = rig.send(*rig.pair("mono8", "mono8"))
    disparity = disparity_array(rig.answer(stamp))
    assert disparity.shape == (H, W) and np.isfinite(disparity).all()


def test_row_padding_is_respected(rig):
    reference = rig.good_pair_is_processed()
    stamp = rig.send(*rig.pair("bgr8", "bgr8", padding=13))
    assert np.array_equal(disparity_array(rig.answer(stamp)), reference)


def with_encoding(rig, encoding):
    left, right = rig.pair()
    left.encoding = right.encoding = encoding
    return left, right


def resized(rig, height, width, data_bytes=None, step=None):
    left, right = rig.pair()
    left.height, left.width = height, width
    left.step = step if step is not None else width * 3
    if data_bytes is not None:
        left.data = left.data[:data_bytes]
    return left, right


BAD_IMAGES = {
    "mono16": (lambda rig: with_encoding(rig, "mono16"), "16-bit images are not supported"),
    "bayer": (lambda rig: with_encoding(rig, "bayer_rggb8"), "must be debayered"),
    "yuv": (lambda rig: with_encoding(rig, "yuv422"), "YUV images"),
    "no encoding": (lambda rig: with_encoding(rig, ""), "no encoding"),
    "mismatched sizes": (lambda rig: (rig.pair()[0], image_msg(encode(SCENE.right[:48, :100], "rgb8"), "rgb8")),
                         "a rectified pair has one size"),
    "truncated data": (lambda rig: resized(rig, H, W, data_bytes=H * W * 3 // 2), "truncated"),
    "declared larger than data": (lambda rig: resized(rig, 2 * H, 2 * W), "needs"),
    "zero size": (lambda rig: resized(rig, 0, 0, data_bytes=0), "is empty"),
    "step too small": (lambda rig: resized(rig, H, W, step=W), "smaller than width x channels"),
    "absurd size": (lambda rig: resized(rig, 2**31 - 1, 2**20), "truncated"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_is_refused_and_the_next_pair_processed(rig, case):
    build, keyword = BAD_IMAGES[case]
    status = expect_refused(rig, lambda: rig.send(*build(rig)), keyword)
    assert status_level(status) >= WARN


def zero_infos(rig):
    left, right = camera_infos(SCENE.focal_px, SCENE.baseline_m, W, H)
    left.p.fill(0), right.p.fill(0), left.k.fill(0), right.k.fill(0)
    return left, right


def zero_baseline_infos(rig):
    left, right = camera_infos(SCENE.focal_px, SCENE.baseline_m, W, H)
    right.p[3] = 0.0
    return left, right


def zero_focal_infos(rig):
    left, right = camera_infos(SCENE.focal_px, SCENE.baseline_m, W, H)
    left.p[0] = right.p[0] = 0.0
    return left, right


@pytest.mark.parametrize("infos,keyword", [(zero_infos, "focal length"), (zero_focal_infos, "focal length"),
                                           (zero_baseline_infos, "baseline must be positive")])
def test_unusable_camera_info_publishes_disparity_but_no_depth_or_points(rig, infos, keyword):
    since = now_ns(rig.ros)
    stamp = rig.send(*rig.pair(), infos=infos(rig))
    disparity = rig.answer(stamp)
    assert disparity is not None and disparity_array(disparity).shape == (H, W)
    status = rig.problem(keyword, since)
    assert status is not None and "no depth or points" in status.message
    problem = next(kv.value for kv in status.values if kv.key == "problem: camera_info")
    assert problem.startswith("WARN") and keyword in problem
    assert rig.logged(keyword)  # once per kind and period: a zero P and a zero focal length say the same
    rig.spin(lambda: False, 0.5)  # depth and points would have followed the disparity by now
    assert rig.client.latest("depth", stamp) is None and rig.client.latest("points2", stamp) is None
    good = rig.send(*rig.pair())
    assert rig.answer(good, "depth") is not None and rig.answer(good, "points2") is not None


def test_missing_camera_info_is_reported(rig):
    since, lines = now_ns(rig.ros), rig.log_lines()
    deadline = time.monotonic() + 6.0
    status = None
    while status is None and time.monotonic() < deadline:  # images at 5 Hz, camera infos never
        left, right = rig.pair()
        stamp = now_ns(rig.ros)
        rig.client.publish(0, left, stamp)
        rig.client.publish(2, right, stamp)
        status = rig.problem(f"no input on /{NAMESPACE}/left/camera_info", since, timeout_s=0.2)
    assert status is not None and "nothing received" in status.message
    assert rig.logged(f"no input on /{NAMESPACE}/left/camera_info", lines)
    rig.good_pair_is_processed()


def test_unsynchronized_stamps_are_reported(rig):
    since, lines = now_ns(rig.ros), rig.log_lines()
    deadline = time.monotonic() + 8.0
    status = None
    base = now_ns(rig.ros)
    for k in range(100):  # ~5 Hz; stamps on a 100 ms grid, right ones 250 ms late: never within slop
        if status is not None or time.monotonic() > deadline:
            break
        stamp = base + k * 100_000_000
        rig.send(*rig.pair(), stamp=stamp, right_stamp=stamp + 250_000_000)
        status = rig.problem("no set has synchronized", since, timeout_s=0.2)
    assert status is not None and "sync_slop_s" in status.message
    assert rig.logged("no set has synchronized", lines)
    rig.good_pair_is_processed()


def test_camera_info_arriving_after_its_images_is_used(rig):
    stamp = now_ns(rig.ros)
    left, right = rig.pair()
    rig.client.publish(0, left, stamp)
    rig.client.publish(2, right, stamp)
    rig.spin(lambda: False, 0.3)
    rig.client.publish(1, rig.infos[0], stamp)
    rig.client.publish(3, rig.infos[1], stamp)
    assert rig.answer(stamp) is not None and rig.answer(stamp, "depth") is not None


def test_camera_infos_a_few_frames_late_are_still_matched_by_stamp(rig):
    """A busy executor may take several image pairs before their infos: that is not a latched calibration."""
    rig.good_pair_is_processed()  # the node has had CameraInfos before
    lines = rig.log_lines()
    left, right = rig.pair()
    stamps = [now_ns(rig.ros) + k * 33_333_333 for k in range(4)]
    for stamp in stamps:
        rig.client.publish(0, left, stamp)
        rig.client.publish(2, right, stamp)
    rig.spin(lambda: False, 0.2)
    for stamp in stamps:
        rig.client.publish(1, rig.infos[0], stamp)
        rig.client.publish(3, rig.infos[1], stamp)
    assert rig.answer(stamps[-1]) is not None
    assert not rig.logged("do not come with the images' stamps", lines, timeout_s=0.5)
    assert "do not come with the images' stamps" not in "\n".join(rig.node.log().splitlines()[lines:])


def test_a_repeated_problem_is_logged_once_per_period(rig):
    since = now_ns(rig.ros)
    for _ in range(5):
        rig.send(*with_encoding(rig, "bayer_gbrg8"))
        rig.spin(lambda: False, 0.1)
    assert rig.problem("bayer_gbrg8", since) is not None
    lines = [line for line in rig.node.log().splitlines() if "'bayer_gbrg8'" in line]
    assert len(lines) == 1, lines
    rig.good_pair_is_processed()


def test_a_problem_whose_numbers_change_every_frame_is_logged_once_per_period(rig):
    """A lossy link cuts each image at another byte: one kind of problem, not a new one per frame."""
    since, lines = now_ns(rig.ros), rig.log_lines()
    for cut in range(5):
        rig.send(*resized(rig, H, W, data_bytes=H * W * 3 - 1 - cut))
        rig.spin(lambda: False, 0.1)
    assert rig.problem("truncated", since) is not None
    logged = [line for line in rig.node.log().splitlines()[lines:] if "truncated" in line]
    assert len(logged) == 1, logged
    rig.good_pair_is_processed()


def test_a_missing_right_image_does_not_wedge_the_node(rig):
    for _ in range(3):
        stamp = now_ns(rig.ros)
        left, _ = rig.pair()
        rig.client.publish(1, rig.infos[0], stamp)
        rig.client.publish(3, rig.infos[1], stamp)
        rig.client.publish(0, left, stamp)
        rig.spin(lambda: False, 0.05)
    rig.good_pair_is_processed()


def test_out_of_order_pairs_are_each_matched(rig):
    older = now_ns(rig.ros)
    newer = older + 100_000_000
    rig.send(*rig.pair(), stamp=newer)
    rig.send(*rig.pair(), stamp=older)
    assert rig.answer(newer) is not None
    rig.good_pair_is_processed()


def answers_with_stamp(rig, stamp) -> int:
    stamps = (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in rig.client.received["disparity"])
    return sum(s == stamp for s in stamps)


def test_pairs_that_repeat_a_stamp_are_each_processed_and_reported(rig):
    since, lines = now_ns(rig.ros), rig.log_lines()
    stamp = now_ns(rig.ros)
    for k in range(3):  # a driver that does not stamp: every pair carries the same time
        rig.send(*rig.pair(), stamp=stamp)
        assert rig.spin(lambda: answers_with_stamp(rig, stamp) > k, ANSWER_TIMEOUT_S), rig.node.log()[-3000:]
    assert rig.problem("same stamp", since) is not None
    assert rig.logged("same stamp", lines)
    rig.good_pair_is_processed()


def test_a_backward_time_jump_does_not_stall_the_node(rig):
    since, lines = now_ns(rig.ros), rig.log_lines()
    base = now_ns(rig.ros)
    left, _ = rig.pair()
    for k in range(8):  # left images and infos whose right images were lost fill the queues
        stamp = base + k * 33_333_333
        rig.client.publish(0, left, stamp)
        rig.client.publish(1, rig.infos[0], stamp)
        rig.client.publish(3, rig.infos[1], stamp)
    rig.spin(lambda: False, 0.3)
    back = base - 60 * 10**9  # a simulation reset, or a bag started again
    assert rig.answer(rig.send(*rig.pair(), stamp=back)) is not None, rig.node.log()[-3000:]
    assert rig.problem("stamp went back", since) is not None
    assert rig.logged("stamp went back", lines)
    rig.good_pair_is_processed()


def dropped_pairs(rig) -> int:
    status = rig.problem("", now_ns(rig.ros), level=0)
    return int(next(kv.value for kv in status.values if kv.key == "dropped pairs"))


def test_images_faster_than_processing_are_dropped_and_latency_stays_bounded(rig):
    dropped_before = dropped_pairs(rig)
    start = time.monotonic()
    rig.good_pair_is_processed()
    one_frame_s = time.monotonic() - start
    rig.client.clear()
    left, right = rig.pair()
    # a burst as fast as Python publishes, stamped as a 30 Hz camera would (frames further apart than the slop)
    base = now_ns(rig.ros)
    stamps = [rig.send(left, right, stamp=base + k * 33_333_333) for k in range(60)]
    sent_at = time.monotonic()
    newest = rig.answer(stamps[-1])
    assert newest is not None, "the newest pair of the burst was not processed"
    latency_s = time.monotonic() - sent_at
    answered = {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in rig.client.received["disparity"]}
    dropped = dropped_pairs(rig) - dropped_before
    print(f"burst of {len(stamps)}: {len(answered & set(stamps))} processed, {dropped} dropped by the node, newest "
          f"answered {latency_s:.3f} s after the burst was sent (one frame alone: {one_frame_s:.3f} s)")
    assert len(answered & set(stamps)) < len(stamps) and dropped > 0
    # in order, the newest would wait for all 60 before it; newest-only keeps it to a few frames
    assert latency_s < 5 * one_frame_s + 0.5


def test_the_node_is_alive_after_all_of_it(rig):
    assert rig.node.alive()
    rig.good_pair_is_processed()
