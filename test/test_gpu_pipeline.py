"""GPU acceptance: the resident pipeline equals the stock (host-bouncing) pipeline bit for bit, moves only
the two camera images in and the disparity out, is as accurate as the CPU pipeline, and replays as a graph.

Runs the torch runner with the 480x640 stand-in (.pt2 from $FLASHSTEREO_TEST_MODELS, see conftest.py).
"""
import numpy as np
import pytest

from flashstereo_ros import contract, depth, synthetic
from flashstereo_ros.depth import DepthLimits, StereoCamera

pytestmark = pytest.mark.gpu

SIZE = (480, 640)
MAE_BOUND_PX, BAD_PX, GOOD_FRACTION = 1.0, 3.0, 0.90
COMPARED = (contract.LEFT, contract.RIGHT, *contract.FEATURE_OUTPUTS, "normalized_left", "normalized_right",
            contract.GWC_VOLUME, "disparity_engine")


def _pairs():
    rng = np.random.default_rng(2026)
    pairs = [(f"random{i}", rng.integers(0, 256, SIZE + (3,), dtype=np.uint8),
              rng.integers(0, 256, SIZE + (3,), dtype=np.uint8)) for i in range(5)]
    for i, kind in enumerate(("planes", "slanted", "occlusion")):
        scene = synthetic.make_scene(kind, *SIZE, seed=10 + i)
        pairs.append((kind, scene.left, scene.right))
    return pairs


PAIRS = _pairs()


@pytest.fixture(scope="module")
def models(standin_model_dir):
    return standin_model_dir / "feature_runner.pt2", standin_model_dir / "post_runner.pt2"


@pytest.fixture(scope="module")
def resident(models):
    from flashstereo_ros.pipeline import FlashStereoPipeline

    pipe = FlashStereoPipeline(*models)
    yield pipe
    pipe.close()


@pytest.fixture(scope="module")
def stock(models):
    from flashstereo_ros.stock import StockPipeline

    pipe = StockPipeline(*models)
    yield pipe
    pipe.close()


def _bits(a):
    return a.view(np.uint8)


@pytest.mark.parametrize("index", range(len(PAIRS)), ids=[p[0] for p in PAIRS])
def test_resident_equals_stock_bit_for_bit(resident, stock, index):
    _, left, right = PAIRS[index]
    resident.poison()  # every buffer NaN: the frame must overwrite all of it
    ours = resident.infer(left, right)
    theirs = stock.infer(left, right)
    a, b = resident.intermediates(), stock.intermediates()
    for key in COMPARED:
        assert a[key].dtype == b[key].dtype and np.array_equal(_bits(a[key]), _bits(b[key])), key
        assert np.isfinite(a[key]).all(), f"{key} not fully written"
    assert ours.dtype == np.float32 and ours.shape == SIZE
    assert np.array_equal(ours, theirs) and np.isfinite(ours).all()


def test_traffic_resident_is_two_images_in_one_disparity_out(resident, stock):
    _, left, right = PAIRS[0]
    resident.infer(left, right)
    h, w = SIZE
    assert resident.traffic == {"h2d": 2 * h * w * 3, "d2h": h * w * 4, "h2d_count": 2, "d2h_count": 1}
    stock.infer(left, right)
    geo = stock.geometry
    normalized = 2 * int(np.prod(geo.feature_outputs[contract.FEATURES_LEFT_04].shape)) * 2  # two float16 maps
    expected_h2d = (sum(s.nbytes for s in geo.image_inputs.values()) + normalized
                    + sum(s.nbytes for s in geo.post_inputs.values()))
    expected_d2h = (sum(s.nbytes for s in geo.feature_outputs.values()) + geo.post_inputs[contract.GWC_VOLUME].nbytes
                    + geo.disparity.nbytes)
    print(f"stock traffic: {stock.traffic} = {(stock.traffic['h2d'] + stock.traffic['d2h']) / 2**20:.1f} MiB; "
          f"resident {(resident.traffic['h2d'] + resident.traffic['d2h']) / 2**20:.2f} MiB")
    assert stock.traffic["h2d"] == expected_h2d and stock.traffic["d2h"] == expected_d2h


@pytest.mark.parametrize("kind,seed", [("planes", 1), ("slanted", 2), ("occlusion", 3), ("mixed", 4)])
def test_accuracy_on_synthetic_scene_matches_cpu_bound(resident, kind, seed):
    scene = synthetic.make_scene(kind, *SIZE, seed=seed)
    disparity = resident.infer(scene.left, scene.right)
    err = np.abs(disparity - scene.disparity)[scene.valid]
    mae, good = float(err.mean()), float((err <= BAD_PX).mean())
    print(f"{kind}: MAE {mae:.3f} px, within {BAD_PX:.0f} px {good * 100:.2f}%")
    assert mae < MAE_BOUND_PX and good > GOOD_FRACTION


