"""The CUDA layer without a GPU: errors name the call; no GPU means a count of 0, not an exception."""
import pytest

from flashstereo_ros import cuda
from flashstereo_ros.errors import CudaError

pytestmark = pytest.mark.skipif(cuda.driver is None, reason="cuda-python not installed")


def test_driver_error_names_the_call_and_the_error():
    status = cuda.driver.CUresult.CUDA_ERROR_OUT_OF_MEMORY
    with pytest.raises(CudaError, match=r"cuMemAlloc failed: .*CUDA_ERROR_OUT_OF_MEMORY"):
        cuda.check((status, None), "cuMemAlloc")


def test_nvrtc_error_names_the_call():
    status = cuda.nvrtc.nvrtcResult.NVRTC_ERROR_INVALID_OPTION
    with pytest.raises(CudaError, match="nvrtcCompileProgram failed"):
        cuda.check((status,), "nvrtcCompileProgram")


def test_success_unpacks_values():
    ok = cuda.driver.CUresult.CUDA_SUCCESS
    assert cuda.check((ok,), "x") is None
    assert cuda.check((ok, 5), "x") == 5
    assert cuda.check((ok, 5, 6), "x") == (5, 6)


def test_device_count_is_an_int():
    count = cuda.device_count()
    assert isinstance(count, int) and count >= 0
