"""Stereo synchronisation rules (message_filters' semantics) and the newest-only hand-off.

The built-in synchronizer always runs; message_filters' own synchronizer runs the same cases where it is
installed (a ROS 2 install), so the node behaves the same with either.
"""
import threading
import time

import pytest

pytest.importorskip("rclpy")

from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from flashstereo_ros.sync import (NANOSECONDS, CameraInfoMatching, MessageFiltersSynchronizer,  # noqa: E402
                                  NewestSlot, StampSynchronizer, make_synchronizer, message_filters_available,
                                  stamp_text, stamps_spread_s)

BACKENDS = [StampSynchronizer, pytest.param(MessageFiltersSynchronizer, marks=pytest.mark.skipif(
    not message_filters_available(), reason="message_filters is not installed (no ROS 2 install here)"))]
LEFT, LEFT_INFO, RIGHT, RIGHT_INFO = range(4)
SLOP_S = 0.01
MS = NANOSECONDS // 1000


def msg(kind, stamp_ns, tag=""):
    m = kind()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(stamp_ns), NANOSECONDS)
    m.header.frame_id = tag
    return m


class Recorder:
    def __init__(self, backend, queue_size=5, slop_s=SLOP_S):
        self.sets = []
        self.sync = backend(4, queue_size, lambda *msgs: self.sets.append([m.header.frame_id for m in msgs]), slop_s)

    def add(self, index, stamp_ns, tag):
        kind = Image if index in (LEFT, RIGHT) else CameraInfo
        self.sync.add(index, msg(kind, stamp_ns, tag))

    def pair(self, stamp_ns, tag, right_stamp_ns=None, order=(LEFT, LEFT_INFO, RIGHT, RIGHT_INFO)):
        right = stamp_ns if right_stamp_ns is None else right_stamp_ns
        stamps = {LEFT: stamp_ns, LEFT_INFO: stamp_ns, RIGHT: right, RIGHT_INFO: right}
        for index in order:
            self.add(index, stamps[index], f"{tag}{index}")


def tags(tag):
    return [f"{tag}{i}" for i in range(4)]


