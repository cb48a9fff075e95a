"""FlashStereoNode: synchronized rectified stereo in; DisparityImage, colour, depth, points, diagnostics out.

Subscriptions only queue messages into the synchronizer, and the synchronizer only hands the newest set
to a worker thread, which converts, runs the shared pipeline and publishes. So a slow frame never
blocks the executor or builds a backlog: pairs that arrive while one is processed replace each other
(counted as dropped). Several nodes (one per camera pair) can live in one process and executor and
share one loaded engine pair (shared_pipelines).

Run one: `flashstereo-node --ros-args ...` (or `ros2 run flashstereo_ros stereo_node`, `ros2 launch
flashstereo_ros stereo.launch.py`); several in one process: `flashstereo-node --namespaces front rear`.
"""
from __future__ import annotations

import argparse
import atexit
import collections
import dataclasses
import os
import re
import sys
import threading
import time
from typing import Any, Iterable, Mapping

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from stereo_msgs.msg import DisparityImage

from . import ros_convert, ros_qos, shared_pipelines
from .depth import DepthLimits
from .diagnostics import (ERROR, LEVEL_NAMES, WARN, ProblemBoard, RateMeter, RollingStats, Throttle, format_ms,
                          status_message, summarize)
from .errors import FlashStereoError, StereoInputError
from .node_params import (FRAME_SETTINGS, PARAMETERS, FrameSettings, as_declared_type, check_frame_settings,
                          check_value, descriptor)
from .sync import (NANOSECONDS, CameraInfoMatching, NewestSlot, make_synchronizer, message_filters_available,
                   stamp_ns, stamp_text, stamps_spread_s)

try:  # the typed per-frame timing message, when the companion interfaces package is built (docs/ROS.md)
    from flashstereo_interfaces.msg import StageTiming
except ImportError:
    StageTiming = None

DEFAULT_NODE_NAME = "flashstereo"
# synchronizer input order, as stereo_image_proc: left image, left info, right image, right info
INPUT_TOPICS = ("left/image_rect", "left/camera_info", "right/image_rect", "right/camera_info")
INPUT_TYPES = (Image, CameraInfo, Image, CameraInfo)
LEFT_IMAGE, LEFT_INFO, RIGHT_IMAGE, RIGHT_INFO = range(4)
IMAGE_INPUTS = (LEFT_IMAGE, RIGHT_IMAGE)
INFO_INPUTS = (LEFT_INFO, RIGHT_INFO)
OUTPUT_TOPICS = {"disparity": "disparity", "color": "disparity/color", "depth": "depth",
                 "depth_info": "depth/camera_info", "points": "points2", "timing": "~/timing"}
