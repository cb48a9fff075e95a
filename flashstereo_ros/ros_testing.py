"""A stereo camera stand-in for tests and demos: publishes image pairs + CameraInfo, collects the node's outputs.

Used by the ROS tests (real rclpy, real topics) and handy for trying the node without a camera:

    client = StereoClient(node)                  # any rclpy node
    client.publish_pair(scene.left, scene.right, infos=camera_infos(scene))
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from stereo_msgs.msg import DisparityImage

from . import ros_convert
from .sync import NANOSECONDS

OUTPUTS = {"disparity": DisparityImage, "disparity/color": Image, "depth": Image, "depth/camera_info": CameraInfo,
           "points2": PointCloud2}


def camera_infos(focal_px: float, baseline_m: float, width: int, height: int, cx_offset: float = 0.0,
                 frame_id: str = "camera_left_optical_frame") -> tuple[CameraInfo, CameraInfo]:
    """A rectified pair's CameraInfos: right P[0,3] = -f*B, right cx = left cx - cx_offset."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    infos = []
    for cx_side, tx in ((cx, 0.0), (cx - cx_offset, -focal_px * baseline_m)):
        info = CameraInfo()
        info.header.frame_id = frame_id
        info.width, info.height = width, height
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        info.k = np.array([focal_px, 0, cx_side, 0, focal_px, cy, 0, 0, 1], np.float64)
        info.r = np.eye(3).reshape(-1)
        info.p = np.array([focal_px, 0, cx_side, tx, 0, focal_px, cy, 0, 0, 0, 1, 0], np.float64)
        infos.append(info)
    return infos[0], infos[1]


def image_msg(values: np.ndarray, encoding: str, frame_id: str = "camera_left_optical_frame",
              row_padding: int = 0) -> Image:
    """An 8-bit Image, optionally with row padding (step > width * channels)."""
    values = np.ascontiguousarray(values)
    if values.ndim == 2:
        values = values[:, :, None]
    h, w, c = values.shape
    if row_padding:
        padded = np.full((h, w * c + row_padding), 0xAB, np.uint8)
        padded[:, : w * c] = values.reshape(h, w * c)
        values = padded
    msg = Image()
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.encoding = h, w, encoding
    msg.step = w * c + row_padding
    msg.data = values.tobytes()
    return msg


def encode(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """RGB uint8 -> the layout of encoding (rgb8, bgr8, rgba8, bgra8, mono8)."""
    if encoding == "rgb8":
        return rgb
    if encoding == "bgr8":
        return rgb[..., ::-1]
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    if encoding == "rgba8":
        return np.concatenate([rgb, alpha], axis=2)
    if encoding == "bgra8":
        return np.concatenate([rgb[..., ::-1], alpha], axis=2)
    if encoding in ("mono8", "8UC1"):
        return rgb.mean(axis=2).astype(np.uint8)
    raise ValueError(f"no test encoding for {encoding}")


def qos(reliable: bool, depth: int = 5) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)


