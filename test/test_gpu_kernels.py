"""GPU: each kernel against its numpy reference, bit for bit where the design promises it; the CUDA layer.

Outputs are poisoned with NaN before every launch, so a test also proves each element was written.
"""
import numpy as np
import pytest

from flashstereo_ros import cuda, depth, gwc, images, kernels
from flashstereo_ros.depth import DepthLimits, StereoCamera

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def stream():
    cuda.primary_context(0)
    s = cuda.Stream()
    yield s
    s.close()


def upload(array):
    buf = cuda.DeviceBuffer(array.shape, array.dtype)
    buf.upload(np.ascontiguousarray(array))
    return buf


def poisoned(shape, dtype, stream):
    buf = cuda.DeviceBuffer(shape, dtype)
    buf.fill_nan_async(stream)
    return buf


def run(launch, stream, out):
    launch.run(stream)
    return out.download(stream)


def bits_equal(a, b):
    """Same shape, dtype and bit pattern (stricter than array_equal: -0.0 vs +0.0 differ)."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def feature_maps(rng, channels, h, w, dtype):
    """Features with mixed magnitudes, an all-zero group at some pixels (the eps path) and tiny values."""
    scale = 10.0 ** rng.uniform(-3, 2, (1, 1, h, w))
    x = (rng.standard_normal((1, channels, h, w)) * scale).astype(np.float32)
    x[:, :channels // 8, :2, :3] = 0
    x[:, :, -1, -1] *= 1e-20
    return x.astype(dtype)


# ---------------------------------------------------------------------------------------- group norm
@pytest.mark.parametrize("in_dtype", [np.float32, np.float16])
def test_group_norm_kernel_is_bit_identical_to_numpy(stream, in_dtype):
    rng = np.random.default_rng(11)
    groups, channels, h, w = 8, 224, 37, 53
    left, right = (feature_maps(rng, channels, h, w, in_dtype) for _ in range(2))
    kernel = kernels.GroupNormKernel(channels // groups, in_dtype)
    outs = [poisoned(left.shape, np.float16, stream) for _ in range(2)]
    kernel.prepare(upload(left), upload(right), *outs, groups, h * w).run(stream)
    for out, features in zip(outs, (left, right)):
        assert bits_equal(out.download(stream), gwc.normalize_groups(features, groups))


# ---------------------------------------------------------------------------------------- GWC volume
# widths: odd (element-wise tile loads, scalar stores), a multiple of 4 only, a multiple of 8 below D (16-byte
# copies, every right chunk of the first columns outside the image), one 480x640 row (one tile, 16-byte
# copies), three tiles per row; the pipelined kernel also with a few blocks that each loop over
# many items (both shared-memory stages reused) and with other splits of an item's fetch into copy groups
# (one group; uneven channel ranges) and with 8 disparities per thread; the tensor kernel with one, two and
# three k16 steps, D of 1, below 8 and not a multiple of 8, and narrow tiles
GWC_VARIANTS = {"tensor": {"variant": "tensor"}, "tensor, tile 32": {"variant": "tensor", "max_tile": 32},
                "tensor, tile 16": {"variant": "tensor", "max_tile": 16},
                "pipelined": {"variant": "pipelined"}, "pipelined, 3 blocks": {"variant": "pipelined", "max_blocks": 3},
                "pipelined, 1 copy group": {"variant": "pipelined", "fetch_chunks": 1},
                "pipelined, 3 copy groups, 3 blocks": {"variant": "pipelined", "fetch_chunks": 3, "max_blocks": 3},
                "pipelined, 8 copy groups": {"variant": "pipelined", "fetch_chunks": 8},
                "pipelined 8x8": {"variant": "pipelined", "kt": 8}}


def assert_volume(got, left, right, groups, disparities, out_dtype, variant):
    """Bit for bit gwc.gwc_volume, or for the tensor kernel: +0 where x < d, else within the float32 error of
    summing the group's products in another order (then one half ulp after the cast), and rarely off."""
    expect = gwc.gwc_volume(left, right, groups, disparities, out_dtype)
    if variant != "tensor":
        assert bits_equal(got, expect)
        return
    assert got.shape == expect.shape and got.dtype == expect.dtype and np.isfinite(got).all()
    width = got.shape[-1]
    outside = np.arange(width)[None, :] < np.arange(disparities)[:, None]  # (d, x): x < d
    zeros = got.transpose(0, 1, 3, 2, 4)[..., outside]
    assert (zeros == 0).all() and not np.signbit(zeros).any()
    diff = np.abs(got.astype(np.float64) - expect.astype(np.float64))
    # either float32 sum is within C * 2^-24 of the exact one (|partial sums| <= 1: unit group vectors)
    bound = left.shape[1] // groups * 2.0 ** -23
    if out_dtype == np.float16:  # then each is rounded to half
        bound = bound + np.abs(np.spacing(expect)).astype(np.float64)
    assert (diff <= bound).all(), float(diff.max())
    if out_dtype == np.float16:
        assert np.count_nonzero(diff) <= 2e-3 * diff.size + 2