DIAGNOSTICS_TOPIC = "/diagnostics"
DIAGNOSTICS_PERIOD_S = 1.0
QOS_CHECK_PERIOD_S = 1.0
NO_INPUT_WARN_S = 3.0  # publishers exist but nothing arrived for this long: say so
LOG_THROTTLE_S = 5.0  # the same problem is logged at most this often
NUMBER = re.compile(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?")  # measurements in a problem's message
PROBLEM_HOLD_S = 5.0  # a problem stays in the diagnostics this long after it was last seen
DISPARITY_DELTA_D = 1.0 / 16.0  # sub-pixel step, as stereo_image_proc; the network's output is float32
CLOCK_MISMATCH_S = 3600.0  # stamps this far from the node clock come from another clock: no latency
FUTURE_STAMP_S = 1.0  # stamps this far ahead of the node clock: not the same clock either
WORKER_POLL_S = 0.2
RECENT_PAIRS = 16  # left images remembered so a pair handed over by both paths is processed once
TIME_JUMP_S = 1.0  # a stamp this much older than its topic's last one: the clock jumped back (sim reset, bag)


def timing_message_type() -> type:
    """flashstereo_interfaces/StageTiming when built, else diagnostic_msgs/DiagnosticStatus (docs/ROS.md)."""
    return StageTiming if StageTiming is not None else DiagnosticStatus


@dataclasses.dataclass
class InputState:
    """What one input topic has seen (for diagnostics)."""

    arrivals: RateMeter = dataclasses.field(default_factory=RateMeter)
    last_stamp: int | None = None
    reliability: Any = None  # what this node subscribes with
    durability: Any = None
    offered: list = dataclasses.field(default_factory=list)  # what the publishers offer
    offered_durability: list = dataclasses.field(default_factory=list)
    latest: Any = None  # the newest message (camera infos: used when stamps never match the images)
    publishers: int = 0
    subscribed_at: float = 0.0
    publishers_since: float = 0.0  # when the first of the current publishers appeared


def _as_declared(parameter: Parameter) -> Parameter:
    value = as_declared_type(parameter.name, parameter.value)
    return parameter if value is parameter.value else Parameter(parameter.name, value=value)


def _as_parameters(overrides: Mapping[str, Any] | Iterable[Parameter] | None) -> list[Parameter]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [Parameter(name, value=value) for name, value in overrides.items()]
    return list(overrides)


class FlashStereoNode(Node):
    """One rectified camera pair -> disparity (+ colour, depth, points, timing, diagnostics)."""

    def __init__(self, node_name: str = DEFAULT_NODE_NAME, *, namespace: str | None = None,
                 parameter_overrides: Mapping[str, Any] | Iterable[Parameter] | None = None, **node_options):
        super().__init__(node_name, namespace=namespace, parameter_overrides=_as_parameters(parameter_overrides),
                         **node_options)
        self._shared = None
        try:
            self._declare_parameters()
            self._frame_settings = self._read_frame_settings()
            if hasattr(self, "add_pre_set_parameters_callback"):  # rclpy of Iron and later
                self.add_pre_set_parameters_callback(self._parameters_as_declared)
            self.add_on_set_parameters_callback(self._on_set_parameters)
            self._problems = ProblemBoard(PROBLEM_HOLD_S)
            self._log_throttle = Throttle(LOG_THROTTLE_S)
            self._shared = shared_pipelines.acquire(self._param("feat_engine"), self._param("post_engine"),
                                                    self._param("device"), self._param("backend"))
            self._setup()
        except BaseException:  # a node that failed to start leaves nothing behind (engines, graph entities)
            if self._shared is not None:
                shared_pipelines.release(self._shared)
            Node.destroy_node(self)
            raise

    # ---- set-up ------------------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        for spec in PARAMETERS:
            override = self._parameter_overrides.get(spec.name)
            if override is not None:  # YAML/CLI "max_depth: 10": rclpy would refuse the int for a double
                self._parameter_overrides[spec.name] = _as_declared(override)
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
            reason = check_value(spec.name, self._param(spec.name))
            if reason is not None:
                raise ValueError(f"parameter {reason}")

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _read_frame_settings(self) -> FrameSettings:
        settings = FrameSettings(**{name: self._param(name) for name in FRAME_SETTINGS})
        reason = check_frame_settings(settings)
        if reason is not None:
            raise ValueError(f"parameter {reason}")
        return settings

    def _setup(self) -> None:
        pipe = self._shared.pipeline
        self._pipeline_name = f"{type(pipe).__name__} ({self._shared.key[2]})"
        out_qos = ros_qos.output_qos(self._param("output_qos_reliability"), self._param("output_qos_depth"))
        self._pub_disparity = self.create_publisher(DisparityImage, OUTPUT_TOPICS["disparity"], out_qos)
        self._pub_color = self.create_publisher(Image, OUTPUT_TOPICS["color"], out_qos)
        self._pub_depth = self.create_publisher(Image, OUTPUT_TOPICS["depth"], out_qos)
        self._pub_depth_info = self.create_publisher(CameraInfo, OUTPUT_TOPICS["depth_info"], out_qos)
        self._pub_points = self.create_publisher(PointCloud2, OUTPUT_TOPICS["points"], out_qos)
        self._pub_timing = self.create_publisher(timing_message_type(), OUTPUT_TOPICS["timing"], out_qos)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, QoSProfile(depth=10))

        self._approximate = bool(self._param("approximate_sync")) and self._param("sync_slop_s") > 0
        self._sync = make_synchronizer(len(INPUT_TOPICS), self._param("queue_size"), self._on_synchronized,
                                       self._approximate, self._param("sync_slop_s"))
        # the images alone too: a pair whose CameraInfos never come with its stamp can use the newest ones
        self._image_sync = make_synchronizer(2, self._param("queue_size"), self._on_image_pair, self._approximate,
                                             self._param("sync_slop_s"))
        self._sync_backend = "message_filters" if message_filters_available() else "built-in"
        self._handoff_lock = threading.Lock()
        self._info_mode = CameraInfoMatching()
        self._newest_info_pairs = 0
        self._newest_info_used = RateMeter()
        self._recent_lefts: collections.deque = collections.deque(maxlen=RECENT_PAIRS)
        self._last_left_stamp: int | None = None
        self._slot = NewestSlot()
        self._synchronized = RateMeter()
        self._published = RateMeter()
        self._stage_stats: dict[str, RollingStats] = {}
        self._latency = RollingStats()
        self._frames = 0
        self._input_errors = 0
        self._started_at = time.monotonic()
        self._last_size: tuple | None = None
        self._warming_up = bool(self._param("warmup"))

        self._inputs = [InputState() for _ in INPUT_TOPICS]
        self._subscriptions_by_input: list[Any] = [None] * len(INPUT_TOPICS)
        for index in range(len(INPUT_TOPICS)):
            self._subscribe(index, ros_qos.choose_reliability(self._param("qos_reliability"), []),
                            ros_qos.choose_durability([]))
        self._check_qos()
        # on the steady clock: with use_sim_time and no /clock yet, ROS time stands still
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._qos_timer = self.create_timer(QOS_CHECK_PERIOD_S, lambda: self._guarded(self._check_qos), clock=steady)
        self._diagnostics_timer = self.create_timer(DIAGNOSTICS_PERIOD_S,
                                                    lambda: self._guarded(self._publish_diagnostics), clock=steady)

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name=f"flashstereo:{self.get_fully_qualified_name()}",
                                        daemon=True)
        self._worker.start()
        # a process that ends (Ctrl-C) without destroying its nodes must not exit while a frame runs in the
        # engines: the interpreter would tear their threads down under it (abort)
        atexit.register(self._stop_worker)
        engine_h, engine_w = pipe.input_size
        self.get_logger().info(
            f"{self._pipeline_name}, engine {engine_w}x{engine_h}, max_disp {pipe.geometry.max_disp} "
            f"(shared by {self._shared.users} node(s)); sync {self._sync_description()}; "
            f"inputs {', '.join(self._resolved(i) for i in range(len(INPUT_TOPICS)))}; "
            f"timing on {self._pub_timing.topic_name} as {timing_message_type().__name__}")

    def _sync_description(self) -> str:
        mode = f"approximate, slop {self._param('sync_slop_s'):.3f} s" if self._approximate else "exact stamps"
        return f"{mode}, queue {self._param('queue_size')} ({self._sync_backend})"

    def _resolved(self, index: int) -> str:
        sub = self._subscriptions_by_input[index]
        return sub.topic_name if sub is not None else self.resolve_topic_name(INPUT_TOPICS[index])

    # ---- inputs and QoS --------------------------------------------------------------------------
    def _subscribe(self, index: int, reliability, durability) -> None:
        old = self._subscriptions_by_input[index]
        if old is not None:
            self.destroy_subscription(old)
        qos = ros_qos.input_qos(reliability, self._param("queue_size"), durability)
        # no QoS event handlers: a MultiThreadedExecutor may be adding one to its wait set while this (a timer
        # callback in another thread) destroys it, and rclpy then raises in the spin thread; the node's own
        # diagnostics say what the default incompatible-QoS warning would
        self._subscriptions_by_input[index] = self.create_subscription(
            INPUT_TYPES[index], INPUT_TOPICS[index], lambda msg, i=index: self._on_input(i, msg), qos,
            event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False))
        state = self._inputs[index]
        state.reliability, state.durability, state.subscribed_at = reliability, durability, time.monotonic()

    def _check_qos(self) -> None:
        """Follow the publishers' offered reliability (auto), and latching of camera infos, as they come and go."""
        setting = self._param("qos_reliability")
        for index, state in enumerate(self._inputs):
            infos = self.get_publishers_info_by_topic(self._resolved(index))
            state.offered = [info.qos_profile.reliability for info in infos]
            state.offered_durability = [info.qos_profile.durability for info in infos]
            if infos and not state.publishers:
                state.publishers_since = time.monotonic()
            state.publishers = len(infos)
            reliability = ros_qos.choose_reliability(setting, state.offered)
            durability = (ros_qos.choose_durability(state.offered_durability) if index in INFO_INPUTS
                          else ros_qos.choose_durability([]))
            if (reliability, durability) != (state.reliability, state.durability):
                offered = "/".join(sorted({ros_qos.policy_name(p) for p in state.offered}))
                self.get_logger().info(
                    f"{self._resolved(index)}: publishers offer {offered}; subscribing "
                    f"{ros_qos.policy_name(reliability)} (was {ros_qos.policy_name(state.reliability)}), "
                    f"{durability.name.lower()}")
                self._subscribe(index, reliability, durability)

    def _on_input(self, index: int, msg) -> None:
        state = self._inputs[index]
        state.arrivals.tick(time.monotonic())
        try:
            stamp = stamp_ns(msg)
            if state.last_stamp is not None and stamp < state.last_stamp - TIME_JUMP_S * NANOSECONDS:
                self._time_jumped(index, stamp, state.last_stamp)
            state.last_stamp = stamp
            state.latest = msg
            self._sync.add(index, msg)
            if index in IMAGE_INPUTS:
                self._image_sync.add(IMAGE_INPUTS.index(index), msg)
        except Exception as exc:  # a malformed message must not take the executor down
            self._problem("synchronizer", ERROR, f"{INPUT_TOPICS[index]}: {type(exc).__name__}: {exc}")

    def _time_jumped(self, index: int, stamp: int, last_stamp: int) -> None:
        """Queued messages from before the jump would never match again and would keep new ones out."""
        newest_kept = stamp + TIME_JUMP_S * NANOSECONDS
        self._sync.discard_after(newest_kept)
        self._image_sync.discard_after(newest_kept)
        self._problem("time jump", WARN,
                      f"{self._resolved(index)}: stamp went back {(last_stamp - stamp) / NANOSECONDS:.3f} s "
                      "(simulation reset, bag restarted, camera clock stepped?): dropped the messages queued from "
                      "before it", per_key=True)

    def _on_synchronized(self, left, left_info, right, right_info) -> None:
        now = time.monotonic()
        self._synchronized.tick(now)
        newest, switched = self._info_mode.full_set(left, now)
        if switched:
            self._log_info_mode(newest, left)
        self._hand_over((left, left_info, right, right_info))  # in either mode (a pair is processed once)

    def _on_image_pair(self, left, right) -> None:
        """An image pair; used with the newest CameraInfos while most pairs get no infos of their stamps."""
        newest, switched = self._info_mode.image_pair(left, time.monotonic())
        if switched:
            self._log_info_mode(newest, left)
        if not newest:
            return
        left_info, right_info = self._inputs[LEFT_INFO].latest, self._inputs[RIGHT_INFO].latest
        if left_info is None or right_info is None:
            return  # never had one: the diagnostics say which is missing
        self._newest_info_pairs += 1
        self._newest_info_used.tick(time.monotonic())
        self._hand_over((left, left_info, right, right_info))

    def _log_info_mode(self, newest: bool, left) -> None:
        if not newest:
            self.get_logger().info("CameraInfos come with the images' stamps again: matching them by stamp")
            return
        infos = [self._inputs[i].latest for i in (LEFT_INFO, RIGHT_INFO)]
        stamps = ", ".join("none received yet" if info is None else stamp_text(stamp_ns(info)) for info in infos)
        self.get_logger().info(
            f"CameraInfos do not come with the images' stamps (latched or static calibration, stamped differently, "
            f"or slower than the images): using the newest CameraInfo of each side (stamps {stamps}; image "
            f"{stamp_text(stamp_ns(left))})")

    def _hand_over(self, pair: tuple) -> None:
        """To the worker, once per left image; replaces (drops) an older pair the worker has not taken yet."""
        left = pair[0]
        stamp = stamp_ns(left)
        with self._handoff_lock:
            if any(seen is left for seen in self._recent_lefts):  # by identity: stamps may repeat
                return
            self._recent_lefts.append(left)
            repeated, self._last_left_stamp = stamp == self._last_left_stamp, stamp
        if repeated:
            self._problem("stamps", WARN, f"consecutive left images carry the same stamp "
                                          f"({stamp_text(stamp)} s): each pair is processed, but outputs "
                                          "cannot be told apart by time (is the camera driver stamping images?)")
        self._slot.put(pair, stamp)

    # ---- parameters --------------------------------------------------------------------------------
    @staticmethod
    def _parameters_as_declared(parameters: list[Parameter]) -> list[Parameter]:
        """`ros2 param set ... max_depth 10` sends an int: taken as 10.0, as at start-up."""
        return [_as_declared(p) for p in parameters]

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        updates = {}
        for parameter in parameters:
            reason = check_value(parameter.name, parameter.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
            if parameter.name in FRAME_SETTINGS:
                updates[parameter.name] = parameter.value
        if updates:
            settings = dataclasses.replace(self._frame_settings, **updates)
            reason = check_frame_settings(settings)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
            self._frame_settings = settings
        return SetParametersResult(successful=True)

    # ---- problems ----------------------------------------------------------------------------------
    def _problem(self, key: str, level: int, message: str, per_key: bool = False) -> None:
        """Into the diagnostics (held PROBLEM_HOLD_S) and the log, throttled per key and kind of message: the
        message with its numbers masked, so sizes or values that change every frame do not make it new (per key
        alone when even its words change)."""
        now = time.monotonic()
        self._problems.report(key, level, message, now)
        if self._log_throttle.ready(key if per_key else f"{key}|{NUMBER.sub('#', message)}", now):
            # two call sites: rclpy refuses one call site logging at two severities
            if level >= ERROR:
                self.get_logger().error(f"{key}: {message}")
            else:
                self.get_logger().warning(f"{key}: {message}")

    def _guarded(self, callback, *args) -> None:
        """Run a timer/worker step; an unexpected exception is reported, never propagated into the executor."""
        try:
            callback(*args)
        except Exception as exc:
            if not self.context.ok():  # shutting down (Ctrl-C): publishers are gone, nothing to report
                return
            try:
                self._problem(getattr(callback, "__name__", "callback").strip("_"), ERROR,
                              f"{type(exc).__name__}: {exc}")
            except Exception:  # reporting itself failed: the last resort must not raise
                pass

    # ---- the worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        if self._warming_up:
            self._warm_up()
        while not self._stop.is_set():
            item = self._slot.take(WORKER_POLL_S)
            if item is not None:
                self._guarded(self._process, *item)  # never let one frame end the worker

    def _warm_up(self) -> None:
        shared = self._shared
        try:
            with shared.lock:
                if not shared.warmed:
                    h, w = shared.pipeline.input_size
                    blank = np.zeros((h, w, 3), np.uint8)
                    shared.pipeline.process(blank, blank, "rgb8", "rgb8")
                    shared.warmed = True
        except Exception as exc:
            self._problem("warm-up", ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            self._warming_up = False

    def _process(self, left_msg, left_info, right_msg, right_info) -> None:
        started = time.perf_counter()
        try:
            left, left_encoding = ros_convert.image_to_array(left_msg, "left image")
            right, right_encoding = ros_convert.image_to_array(right_msg, "right image")
            if left.shape[:2] != right.shape[:2]:
                raise StereoInputError(f"left image is {left.shape[1]}x{left.shape[0]} but right image is "
                                       f"{right.shape[1]}x{right.shape[0]}: a rectified pair has one size")
        except StereoInputError as exc:
            self._input_errors += 1
            self._problem("input", ERROR, f"{exc}; pair skipped")
            return
        height, width = left.shape[:2]
        self._note_size(width, height, left_encoding, right_encoding)
        settings = self._frame_settings
        try:
            camera = ros_convert.stereo_camera(left_info, right_info, width, height)
        except StereoInputError as exc:
            camera = None
            self._problem("camera_info", WARN, f"{exc}; publishing disparity only, no depth or points")
        else:
            note = ros_convert.anisotropic_scale(left_info, width, height)
            if note:
                self._problem("camera_info", WARN, note)
        want_depth = (camera is not None and settings.publish_depth
                      and self._pub_depth.get_subscription_count() > 0)
        want_points = (camera is not None and settings.publish_points
                       and self._pub_points.get_subscription_count() > 0)
        limits = DepthLimits(0.0, settings.min_depth, settings.max_depth_limit)
        stages = {"convert_in": (time.perf_counter() - started) * 1e3}

        waited = time.perf_counter()
        with self._shared.lock:
            stages["wait_pipeline"] = (time.perf_counter() - waited) * 1e3
            pipe = self._shared.pipeline
            try:
                output = pipe.process(left, right, left_encoding, right_encoding, camera=camera, limits=limits,
                                      want_depth=want_depth, want_points=want_points,
                                      points_stride=settings.points_stride)
            except StereoInputError as exc:
                self._input_errors += 1
                self._problem("input", ERROR, f"{exc}; pair skipped")
                return
            stages.update(pipe.timings)
            # the outputs stay valid after the lock is released: the pipelines never reuse an array that is held
            max_disp, engine_width = pipe.geometry.max_disp, pipe.input_size[1]
        self._publish(left_msg, left_info, right_info, output, camera, settings, max_disp, engine_width,
                      stages, started)

    def _publish(self, left_msg, left_info, right_info, output, camera, settings, max_disp, engine_width,
                 stages, started) -> None:
        header = left_msg.header
        height, width = output.disparity.shape
        t = time.perf_counter()
        focal, baseline = ros_convert.disparity_parameters(right_info, width, height)
        value_range = ros_convert.disparity_range(max_disp, engine_width, width,
                                                  camera.cx_offset if camera is not None else 0.0)
        self._pub_disparity.publish(ros_convert.disparity_message(output.disparity, header, focal, baseline,
                                                                  value_range, DISPARITY_DELTA_D))
        stages["publish_disparity"] = (time.perf_counter() - t) * 1e3
        if self._pub_color.get_subscription_count() > 0:
            t = time.perf_counter()
            color = ros_convert.color_disparity(output.disparity, settings.color_range)
            self._pub_color.publish(ros_convert.image_message(color, ros_convert.COLOR_ENCODING, header))
            stages["publish_color"] = (time.perf_counter() - t) * 1e3
        if output.depth is not None or (camera is not None and settings.publish_depth
                                         and self._pub_depth_info.get_subscription_count() > 0):
            t = time.perf_counter()
            if output.depth is not None:
                self._pub_depth.publish(ros_convert.image_message(output.depth, ros_convert.FLOAT32_ENCODING, header))
            self._pub_depth_info.publish(ros_convert.scaled_camera_info(left_info, header, width, height))
            stages["publish_depth"] = (time.perf_counter() - t) * 1e3
        if output.points is not None and settings.publish_points:
            t = time.perf_counter()
            self._pub_points.publish(ros_convert.points_message(output.points, header))
            stages["publish_points"] = (time.perf_counter() - t) * 1e3
        stages["node_total"] = (time.perf_counter() - started) * 1e3

        now = time.monotonic()
        self._frames += 1
        self._published.tick(now)
        latency_ms = self._latency_ms(left_msg)
        for name, value in stages.items():
            self._stage_stats.setdefault(name, RollingStats()).add(value)
        if latency_ms is not None:
            self._latency.add(latency_ms)
        if not header.frame_id:
            self._problem("frame_id", WARN, "the left image has an empty header.frame_id: outputs cannot be placed "
                                            "in tf (RViz); set the camera driver's frame id")
        self._publish_timing(header, stages, latency_ms)

    def _latency_ms(self, left_msg) -> float | None:
        now = self.get_clock().now().nanoseconds
        if now == 0:  # use_sim_time and no /clock yet
            return None
        latency_s = (now - stamp_ns(left_msg)) / NANOSECONDS
        if latency_s > CLOCK_MISMATCH_S or latency_s < -FUTURE_STAMP_S:
            where = "behind" if latency_s > 0 else "ahead of"
            self._problem("clock", WARN, f"image stamps are {abs(latency_s):.1f} s {where} this node's clock (camera "
                                         "clock not synchronised, or use_sim_time with a bag?): latency not measured",
                          per_key=True)
            return None
        return latency_s * 1e3

    def _note_size(self, width: int, height: int, left_encoding: str, right_encoding: str) -> None:
        size = (width, height, left_encoding, right_encoding)
        if size != self._last_size:
            engine_h, engine_w = self._shared.pipeline.input_size
            same = (height, width) == (engine_h, engine_w)
            resized = "" if same else f", resized to the engine's {engine_w}x{engine_h}"
            self.get_logger().info(f"processing {width}x{height} {left_encoding}/{right_encoding} pairs{resized}")
            self._last_size = size

    def _publish_timing(self, header, stages: dict[str, float], latency_ms: float | None) -> None:
        if StageTiming is not None:
            msg = typed_timing(header, self._frames, stages, latency_ms, self._slot.dropped)
        else:
            msg = status_timing(f"{self.get_fully_qualified_name()}: timing", header, self._frames, stages,
                                latency_ms, self._slot.dropped)
        self._pub_timing.publish(msg)

    # ---- diagnostics -------------------------------------------------------------------------------
    def _check_inputs(self, now: float) -> None:
        """Problems visible only over time: publishers but no data, data but no synchronized set."""
        for index, state in enumerate(self._inputs):
            last = state.arrivals.last()
            quiet_s = now - max(last if last is not None else -np.inf, state.subscribed_at, state.publishers_since,
                                self._started_at)
            if quiet_s < NO_INPUT_WARN_S:
                continue
            topic = self._resolved(index)
            latched = (state.latest is not None and state.offered_durability
                       and ros_qos.choose_durability(state.offered_durability) == DurabilityPolicy.TRANSIENT_LOCAL)
            if index in INFO_INPUTS and latched:
                continue  # a latched CameraInfo is published once: silence is expected
            if state.publishers > 0:
                self._problem(f"no input on {topic}", WARN, ros_qos.no_input_advice(
                    topic, state.publishers, quiet_s, state.reliability, state.offered), per_key=True)
            else:
                need = "" if index in IMAGE_INPUTS else " (every pair needs both CameraInfos, stamped like the images)"
                self._problem(f"no input on {topic}", WARN, f"no publisher on {topic}{need}: remap "
                              f"{INPUT_TOPICS[index]} to the camera's topic (docs/ROS.md)")
        recent = [state.arrivals.last() is not None and now - state.arrivals.last() < NO_INPUT_WARN_S
                  for state in self._inputs]
        last_set = self._synchronized.last()
        since_set = now - (last_set if last_set is not None else self._started_at)
        newest_used = self._newest_info_used.last()
        using_newest = newest_used is not None and now - newest_used < NO_INPUT_WARN_S
        if all(recent) and since_set > NO_INPUT_WARN_S and not using_newest:
            stamps = [state.last_stamp for state in self._inputs]
            spread = stamps_spread_s(stamps)
            detail = ", ".join(f"{topic} {stamp / NANOSECONDS:.6f}" for topic, stamp in zip(INPUT_TOPICS, stamps))
            rule = (f"within sync_slop_s = {self._param('sync_slop_s')} s" if self._approximate
                    else "with identical stamps (approximate_sync is off)")
            self._problem("sync", WARN, f"all inputs arrive but no set has synchronized for {since_set:.0f} s: "
                                        f"newest stamps {detail} (spread {spread:.6f} s); images and camera infos "
                                        f"must be stamped {rule}", per_key=True)

    def _info_matching(self) -> str:
        if not self._info_mode.newest:
            return "matched by stamp"
        return f"newest of each side, their stamps do not match the images' ({self._newest_info_pairs} pairs)"

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        self._check_inputs(now)
        problems = self._problems.active(now)
        frames = self._frames
        healthy = "warming up" if self._warming_up else (f"{self._published.rate(now):.1f} Hz" if frames
                                                           else "waiting for synchronized stereo pairs")
        level, message = summarize(problems, healthy)
        values = [(f"problem: {key}", f"{LEVEL_NAMES[p.level]} (x{p.count}): {p.message}")
                  for key, p in sorted(problems.items())]
        values += [("pipeline", self._pipeline_name),
                  ("engine size", "{1}x{0}".format(*self._shared.pipeline.input_size)),
                  ("nodes sharing the pipeline", str(self._shared.users)),
                  ("sync", self._sync_description()),
                  ("camera infos", self._info_matching())]
        for index, state in enumerate(self._inputs):
            offered = "/".join(sorted({ros_qos.policy_name(p) for p in state.offered})) or "-"
            values.append((f"input {self._resolved(index)}",
                           f"{state.arrivals.rate(now):.2f} Hz, subscribed {ros_qos.policy_name(state.reliability)}, "
                           f"{state.publishers} publisher(s) offering {offered}"))
        values += [("synchronized pairs", f"{self._synchronized.rate(now):.2f} Hz ({self._synchronized.count} total)"),
                   ("output disparity", f"{self._published.rate(now):.2f} Hz ({frames} frames)"),
                   ("dropped pairs", str(self._slot.dropped)),
                   ("input errors", str(self._input_errors)),
                   ("latency stamp to publish", format_ms(self._latency))]
        values += [(f"stage {name}", format_ms(stats)) for name, stats in list(self._stage_stats.items())]
        memory = self._shared.pipeline.memory_bytes()
        values += [(f"memory {kind} MiB", f"{size / 2**20:.1f}") for kind, size in memory.items()]
        settings = self._frame_settings
        values += [("depth", f"{'on' if settings.publish_depth else 'off'}, "
                             f"{self._pub_depth.get_subscription_count()} subscriber(s)"),
                   ("points", f"{'on' if settings.publish_points else 'off'}, stride {settings.points_stride}, "
                              f"{self._pub_points.get_subscription_count()} subscriber(s)"),
                   ("timing message", f"{self._pub_timing.topic_name} ({timing_message_type().__name__})")]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status_message(f"{self.get_fully_qualified_name()}: stereo", self._pipeline_name,
                                       level, message, values)]
        self._pub_diagnostics.publish(array)

    # ---- teardown ----------------------------------------------------------------------------------
    def _stop_worker(self) -> None:
        """Stop the worker after its current frame (idempotent; also at exit)."""
        self._stop.set()
        self._slot.close()
        if self._worker is not threading.current_thread():
            self._worker.join(timeout=30.0)

    def destroy_node(self) -> None:
        if hasattr(self, "_stop") and not getattr(self, "_released", False):
            self._released = True
            self._stop_worker()
            atexit.unregister(self._stop_worker)
            shared_pipelines.release(self._shared)
        super().destroy_node()


def typed_timing(header, frame: int, stages: dict[str, float], latency_ms: float | None, dropped: int):
    """flashstereo_interfaces/StageTiming (msg/StageTiming.msg) of one frame."""
    msg = StageTiming()
    msg.header = header
    msg.frame = frame
    msg.stages = list(stages)
    msg.milliseconds = [float(v) for v in stages.values()]
    msg.total_ms = float(stages.get("node_total", 0.0))
    msg.latency_ms = float(latency_ms) if latency_ms is not None else float("nan")
    msg.dropped_pairs = dropped
    return msg


def status_timing(name: str, header, frame: int, stages: dict[str, float], latency_ms: float | None,
                  dropped: int) -> DiagnosticStatus:
    """The same content as diagnostic_msgs/DiagnosticStatus key/values, when StageTiming is not built."""
    values = [("stamp", f"{header.stamp.sec}.{header.stamp.nanosec:09d}"), ("frame", str(frame)),
              ("latency_ms", "nan" if latency_ms is None else f"{latency_ms:.3f}"), ("dropped_pairs", str(dropped))]
    values += [(f"{stage}_ms", f"{value:.3f}") for stage, value in stages.items()]
    return DiagnosticStatus(level=DiagnosticStatus.OK, name=name, message=f"frame {frame}",
                            hardware_id=header.frame_id, values=[KeyValue(key=k, value=v) for k, v in values])


def main(argv: list[str] | None = None) -> int:
    """Console entry (flashstereo-node, stereo_node): one node, or one per --namespaces entry, one executor."""
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=os.path.basename(argv[0]) if argv else "stereo_node",
        description="Stereo disparity, depth and points from rectified image pairs. "
        "ROS arguments go after --ros-args (e.g. -p feat_engine:=... -r left/image_rect:=/cam/left/image).")
    parser.add_argument("--name", default=DEFAULT_NODE_NAME, help="node name (default: %(default)s)")
    parser.add_argument("--namespaces", nargs="+", metavar="NS",
                        help="run one node per camera namespace in this process, sharing one engine pair")
    try:
        options = parser.parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    except RuntimeError as exc:  # rcl's own argument parser: a missing or malformed --params-file, a bad remap
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if options.namespaces and any("__ns:=" in arg for arg in argv):  # also node-specific: name:__ns:=...
        parser.error("--namespaces names each node's namespace: drop the -r __ns:=... remap (it would put every "
                     "node in the same namespace under the same name)")
    rclpy.init(args=argv)
    nodes: list[FlashStereoNode] = []
    try:
        for namespace in options.namespaces or [None]:
            nodes.append(FlashStereoNode(options.name, namespace=namespace))
        executor = SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (FlashStereoError, FileNotFoundError, ValueError, rclpy.exceptions.ParameterException,
            rclpy.exceptions.NameValidationException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