class StereoClient:
    """Publishes left/right images and infos under a namespace; records every output of the node there."""

    def __init__(self, node, namespace: str = "", reliable: bool = True, outputs: Sequence[str] = tuple(OUTPUTS),
                 input_topics: Sequence[str] | None = None):
        self.node = node
        prefix = namespace.rstrip("/") + "/" if namespace else ""
        topics = input_topics or [prefix + t for t in ("left/image_rect", "left/camera_info",
                                                       "right/image_rect", "right/camera_info")]
        types = (Image, CameraInfo, Image, CameraInfo)
        self.publishers = [node.create_publisher(t, name, qos(reliable)) for t, name in zip(types, topics)]
        self.received: dict[str, collections.deque] = {}
        self._lock = threading.Lock()
        for name in outputs:
            self.received[name] = collections.deque(maxlen=50)
            node.create_subscription(OUTPUTS[name], prefix + name,
                                     lambda msg, n=name: self._store(n, msg), qos(True, 2))
        self.diagnostics: collections.deque = collections.deque(maxlen=200)
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda msg: self.diagnostics.append(msg), 20)

    def _store(self, name: str, msg) -> None:
        with self._lock:
            self.received[name].append((time.monotonic(), msg))

    def clear(self) -> None:
        with self._lock:
            for queue in self.received.values():
                queue.clear()
        self.diagnostics.clear()

    def matched(self) -> bool:
        """Every input publisher has a matching subscription (the node's QoS fits ours)."""
        return all(pub.get_subscription_count() > 0 for pub in self.publishers)

    def publish(self, index: int, msg, stamp_ns: int | None = None) -> None:
        if stamp_ns is not None:
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), NANOSECONDS)
        self.publishers[index].publish(msg)

    def publish_pair(self, left: Image, right: Image, infos: tuple[CameraInfo, CameraInfo], stamp_ns: int,
                     right_stamp_ns: int | None = None) -> None:
        """Images and infos with the same stamp (right_stamp_ns for the right side if given)."""
        right_stamp = stamp_ns if right_stamp_ns is None else right_stamp_ns
        self.publish(1, infos[0], stamp_ns)
        self.publish(3, infos[1], right_stamp)
        self.publish(0, left, stamp_ns)
        self.publish(2, right, right_stamp)

    def latest(self, name: str, stamp_ns: int | None = None):
        """The newest received message on an output (with that header stamp, if given), else None."""
        with self._lock:
            for _, msg in reversed(self.received[name]):
                if stamp_ns is None or _stamp(msg) == stamp_ns:
                    return msg
        return None

    def statuses(self, name_part: str = "") -> list:
        return [s for array in list(self.diagnostics) for s in array.status if name_part in s.name]


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * NANOSECONDS + int(msg.header.stamp.nanosec)


def now_ns(node) -> int:
    return node.get_clock().now().nanoseconds


def spin_until(executor, predicate: Callable[[], Any], timeout_s: float, step_s: float = 0.02):
    """Spin the executor until predicate() is truthy (returned) or timeout_s passes (None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=step_s)
        value = predicate()
        if value:
            return value
    return None


def ros_env(domain_id: int, large_data: bool = False, base: dict | None = None) -> dict:
    """Environment for a process on an isolated, loopback-only ROS domain."""
    env = dict(os.environ if base is None else base)
    env.update(ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0",
               RCUTILS_COLORIZED_OUTPUT="0")
    env.pop("ROS_LOCALHOST_ONLY", None)
    if large_data:
        # measured here: LARGE_DATA together with the LOCALHOST discovery range delivered ~1 image in 40
        env["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
        env.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    else:
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    return env


def init_context(domain_id: int):
    """A fresh rclpy Context on an isolated, loopback-only domain (this process's environment left as it was)."""
    import rclpy

    keys = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_BUILTIN_TRANSPORTS", "ROS_LOCALHOST_ONLY")
    saved = {key: os.environ.get(key) for key in keys}
    try:
        for key in keys[1:]:
            os.environ.pop(key, None)
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # read when the context starts
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain_id)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return context


def node_command() -> list[str]:
    """The node's console entry as a user runs it (beside this Python), else `python -m flashstereo_ros.node`."""
    import sys

    entry = Path(sys.executable).parent / "flashstereo-node"
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "flashstereo_ros.node"]


class NodeProcess:
    """The node as a user runs it: a subprocess of the console entry, output captured to a log file."""

    def __init__(self, command: Sequence[str], env: dict, log_path: Path):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        # its own process group, so stop() can do what ctrl-c in a terminal does (launch relies on that)
        self.proc = subprocess.Popen(list(command), env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5.0)
        self._log.close()
        return self.proc.returncode


def disparity_array(msg: DisparityImage) -> np.ndarray:
    return ros_convert.array_from_image(msg.image)


# ---- exchange: a camera stand-in in its own process (its DDS environment is its own) -------------------
RESEND_S = 2.0  # a frame not answered by then is sent again with a new stamp (best-effort may lose it)


def _frame_messages(frame: dict):
    from . import synthetic

    scene = synthetic.make_scene(frame.get("kind", "planes"), frame["height"], frame["width"], frame.get("seed", 0))
    encoding = frame.get("encoding", "bgr8")
    frame_id = frame.get("frame_id", "camera_left_optical_frame")
    left = image_msg(encode(scene.left, encoding), encoding, frame_id)
    right = image_msg(encode(scene.right, encoding), encoding, frame_id)
    infos = camera_infos(scene.focal_px, scene.baseline_m, frame["width"], frame["height"],
                         frame.get("cx_offset", 0.0), frame_id)
    return left, right, infos