@pytest.mark.parametrize("out_dtype", [np.float16, np.float32])
@pytest.mark.parametrize("group_channels,disparities,h,w,variant", [
    (28, 48, 13, 75, "tensor"), (28, 48, 5, 20, "tensor"), (8, 12, 7, 33, "tensor"), (28, 48, 3, 40, "tensor"),
    (28, 48, 4, 160, "tensor"), (28, 48, 3, 400, "tensor"), (40, 25, 3, 96, "tensor"),
    (28, 48, 3, 160, "tensor, tile 32"), (16, 104, 3, 136, "tensor, tile 32"), (28, 48, 5, 75, "tensor, tile 32"),
    (8, 7, 3, 37, "tensor, tile 16"), (16, 9, 2, 64, "tensor"), (28, 1, 2, 24, "tensor"),
    (28, 48, 13, 75, "pipelined"), (28, 48, 13, 75, "pipelined, 3 blocks"), (28, 48, 5, 20, "pipelined"),
    (8, 12, 7, 33, "pipelined"), (28, 48, 3, 40, "pipelined"), (28, 48, 4, 160, "pipelined"),
    (28, 48, 4, 160, "pipelined, 3 blocks"),
    (28, 48, 3, 400, "pipelined, 3 blocks"), (28, 48, 4, 160, "pipelined, 1 copy group"),
    (28, 48, 13, 75, "pipelined, 3 copy groups, 3 blocks"), (8, 12, 7, 33, "pipelined, 3 copy groups, 3 blocks"),
    (28, 48, 3, 400, "pipelined, 8 copy groups"), (28, 48, 3, 75, "pipelined 8x8"),
    (8, 12, 7, 33, "pipelined 8x8")])
def test_gwc_kernel_matches_numpy(stream, out_dtype, group_channels, disparities, h, w, variant):
    rng = np.random.default_rng(group_channels * w + h)
    groups = 8
    channels = groups * group_channels
    left = gwc.normalize_groups(rng.standard_normal((1, channels, h, w)).astype(np.float32), groups)
    right = gwc.normalize_groups(rng.standard_normal((1, channels, h, w)).astype(np.float32), groups)
    volume = poisoned((1, groups, disparities, h, w), out_dtype, stream)
    kernel = kernels.GwcKernel(group_channels, disparities, out_dtype, **GWC_VARIANTS[variant])
    launch = kernel.prepare(upload(left), upload(right), volume, groups, h, w)
    first = None
    for _ in range(2):  # a second launch (over the same stages) must give the same bits
        got = run(launch, stream, volume)
        assert_volume(got, left, right, groups, disparities, out_dtype, variant.split(",")[0].split()[0])
        assert first is None or bits_equal(got, first)
        first = got
        volume.fill_nan_async(stream)


@pytest.mark.parametrize("out_dtype", [np.float16, np.float32])
def test_tensor_gwc_builds_without_spilling_registers(out_dtype):
    """The default build keeps its accumulators in registers (with a launch-bounds minimum it spilled: slower)."""
    kernel = kernels.GwcKernel(28, 48, out_dtype, variant="tensor")
    built = kernel.kernel(kernel.tile_for(160))
    assert built.attribute("LOCAL_SIZE_BYTES") == 0


def test_default_gwc_variant_is_tensor_from_compute_capability_8():
    major, _ = cuda.primary_context(0).compute_capability
    assert kernels.default_gwc_variant() == ("tensor" if major >= 8 else "pipelined")


# ---------------------------------------------------------------------------------------- preprocess
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "rgba8", "bgra8"])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
def test_preprocess_is_exact_without_resize(stream, encoding, out_dtype):
    rng = np.random.default_rng(3)
    channels = images.ENCODINGS[encoding][0]
    image = rng.integers(0, 256, (48, 80, channels), dtype=np.uint8)
    dst = poisoned((1, 3, 48, 80), out_dtype, stream)
    launch = kernels.PreprocessKernel(out_dtype).prepare(upload(image), (48, 80), 80 * channels, encoding, dst,
                                                         (48, 80))
    assert bits_equal(run(launch, stream, dst), images.to_planar_rgb(image, encoding, (48, 80), dtype=out_dtype))