T0 = 1_700_000_000 * NANOSECONDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_set_within_slop_is_matched(backend):
    rec = Recorder(backend)
    rec.pair(T0, "a", right_stamp_ns=T0 + 4 * MS)
    assert rec.sets == [tags("a")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_set_outside_slop_is_not_matched(backend):
    rec = Recorder(backend)
    rec.pair(T0, "a", right_stamp_ns=T0 + 25 * MS)
    assert rec.sets == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_sync_needs_identical_stamps(backend):
    rec = Recorder(backend, slop_s=None)
    rec.pair(T0, "a", right_stamp_ns=T0 + 1)
    assert rec.sets == []
    rec.pair(T0 + 100 * MS, "b")
    assert rec.sets == [tags("b")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_camera_info_arriving_after_its_image_is_used(backend):
    rec = Recorder(backend)
    rec.pair(T0, "a", order=(LEFT, RIGHT, RIGHT_INFO, LEFT_INFO))
    assert rec.sets == [tags("a")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_order_arrivals_are_matched_to_their_partners(backend):
    rec = Recorder(backend)
    rec.add(LEFT, T0 + 100 * MS, "b0")  # the newer left image arrives first
    rec.add(LEFT, T0, "a0")
    rec.add(LEFT_INFO, T0, "a1")
    rec.add(LEFT_INFO, T0 + 100 * MS, "b1")
    rec.add(RIGHT_INFO, T0 + 100 * MS, "b3")
    rec.add(RIGHT, T0 + 101 * MS, "b2")
    rec.add(RIGHT, T0 + 1 * MS, "a2")
    rec.add(RIGHT_INFO, T0 + 1 * MS, "a3")
    assert sorted(rec.sets) == [tags("a"), tags("b")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_missing_right_image_does_not_wedge_the_synchronizer(backend):
    rec = Recorder(backend, queue_size=3)
    for k in range(10):  # right images lost for a while: left side queues stay bounded
        stamp = T0 + k * 100 * MS
        rec.add(LEFT, stamp, f"l{k}")
        rec.add(LEFT_INFO, stamp, f"li{k}")
        rec.add(RIGHT_INFO, stamp, f"ri{k}")
    assert rec.sets == []
    assert all(n <= 3 for n in rec.sync.pending())
    rec.pair(T0 + 2000 * MS, "good")
    assert rec.sets == [tags("good")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_message_is_used_once(backend):
    rec = Recorder(backend)
    rec.pair(T0, "a")
    rec.add(RIGHT, T0 + 2 * MS, "late_duplicate")  # would match the left image again if it were still queued
    assert rec.sets == [tags("a")]


def test_queue_keeps_the_newest_stamps():
    rec = Recorder(StampSynchronizer, queue_size=2)
    for k in range(4):
        rec.add(LEFT, T0 + k * 100 * MS, f"l{k}")
    assert rec.sync.pending()[LEFT] == 2
    rec.add(LEFT_INFO, T0, "x")
    rec.add(RIGHT, T0, "x")
    rec.add(RIGHT_INFO, T0, "x")
    assert rec.sets == []  # the oldest left image was dropped from the full queue
    rec.add(LEFT_INFO, T0 + 300 * MS, "li3")
    rec.add(RIGHT, T0 + 300 * MS, "r3")
    rec.add(RIGHT_INFO, T0 + 300 * MS, "ri3")
    assert rec.sets == [["l3", "li3", "r3", "ri3"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_discarding_after_a_backward_time_jump_lets_new_pairs_match(backend):
    rec = Recorder(backend, queue_size=3)
    for k in range(5):  # left images whose right partners never came, then the clock jumps back a minute
        rec.add(LEFT, T0 + k * 100 * MS, f"l{k}")
        rec.add(LEFT_INFO, T0 + k * 100 * MS, f"li{k}")
    back = T0 - 60 * NANOSECONDS
    rec.pair(back, "lost")
    assert rec.sets == []  # each new left is the oldest in a full queue: dropped on arrival
    rec.sync.discard_after(back + NANOSECONDS)
    rec.pair(back + 100 * MS, "a")
    assert rec.sets == [tags("a")]


def test_approximate_with_zero_slop_means_exact():
    sets = []
    sync = make_synchronizer(2, 5, lambda *m: sets.append(m), approximate=True, slop_s=0.0, use_message_filters=False)
    assert not sync.approximate
    sync.add(0, msg(Image, T0))
    sync.add(1, msg(Image, T0))
    assert len(sets) == 1


def test_bad_synchronizer_settings_are_refused():
    with pytest.raises(ValueError, match="queue_size"):
        StampSynchronizer(4, 0, print, SLOP_S)
    with pytest.raises(ValueError, match="slop"):
        StampSynchronizer(4, 5, print, -1.0)


def test_stamps_spread():
    assert stamps_spread_s([T0, None, T0 + NANOSECONDS // 2]) == 0.5
    assert stamps_spread_s([T0, None]) is None


def test_newest_slot_keeps_only_the_newest_and_counts_the_rest():
    slot = NewestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.take(0) == 3 and slot.dropped == 2
    assert slot.take(0.01) is None


def test_newest_slot_keeps_the_newest_stamp_when_an_older_pair_arrives_late():
    slot = NewestSlot()
    slot.put("newer", order=T0 + 100 * MS)
    assert slot.put("older", order=T0) is True
    assert slot.take(0) == "newer" and slot.dropped == 1
    slot.put("older", order=T0)  # once the newer one is taken, an older one is not held back
    assert slot.take(0) == "older"


def test_newest_slot_wakes_the_consumer_and_closes():
    slot = NewestSlot()
    got = []
    consumer = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    consumer.start()
    time.sleep(0.05)
    slot.put("pair")
    consumer.join(2.0)
    assert got == ["pair"]
    waiter = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    waiter.start()
    slot.close()
    waiter.join(2.0)
    assert not waiter.is_alive() and got[-1] is None


def run_camera(matching, pairs, matched, info_first=False, start_s=0.0, period_s=1 / 30):
    """Feed `pairs` image pairs at 30 Hz; pair k gets its complete set when matched(k) (the infos before or
    after its images). Returns the per-pair decisions (True: newest infos) and the mode changes."""
    decisions, changes = [], 0
    for k in range(pairs):
        now, left = start_s + k * period_s, object()
        if matched(k) and info_first:
            changes += matching.full_set(left, now)[1]
        newest, changed = matching.image_pair(left, now)
        decisions.append(newest)
        changes += changed
        if matched(k) and not info_first:
            changes += matching.full_set(left, now + 0.01)[1]
    return decisions, changes


def test_infos_with_every_pair_are_matched_by_stamp_even_when_they_lag():
    for info_first in (False, True):
        decisions, changes = run_camera(CameraInfoMatching(), 300, lambda k: True, info_first)
        assert not any(decisions) and changes == 0


def test_a_latched_or_slow_calibration_switches_to_the_newest_infos_once():
    for matched in (lambda k: False, lambda k: k % 15 == 0):  # none, or infos at 2 Hz beside 30 Hz images
        decisions, changes = run_camera(CameraInfoMatching(), 300, matched)
        assert changes == 1 and all(decisions[30:])  # within a second, and for good


def test_a_static_calibration_matching_by_chance_does_not_flip_the_mode():
    matching = CameraInfoMatching()
    run_camera(matching, 60, lambda k: False)
    assert matching.newest
    decisions, changes = run_camera(matching, 300, lambda k: k % 31 == 7, start_s=2.0)  # 1 Hz info stamped now()
    assert changes == 0 and all(decisions)


def test_the_newest_mode_ends_when_infos_come_with_every_pair_again():
    matching = CameraInfoMatching()
    run_camera(matching, 60, lambda k: False)
    decisions, changes = run_camera(matching, 120, lambda k: True, start_s=2.0)
    assert changes == 1 and not any(decisions[-30:])


def test_stamp_text_keeps_every_digit():
    assert stamp_text(1_700_000_000_068_103_919) == "1700000000.068103919"
