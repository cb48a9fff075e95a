"""Every CUDA kernel compiles with NVRTC for Jetson Orin (compute_87) and Hopper (compute_90); no GPU needed."""
import numpy as np
import pytest

from flashstereo_ros import cuda, kernels
from flashstereo_ros.errors import CudaError

pytestmark = pytest.mark.skipif(cuda.nvrtc is None, reason="cuda-python (NVRTC bindings) not installed")

# every define combination the pipelines build (stand-in: 224 channels in 8 groups, 48 disparities)
VARIANTS = [
    ("preprocess.cu", {"OUT_HALF": 0}), ("preprocess.cu", {"OUT_HALF": 1}),
    ("group_norm.cu", {"GROUP_CHANNELS": 28, "IN_HALF": 0, "NORM_EPS": kernels.norm_eps_literal()}),
    ("group_norm.cu", {"GROUP_CHANNELS": 28, "IN_HALF": 1, "NORM_EPS": kernels.norm_eps_literal()}),
    ("gwc.cu", {"GROUP_CHANNELS": 28, "DISPARITIES": 48, "OUT_HALF": 1}),
    ("gwc.cu", {"GROUP_CHANNELS": 28, "DISPARITIES": 48, "OUT_HALF": 0}),
    ("gwc.cu", {"GROUP_CHANNELS": 40, "DISPARITIES": 104, "OUT_HALF": 1}),
    ("glue.cu", {"IN_HALF": 0}), ("glue.cu", {"IN_HALF": 1}),
    ("depth_points.cu", None),
]
KERNELS_IN = {"preprocess.cu": ["preprocess"], "group_norm.cu": ["group_norm"], "gwc.cu": ["gwc_volume"],
              "glue.cu": ["resize_disparity", "cast_f32_to_f16", "cast_f16_to_f32"],
              "depth_points.cu": ["depth_image", "point_cloud"]}


def _nvrtc_usable():
    try:
        return kernels.nvrtc_version()
    except Exception as exc:  # the wheel is there but libnvrtc is not
        pytest.skip(f"NVRTC cannot be loaded: {exc}")


def test_every_source_is_covered():
    assert {source for source, _ in VARIANTS} == set(KERNELS_IN) == set(kernels.SOURCES)
    assert {name for names in KERNELS_IN.values() for name in names} == set(kernels.SIGNATURES)


@pytest.mark.parametrize("arch", ["compute_87", "compute_90"])
@pytest.mark.parametrize("source,defines", VARIANTS, ids=lambda v: str(v) if not isinstance(v, dict) else
                         ",".join(f"{k}={x}" for k, x in v.items()))
def test_kernel_compiles_to_ptx(arch, source, defines):
    _nvrtc_usable()
    ptx = kernels.compile_ptx(source, arch, defines)
    assert f".target sm_{arch.split('_')[1]}" in ptx
    for name in KERNELS_IN[source]:
        assert f".entry {name}(" in ptx
    assert ".local" not in ptx, "a per-thread array spilled to local memory"


def test_norm_kernel_has_no_fused_multiply_add():
    """Bit identity with numpy needs each product and sum rounded separately."""
    _nvrtc_usable()
    ptx = kernels.compile_ptx("group_norm.cu", "compute_90", VARIANTS[2][1])
    assert "fma" not in ptx and "sqrt.rn.f32" in ptx and "div.rn.f32" in ptx and "cvt.rn.f16.f32" in ptx


def test_cubin_for_the_gpu_arch_and_disk_cache(tmp_path, monkeypatch):
    _nvrtc_usable()
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    first = kernels.image_for("gwc.cu", "sm_90", VARIANTS[4][1])
    assert first[:4] == b"\x7fELF"
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".cubin"
    assert kernels.image_for("gwc.cu", "sm_90", VARIANTS[4][1]) == first
    kernels.image_for("gwc.cu", "sm_90", VARIANTS[5][1])
    assert len(list(tmp_path.iterdir())) == 2, "other defines are another cache entry"


def test_target_is_the_gpu_arch_or_ptx_for_an_older_one():
    _nvrtc_usable()
    assert kernels.target_for((9, 0)) == "sm_90"
    assert kernels.target_for((8, 7)) == "sm_87"
    newest = max(kernels.supported_archs())
    assert kernels.target_for((newest // 10 + 5, 0)) == f"compute_{newest}"


def test_compile_error_names_the_call_and_shows_the_log():
    _nvrtc_usable()
    with pytest.raises(CudaError, match=r"nvrtcCompileProgram failed for gwc.cu(.|\n)*GROUP_CHANNELS"):
        kernels.compile_ptx("gwc.cu", "compute_90", {"DISPARITIES": 48})


def test_norm_eps_literal_is_the_float32_reference_eps():
    literal = kernels.norm_eps_literal()
    assert literal.endswith("f") and np.float32(float(literal[:-1])) == np.float32(1e-12)