@pytest.mark.parametrize("camera,engine", [((375, 450), (480, 640)), ((720, 1280), (480, 640))])
def test_preprocess_resize_matches_its_mirror_exactly_and_cv2_closely(stream, camera, engine):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, camera + (3,), dtype=np.uint8)
    tables = [upload(kernels.linear_resize_table(camera[1], engine[1])),
              upload(kernels.linear_resize_table(camera[0], engine[0]))]
    dst = poisoned((1, 3) + engine, np.float32, stream)
    launch = kernels.PreprocessKernel(np.float32).prepare(upload(image[..., ::-1].copy()), camera, camera[1] * 3,
                                                          "bgr8", dst, engine, *tables)
    got = run(launch, stream, dst)
    mirror = kernels.resize_reference(image.transpose(2, 0, 1).astype(np.float32), engine)[None]
    assert bits_equal(got, mirror)
    assert np.abs(got - images.to_planar_rgb(image, "rgb8", engine)).max() < 0.02


# ---------------------------------------------------------------------------------------- glue
def test_disparity_resize_scale_and_offset(stream):
    rng = np.random.default_rng(5)
    engine, camera = (480, 640), (375, 450)
    disp = (rng.random(engine) * 150).astype(np.float32)
    tables = [upload(kernels.linear_resize_table(engine[1], camera[1])),
              upload(kernels.linear_resize_table(engine[0], camera[0]))]
    out = poisoned(camera, np.float32, stream)
    kernel = kernels.DisparityResizeKernel(np.float32)
    got = run(kernel.prepare(upload(disp), engine, out, camera, 2.75, *tables), stream, out)
    mirror = kernels.resize_reference(disp, camera) * np.float32(camera[1] / engine[1]) - np.float32(2.75)
    assert bits_equal(got, mirror.astype(np.float32))
    close = images.disparity_to_camera(disp, camera) - np.float32(2.75)
    assert np.abs(got - close).max() < 0.01


@pytest.mark.parametrize("in_dtype", [np.float32, np.float16])
def test_disparity_same_size_is_a_cast_and_offset(stream, in_dtype):
    disp = (np.random.default_rng(6).random((32, 64)) * 90).astype(in_dtype)
    out = poisoned((32, 64), np.float32, stream)
    got = run(kernels.DisparityResizeKernel(in_dtype).prepare(upload(disp), (32, 64), out, (32, 64), -1.25),
              stream, out)
    assert bits_equal(got, disp.astype(np.float32) - np.float32(-1.25))


def test_cast_kernels_match_numpy_astype(stream):
    every_half = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    out = poisoned(every_half.shape, np.float32, stream)
    got = run(kernels.CastKernel(np.float16, np.float32).prepare(upload(every_half), out, every_half.size), stream, out)
    assert np.array_equal(got, every_half.astype(np.float32), equal_nan=True)
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.standard_normal(100_000) * 10.0 ** rng.integers(-9, 6, 100_000),
                             [65504, 65520, 65519.99, 1e9, -1e9, 2.0 ** -25, 2.0 ** -24 * 1.5, 0.0, -0.0]])
    values = values.astype(np.float32)
    out = poisoned(values.shape, np.float16, stream)
    got = run(kernels.CastKernel(np.float32, np.float16).prepare(upload(values), out, values.size), stream, out)
    with np.errstate(over="ignore"):  # values beyond float16's range become inf, as on the device
        assert bits_equal(got, values.astype(np.float16))


