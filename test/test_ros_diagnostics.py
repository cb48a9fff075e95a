"""The plain logic behind the node's diagnostics, logs and QoS choice (explicit clocks, no graph)."""
import pytest

pytest.importorskip("rclpy")

from rclpy.qos import ReliabilityPolicy  # noqa: E402

from flashstereo_ros import ros_qos  # noqa: E402
from flashstereo_ros.diagnostics import (ERROR, OK, WARN, ProblemBoard, RateMeter, RollingStats, Throttle,  # noqa: E402
                                         status_level, status_message, summarize)

RELIABLE, BEST_EFFORT = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT


def test_rolling_percentiles_cover_the_window_only():
    stats = RollingStats(window=100)
    assert stats.percentiles(50) is None
    for value in range(1000):
        stats.add(value)
    p50, p99 = stats.percentiles(50, 99)
    assert p50 == pytest.approx(949.5) and p99 == pytest.approx(998.01)


def test_rate_meter_counts_events_in_its_window():
    meter = RateMeter(window_s=5.0)
    for k in range(51):
        meter.tick(100.0 + k * 0.1)  # 10 Hz for 5 s
    assert meter.rate(105.0) == pytest.approx(10.0)
    assert meter.rate(120.0) == 0.0 and meter.count == 51


def test_rate_meter_remembers_the_last_event_past_its_window():
    meter = RateMeter(window_s=5.0)
    assert meter.last() is None
    meter.tick(100.0)
    assert meter.rate(160.0) == 0.0 and meter.last() == 100.0  # quiet for 60 s, not since the start


def test_throttle_is_per_key():
    throttle = Throttle(5.0)
    assert throttle.ready("a", 0.0) and not throttle.ready("a", 4.9) and throttle.ready("a", 5.0)
    assert throttle.ready("b", 4.9)


def test_problems_are_held_then_expire_and_the_worst_leads():
    board = ProblemBoard(hold_s=5.0)
    board.report("camera_info", WARN, "baseline must be positive", 10.0)
    board.report("input", ERROR, "mono16 is not supported", 11.0)
    level, message = summarize(board.active(12.0), "30 Hz")
    assert level == ERROR and message.startswith("input: mono16") and "camera_info: baseline" in message
    assert summarize(board.active(16.5), "30 Hz") == (OK, "30 Hz")
    assert board.totals == {"camera_info": 1, "input": 1}


def test_diagnostic_status_message():
    status = status_message("/cam/flashstereo: stereo", "cpu", WARN, "sync: ...", [("dropped pairs", 3)])
    assert status_level(status) == WARN and status.values[0].key == "dropped pairs" and status.values[0].value == "3"


@pytest.mark.parametrize("setting,offered,expected", [
    ("auto", [], RELIABLE),  # nobody yet: reliable (large images intact); re-checked when one appears
    ("auto", [RELIABLE, RELIABLE], RELIABLE),
    ("auto", [RELIABLE, BEST_EFFORT], BEST_EFFORT),  # a reliable reader would not match the best-effort one
    ("auto", [BEST_EFFORT], BEST_EFFORT),
    ("reliable", [BEST_EFFORT], RELIABLE),
    ("best_effort", [RELIABLE], BEST_EFFORT),
])
def test_reliability_follows_the_publishers(setting, offered, expected):
    assert ros_qos.choose_reliability(setting, offered) == expected


def test_unknown_reliability_setting_is_refused():
    with pytest.raises(ValueError, match="qos_reliability"):
        ros_qos.choose_reliability("sometimes", [])


def test_no_input_advice_names_both_fixes_for_best_effort():
    text = ros_qos.no_input_advice("/cam/left/image_rect", 1, 4.0, BEST_EFFORT, [BEST_EFFORT])
    assert "/cam/left/image_rect" in text and "reliable" in text and "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA" in text
    assert "every process" in text


def test_no_input_advice_for_a_forced_reliable_subscription_to_a_best_effort_camera():
    text = ros_qos.no_input_advice("/cam/left/image_rect", 1, 4.0, RELIABLE, [BEST_EFFORT])
    assert "cannot match" in text and "qos_reliability" in text


def test_camera_infos_are_received_latched_only_when_every_publisher_latches():
    from rclpy.qos import DurabilityPolicy

    latched, volatile = DurabilityPolicy.TRANSIENT_LOCAL, DurabilityPolicy.VOLATILE
    assert ros_qos.choose_durability([latched]) == latched
    assert ros_qos.choose_durability([latched, volatile]) == volatile  # a latched reader would not match it
    assert ros_qos.choose_durability([]) == volatile
