"""Host-side parts of the kernels: resize tables (cv2.INTER_LINEAR semantics) and launch argument checks."""
import numpy as np
import pytest

from flashstereo_ros import images, kernels


@pytest.mark.parametrize("src,dst", [(450, 640), (640, 450), (375, 480), (480, 375), (640, 640), (1280, 640)])
def test_resize_table_taps(src, dst):
    table = kernels.linear_resize_table(src, dst)
    i0, i1 = table[:dst], table[dst:2 * dst]
    w0, w1 = table[2 * dst:3 * dst].view(np.float32), table[3 * dst:].view(np.float32)
    assert (0 <= i0).all() and (i1 < src).all() and (i1 - i0 <= 1).all()
    assert (w0 >= 0).all() and (w1 >= 0).all() and np.allclose(w0 + w1, 1, atol=1e-6)
    centre = (np.arange(dst) + 0.5) * src / dst - 0.5
    inside = (centre >= 0) & (centre <= src - 1)
    np.testing.assert_allclose((i0 * w0 + i1 * w1)[inside], centre[inside], atol=1e-4)


def test_same_size_table_is_the_identity():
    table = kernels.linear_resize_table(77, 77)
    assert np.array_equal(table[:77], np.arange(77)) and (table[2 * 77:3 * 77].view(np.float32) == 1).all()


@pytest.mark.parametrize("src,dst", [((375, 450), (480, 640)), ((480, 640), (375, 450)), ((720, 1280), (480, 640))])
def test_kernel_resize_arithmetic_is_cv2_inter_linear(src, dst):
    """The kernels' resize (mirrored in numpy) equals cv2's bilinear resize up to its SIMD rounding."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, src + (3,), dtype=np.uint8)
    ours = kernels.resize_reference(image.transpose(2, 0, 1).astype(np.float32), dst)[None]
    reference = images.to_planar_rgb(image, "rgb8", dst)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 0.02


def test_launch_argument_count_is_checked():
    kernel = kernels.Kernel("gwc_volume", handle=None)
    with pytest.raises(kernels.CudaError, match="takes 6 arguments"):
        kernel.prepare((1,), (1,), (0, 0, 0))
    launch = kernel.prepare((3, 2), (32, 8), (1, 2, 3, 4.0, 5, 6))
    assert launch.grid == (3, 2, 1) and launch.block == (32, 8, 1) and launch.args == (1, 2, 3, 4, 5, 6)


def test_f32_arguments_are_rounded_like_numpy():
    launch = kernels.Kernel("depth_image", None).prepare((1,), (1,), (0, 1, 0.1, 0, 0, np.inf, 0))
    assert launch.args[2] == float(np.float32(0.1)) and launch.args[5] == np.inf


def test_launch_keeps_its_buffers_alive():
    """A buffer passed only to prepare() must outlive it: the launch runs later, on the stream."""
    import gc
    import weakref

    class Buffer:
        ptr = 4096

    buffer = Buffer()
    ref = weakref.ref(buffer)
    launch = kernels.Kernel("cast_f32_to_f16", None).prepare((1,), (1,), (buffer, 8192, 16))
    del buffer
    gc.collect()
    assert ref() is not None and launch.args[0] == 4096
    del launch
    gc.collect()
    assert ref() is None