# ---------------------------------------------------------------------------------------- depth and points
def test_depth_and_points_kernels_equal_depth_py(stream):
    rng = np.random.default_rng(8)
    h, w = 45, 67
    disparity = (rng.random((h, w)) * 80 - 5).astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -3.0, 1e-30, 0.5, 1e6], np.float32)
    disparity.flat[:special.size] = special
    camera = StereoCamera(fx=500.3, fy=499.7, cx=33.1, cy=22.4, baseline_m=0.12, cx_offset=0.0, width=w, height=h)
    limits = DepthLimits(min_disparity=0.25, min_depth=0.3, max_depth=40.0)
    image = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    kernel = kernels.DepthPointsKernels()
    disp_dev, image_dev = upload(disparity), upload(image)
    out = poisoned((h, w), np.float32, stream)
    got_depth = run(kernel.prepare_depth(disp_dev, h * w, camera.focal_baseline, limits.min_disparity,
                                         limits.min_depth, limits.max_depth, out), stream, out)
    ref_depth = depth.depth_image(disparity, camera, limits)
    assert np.array_equal(got_depth, ref_depth, equal_nan=True)
    for stride in (1, 2, 5):
        shape = kernels.points_shape((h, w), stride) + (4,)
        cloud = poisoned(shape, np.float32, stream)
        got = run(kernel.prepare_points(out, (h, w), image_dev, w * 4, "bgra8", stride, camera.cx, camera.cy,
                                        camera.fx, camera.fy, cloud), stream, cloud)
        ref = depth.point_cloud(ref_depth, depth.rgb_view(image, "bgra8"), camera, stride)
        assert np.array_equal(got, ref, equal_nan=True), f"stride {stride}"
        assert np.array_equal(got[..., 3].view(np.uint32), ref[..., 3].view(np.uint32))


# ---------------------------------------------------------------------------------------- CUDA layer
def test_buffers_copies_events_and_array_interface(stream):
    import torch

    data = np.arange(4096, dtype=np.float32)
    pinned = cuda.PinnedBuffer(data.shape, np.float32)
    pinned.array[:] = data
    dev = cuda.DeviceBuffer(data.shape, np.float32)
    start, end = cuda.Event(), cuda.Event()
    start.record(stream)
    assert dev.copy_from_host_async(pinned, stream) == data.nbytes
    end.record(stream)
    back = cuda.PinnedBuffer(data.shape, np.float32)
    dev.copy_to_host_async(back, stream)
    stream.synchronize()
    assert np.array_equal(back.array, data) and start.elapsed_ms(end) >= 0
    tensor = torch.as_tensor(dev, device="cuda")  # __cuda_array_interface__: same memory, no copy
    assert tensor.data_ptr() == dev.ptr and float(tensor.sum()) == float(data.sum())
    dev.fill_nan_async(stream)
    assert np.isnan(dev.download(stream)).all()
    free, total = cuda.memory_info()
    assert 0 < free <= total
    dev.close()
    with pytest.raises(cuda.CudaError, match="after close"):
        dev.ptr


def test_we_share_torch_context():
    import torch

    torch.zeros(1, device="cuda")
    ctx = cuda.primary_context(0)
    current = cuda.check(cuda.driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
    assert int(current) == int(ctx.handle)


def test_cuda_graph_capture_and_replay_of_kernels_and_copies(stream):
    """The capture path TensorRT frames use (graph_capture='cuda'): copies + kernels, replayed on new data."""
    rng = np.random.default_rng(9)
    groups, channels, h, w, d = 8, 224, 6, 40, 48
    feats = [cuda.PinnedBuffer((1, channels, h, w), np.float32) for _ in range(2)]
    dev_in = [cuda.DeviceBuffer((1, channels, h, w), np.float32) for _ in range(2)]
    normed = [cuda.DeviceBuffer((1, channels, h, w), np.float16) for _ in range(2)]
    volume = cuda.DeviceBuffer((1, groups, d, h, w), np.float16)
    volume_host = cuda.PinnedBuffer(volume.shape, np.float16)
    norm = kernels.GroupNormKernel(channels // groups, np.float32).prepare(*dev_in, *normed, groups, h * w)
    gwc_kernel = kernels.GwcKernel(channels // groups, d, np.float16)
    gwc_launch = gwc_kernel.prepare(*normed, volume, groups, h, w)
    graph = cuda.CudaGraph()
    graph.begin_capture(stream)
    for host, dev in zip(feats, dev_in):
        dev.copy_from_host_async(host, stream)
    norm.run(stream)
    gwc_launch.run(stream)
    volume.copy_to_host_async(volume_host, stream)
    graph.end_capture()
    for _ in range(2):
        inputs = [rng.standard_normal((1, channels, h, w)).astype(np.float32) for _ in range(2)]
        for host, x in zip(feats, inputs):
            host.array[...] = x
        graph.launch(stream)
        stream.synchronize()
        normalized = [gwc.normalize_groups(x, groups) for x in inputs]
        assert_volume(volume_host.array, *normalized, groups, d, np.float16, gwc_kernel.variant)
    graph.close()

