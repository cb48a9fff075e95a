"""QoS for camera images: match what the publishers offer, and say what to do when images do not arrive.

A reliable reader matches only reliable writers; a best-effort reader matches both, but on default Fast
DDS it loses images larger than ~500 kB (every 640x480 bgr8 image, measured), because one lost UDP
fragment loses the whole sample. So `auto` subscribes reliable whenever every publisher offers reliable
(as rosbag2 and RViz adapt), best-effort otherwise, and the node re-checks as publishers come and go.
"""
from __future__ import annotations

from typing import Iterable

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY_SETTINGS = ("auto", "reliable", "best_effort")
OUTPUT_RELIABILITY_SETTINGS = ("reliable", "best_effort")
LARGE_DATA_FIX = "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA"


def policy_name(policy: ReliabilityPolicy | None) -> str:
    if policy is None:
        return "none"
    return {ReliabilityPolicy.RELIABLE: "reliable", ReliabilityPolicy.BEST_EFFORT: "best_effort"}.get(
        policy, policy.name.lower())


def choose_reliability(setting: str, offered: Iterable[ReliabilityPolicy]) -> ReliabilityPolicy:
    """The reliability to subscribe with, given the parameter and the publishers' offered reliabilities.

    auto: reliable when every publisher offers reliable, or when there is no publisher yet (a reliable
    reader gets large images intact; a best-effort publisher appearing later makes the node re-subscribe).
    """
    if setting == "reliable":
        return ReliabilityPolicy.RELIABLE
    if setting == "best_effort":
        return ReliabilityPolicy.BEST_EFFORT
    if setting != "auto":
        raise ValueError(f"qos_reliability must be one of {RELIABILITY_SETTINGS}, got {setting!r}")
    offered = list(offered)
    if all(policy == ReliabilityPolicy.RELIABLE for policy in offered):
        return ReliabilityPolicy.RELIABLE
    return ReliabilityPolicy.BEST_EFFORT


def choose_durability(offered: Iterable[DurabilityPolicy]) -> DurabilityPolicy:
    """Transient-local when every publisher offers it (a latched CameraInfo published once is then received
    on subscription); volatile otherwise (a transient-local reader would not match a volatile writer)."""
    offered = list(offered)
    if offered and all(policy == DurabilityPolicy.TRANSIENT_LOCAL for policy in offered):
        return DurabilityPolicy.TRANSIENT_LOCAL
    return DurabilityPolicy.VOLATILE


def input_qos(reliability: ReliabilityPolicy, depth: int,
              durability: DurabilityPolicy = DurabilityPolicy.VOLATILE) -> QoSProfile:
    """Keep-last; volatile matches volatile and transient-local publishers alike."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability, durability=durability)


def output_qos(setting: str, depth: int) -> QoSProfile:
    if setting not in OUTPUT_RELIABILITY_SETTINGS:
        raise ValueError(f"output_qos_reliability must be one of {OUTPUT_RELIABILITY_SETTINGS}, got {setting!r}")
    reliability = ReliabilityPolicy.RELIABLE if setting == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def no_input_advice(topic: str, publishers: int, seconds: float, subscribed: ReliabilityPolicy | None,
                    offered: Iterable[ReliabilityPolicy]) -> str:
    """What to tell the user when publishers exist on an image topic but nothing has arrived."""
    offered_names = sorted({policy_name(p) for p in offered}) or ["unknown"]
    head = (f"{publishers} publisher(s) on {topic} (offering {'/'.join(offered_names)}) but nothing received "
            f"for {seconds:.0f} s (this node subscribes {policy_name(subscribed)})")
    if subscribed == ReliabilityPolicy.RELIABLE and any(p != ReliabilityPolicy.RELIABLE for p in offered):
        return (f"{head}. A reliable subscription cannot match a best-effort publisher: set qos_reliability to "
                f"auto (default) or best_effort, or make the camera driver publish reliable.")
    if subscribed == ReliabilityPolicy.BEST_EFFORT:
        return (f"{head}. Best-effort readers lose large images on default Fast DDS: set the camera driver's "
                f"image QoS to reliable, or set {LARGE_DATA_FIX} in the environment of every process (camera "
                f"driver, this node, RViz...). Or the publisher is not sending.")
    return (f"{head}. Is the publisher sending? If it uses Fast DDS with best-effort QoS, set the camera "
            f"driver's image QoS to reliable, or {LARGE_DATA_FIX} in every process.")