def exchange(spec: dict, out_path: str) -> int:
    """Publish each frame of spec until every requested output answers it; save what came back (npz)."""
    import json

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node("stereo_exchange_client")
    outputs = spec.get("outputs", ["disparity", "disparity/color"])
    client = StereoClient(node, spec.get("namespace", ""), spec.get("reliable", True), outputs)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    results: dict[str, Any] = {}
    meta: list[dict] = []
    code = 0
    try:
        if not spin_until(executor, client.matched, spec.get("match_timeout_s", 30.0)):
            raise TimeoutError("the node's subscriptions never matched this client's publishers")
        for index, frame in enumerate(spec["frames"]):
            left, right, infos = _frame_messages(frame)
            deadline = time.monotonic() + spec.get("frame_timeout_s", 60.0)
            answered = None
            while answered is None and time.monotonic() < deadline:
                stamp = now_ns(node)
                client.publish_pair(left, right, infos, stamp)
                answered = spin_until(executor, lambda: all(client.latest(name, stamp) for name in outputs)
                                      and stamp, RESEND_S)
            if answered is None:
                raise TimeoutError(f"frame {index} ({frame}) got no answer on all of {outputs}")
            meta.append(_save_frame(client, index, stamp, outputs, results))
    except Exception as exc:  # reported to the test through the exit code and the output
        print(f"exchange failed: {type(exc).__name__}: {exc}", flush=True)
        code = 1
    finally:
        results["meta"] = np.array(json.dumps(meta))
        np.savez(out_path, **results)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


def _save_frame(client: StereoClient, index: int, stamp: int, outputs, results: dict) -> dict:
    meta: dict[str, Any] = {"stamp": stamp}
    disparity = client.latest("disparity", stamp)
    results[f"{index}/disparity"] = disparity_array(disparity)
    meta["disparity"] = {"f": disparity.f, "t": disparity.t, "min_disparity": disparity.min_disparity,
                         "max_disparity": disparity.max_disparity, "delta_d": disparity.delta_d,
                         "frame_id": disparity.header.frame_id, "image_frame_id": disparity.image.header.frame_id,
                         "encoding": disparity.image.encoding,
                         "valid_window": [disparity.valid_window.x_offset, disparity.valid_window.y_offset,
                                          disparity.valid_window.width, disparity.valid_window.height]}
    if "disparity/color" in outputs:
        color = client.latest("disparity/color", stamp)
        results[f"{index}/color"] = ros_convert.array_from_image(color)
        meta["color"] = {"encoding": color.encoding, "frame_id": color.header.frame_id}
    if "depth" in outputs:
        depth = client.latest("depth", stamp)
        results[f"{index}/depth"] = ros_convert.array_from_image(depth)
        meta["depth"] = {"encoding": depth.encoding, "frame_id": depth.header.frame_id}
    if "depth/camera_info" in outputs:
        info = client.latest("depth/camera_info", stamp)
        meta["depth_info"] = {"k": list(info.k), "p": list(info.p), "width": info.width, "height": info.height,
                              "frame_id": info.header.frame_id}
    if "points2" in outputs:
        cloud = client.latest("points2", stamp)
        results[f"{index}/points"] = ros_convert.points_from_message(cloud)
        meta["points"] = {"fields": [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields],
                          "is_dense": cloud.is_dense, "frame_id": cloud.header.frame_id,
                          "height": cloud.height, "width": cloud.width}
    return meta


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Publish synthetic stereo frames to a running stereo node and "
                                                 "save its answers (used by the tests).")
    parser.add_argument("spec", help="JSON: {namespace, reliable, outputs, frames: [{kind, height, width, seed, "
                                     "encoding, cx_offset}]}")
    parser.add_argument("out", help="npz file to write")
    args = parser.parse_args(argv)
    return exchange(json.loads(Path(args.spec).read_text()), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