def test_odd_camera_size_is_resized_both_ways(resident, stock):
    scene = synthetic.make_scene("planes", 375, 450, seed=7)
    ours = resident.infer(scene.left, scene.right)
    assert ours.shape == (375, 450) and np.isfinite(ours).all()
    assert resident.traffic["h2d"] == 2 * 375 * 450 * 3 and resident.traffic["d2h"] == 375 * 450 * 4
    err = np.abs(ours - scene.disparity)[scene.valid]
    print(f"375x450: MAE {err.mean():.3f} px, within 3 px {(err <= BAD_PX).mean() * 100:.2f}%")
    assert err.mean() < MAE_BOUND_PX and (err <= BAD_PX).mean() > GOOD_FRACTION
    theirs = stock.infer(scene.left, scene.right)  # cv2 resizes there: equal up to rounding in the resizes
    agree = float((np.abs(ours - theirs) < 0.5).mean())
    print(f"375x450 resident vs stock: {agree * 100:.2f}% within 0.5 px, max {np.abs(ours - theirs).max():.3f}")
    assert agree > 0.95
    back = resident.infer(*PAIRS[5][1:])
    assert back.shape == SIZE


def test_depth_and_points_on_device_equal_depth_py(resident):
    scene = synthetic.make_scene("mixed", *SIZE, seed=5)
    h, w = SIZE
    p_left = [512.0, 0, 321.5, 0, 0, 511.0, 240.25, 0, 0, 0, 1, 0]
    p_right = [512.0, 0, 318.0, -512.0 * 0.12, 0, 511.0, 240.25, 0, 0, 0, 1, 0]
    camera = StereoCamera.from_projections(p_left, p_right, w, h)
    limits = DepthLimits(min_disparity=2.0, min_depth=0.4, max_depth=25.0)
    raw = resident.infer(scene.left, scene.right)
    for stride in (1, 4):
        out = resident.process(scene.left, scene.right, camera=camera, limits=limits, want_depth=True,
                               want_points=True, points_stride=stride)
        assert np.array_equal(out.disparity, raw - np.float32(camera.cx_offset))
        ref_depth = depth.depth_image(out.disparity, camera, limits)
        assert np.array_equal(out.depth, ref_depth, equal_nan=True)
        ref_points = depth.point_cloud(ref_depth, depth.rgb_view(scene.left, "rgb8"), camera, stride)
        assert np.array_equal(out.points, ref_points, equal_nan=True)
        assert resident.traffic["d2h_count"] == 3


def test_cuda_graph_mode_gives_identical_output(models, resident):
    from flashstereo_ros.pipeline import FlashStereoPipeline

    graphed = FlashStereoPipeline(*models, use_cuda_graph=True)
    try:
        assert graphed.graph_mode == "torch"
        for _, left, right in PAIRS[:2] + PAIRS[5:7]:
            graphed.poison()
            assert np.array_equal(graphed.infer(left, right), resident.infer(left, right))
        print("graph-mode timings (ms):", {k: round(v, 3) for k, v in graphed.timings.items()})
        assert graphed.traffic == resident.traffic and graphed.timings["total"] > 0
        odd = synthetic.make_scene("slanted", 375, 450, seed=3)
        for _ in range(2):  # warm-up + capture for the new size, then a replay
            assert np.array_equal(graphed.infer(odd.left, odd.right), resident.infer(odd.left, odd.right))
        assert np.array_equal(graphed.infer(*PAIRS[1][1:]), resident.infer(*PAIRS[1][1:]))
    finally:
        graphed.close()


def test_timings_and_memory(resident):
    resident.infer(*PAIRS[6][1:])
    stages = {"h2d", "preprocess", "feature", "norm", "gwc", "post", "postprocess", "depth_points", "d2h", "total"}
    assert set(resident.timings) == stages
    assert resident.timings["feature"] > 0 and resident.timings["post"] > 0
    assert resident.timings["total"] >= resident.timings["feature"] + resident.timings["post"] - 0.01
    memory = resident.memory_bytes()
    h, w = SIZE
    assert memory["host"] >= 2 * h * w * 3 + h * w * 4 and memory["device"] > 50 * 2**20


@pytest.mark.parametrize("graph", [False, True])
def test_frames_in_flight_on_two_streams_equal_one_at_a_time(models, resident, graph):
    """PipelinedStereo: 2 pipelines, 4 frames in flight, the GPU running them concurrently; every output
    equals the one-frame-at-a-time result bit for bit, in order."""
    from flashstereo_ros import PipelinedStereo

    pairs = [(left, right) for _, left, right in PAIRS] * 2
    expected = [resident.infer(left, right).copy() for left, right in pairs]
    with PipelinedStereo.load(*models, streams=2, use_cuda_graph=graph) as group:
        first = group.submit(*pairs[0])
        assert np.array_equal(first.result().disparity, expected[0]) and first.done()
        outputs = [out.disparity.copy() for out in group.map(pairs)]
    assert len(outputs) == len(expected)
    for i, (got, want) in enumerate(zip(outputs, expected)):
        assert np.array_equal(got, want), f"frame {i}"


def test_bench_times_the_frames_copies_alone():
    from flashstereo_ros.tools import bench

    left, right = PAIRS[0][1:]
    copies = bench.transfer_floor(bench.Inputs([(left, right)], [None]), reps=20)
    assert copies["upload_bytes"] == left.nbytes + right.nbytes
    assert copies["download_bytes"] == SIZE[0] * SIZE[1] * 4
    assert copies["upload_ms"] > 0 and copies["download_ms"] > 0
