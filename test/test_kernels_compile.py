"""Every CUDA kernel compiles with NVRTC for Jetson Orin (compute_87) and Hopper (compute_90); no GPU needed."""
import re

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
    ("gwc.cu", kernels.GwcKernel(28, 48, np.float16, variant="pipelined").defines(160)),  # a 480x640 1/4 row
    ("gwc.cu", kernels.GwcKernel(28, 48, np.float32, variant="pipelined").defines(160)),
    ("gwc.cu", kernels.GwcKernel(40, 104, np.float16, variant="pipelined").defines(88)),
    ("gwc.cu", kernels.GwcKernel(28, 48, np.float16, kt=8, variant="pipelined").defines(64)),
    ("gwc_tensor.cu", kernels.GwcKernel(28, 48, np.float16, variant="tensor").defines(160)),
    ("gwc_tensor.cu", kernels.GwcKernel(28, 48, np.float32, variant="tensor").defines(160)),
    ("gwc_tensor.cu", kernels.GwcKernel(40, 25, np.float16, variant="tensor").defines(96)),  # 3 k16 steps
    ("gwc_tensor.cu", kernels.GwcKernel(8, 104, np.float16, variant="tensor").defines(32)),  # 1 k16 step
    ("glue.cu", {"IN_HALF": 0}), ("glue.cu", {"IN_HALF": 1}),
    ("depth_points.cu", None),
]
KERNELS_IN = {"preprocess.cu": ["preprocess"], "group_norm.cu": ["group_norm"], "gwc.cu": ["gwc_volume"],
              "gwc_tensor.cu": ["gwc_volume"],
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


def test_pipelined_gwc_copies_tiles_asynchronously():
    """The default GWC kernel fetches the next tile with cp.async (sm_80+), in two shared-memory stages."""
    _nvrtc_usable()
    ptx = kernels.compile_ptx("gwc.cu", "compute_90", VARIANTS[4][1])
    assert "cp.async.cg.shared.global" in ptx and "cp.async.wait_group 1" in ptx
    with pytest.raises(ValueError, match="kt a multiple of 8, got 12"):
        kernels.GwcKernel(28, 48, np.float16, kt=12, variant="pipelined")


def test_tensor_gwc_multiplies_on_the_tensor_cores():
    """mma.sync m16n8k16 with float32 accumulators, operands by ldmatrix, tiles by cp.async."""
    _nvrtc_usable()
    defines = kernels.GwcKernel(28, 48, np.float16, variant="tensor").defines(80)
    ptx = kernels.compile_ptx("gwc_tensor.cu", "compute_87", defines)
    assert ptx.count("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32") == 16  # 8 n-tiles x 2 k16 steps
    assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in ptx and "cp.async.cg.shared.global" in ptx


def test_gwc_variant_is_checked_and_the_environment_picks_it(monkeypatch):
    monkeypatch.setenv(kernels.GWC_KERNEL_ENV, "pipelined")
    assert kernels.GwcKernel(28, 48, np.float16).variant == "pipelined"
    assert kernels.GwcKernel(28, 48, np.float16, variant="tensor").variant == "tensor"
    monkeypatch.setenv(kernels.GWC_KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match="one of tensor, pipelined, got 'fast'"):
        kernels.GwcKernel(28, 48, np.float16)


def test_tensor_gwc_is_the_default_from_compute_capability_8_and_refused_below(monkeypatch):
    import types

    from flashstereo_ros.errors import BackendUnavailableError

    turing = types.SimpleNamespace(compute_capability=(7, 5))
    monkeypatch.delenv(kernels.GWC_KERNEL_ENV, raising=False)
    monkeypatch.setattr(kernels.cuda, "primary_context", lambda device_id=0: turing)
    assert kernels.default_gwc_variant() == "pipelined"
    assert kernels.GwcKernel(28, 48, np.float16).variant == "pipelined"
    with pytest.raises(BackendUnavailableError, match=r"needs compute capability 8.0\+ \(this GPU has 7.5\)"):
        kernels.GwcKernel(28, 48, np.float16, variant="tensor").kernel(80)
    turing.compute_capability = (8, 7)  # Jetson Orin
    assert kernels.default_gwc_variant() == "tensor"


@pytest.mark.parametrize("variant", kernels.GwcKernel.VARIANTS)
def test_gwc_tiles_fit_static_shared_memory_and_cover_the_row(variant):
    """A 160-column row (480x640 frame) is one tile (two of the tensor kernel's); wider rows split into equal
    tiles that each fit 48 KB."""
    gwc = kernels.GwcKernel(28, 48, np.float16, variant=variant)
    assert gwc.tile_for(160) == (kernels.GWC_TENSOR_TILE if variant == "tensor" else 160)
    for width in (8, 20, 33, 75, 160, 200, 320, 480, 1000):
        tile = gwc.tile_for(width)
        assert tile % gwc.tile_step == 0 and tile <= gwc.max_tile
        assert gwc.shared_bytes(tile) <= kernels.STATIC_SHARED_LIMIT and gwc.threads(tile) <= 1024
        tiles = -(-width // tile)
        assert tiles * tile >= width and (tiles - 1) * tile < width
    widest = kernels.GwcKernel(28, 48, np.float16, variant=variant, max_tile=10**4).max_tile
    assert gwc.shared_bytes(widest) <= kernels.STATIC_SHARED_LIMIT < gwc.shared_bytes(widest + gwc.tile_step)
    with pytest.raises(Exception, match="shared memory"):
        kernels.GwcKernel(400, 48, np.float16, variant=variant)
    assert kernels.GwcKernel(28, 48, np.float16, variant=variant, max_tile=40).tile_for(1000) <= 40
    with pytest.raises(ValueError, match="multiples of"):
        kernels.GwcKernel(28, 48, np.float16, variant=variant, max_tile=4)
    with pytest.raises(ValueError, match="disparities >= 1, got 28 and 0"):
        kernels.GwcKernel(28, 0, np.float16, variant=variant)


def test_gwc_kernel_shared_memory_is_what_the_host_computes():
    """ptxas' own count of the static shared memory equals GwcKernel.shared_bytes (the host's tile choice)."""
    _nvrtc_usable()
    def pipelined(*args, **kwargs):
        return kernels.GwcKernel(*args, variant="pipelined", **kwargs)

    def tensor(*args):
        return kernels.GwcKernel(*args, variant="tensor")

    cases = ((pipelined(28, 48, np.float16), 160), (pipelined(40, 104, np.float16), 88),
             (pipelined(8, 12, np.float32), 40), (pipelined(28, 48, np.float16, kt=8), 72),
             (tensor(28, 48, np.float16), 160), (tensor(28, 48, np.float32), 160), (tensor(40, 25, np.float16), 96),
             (tensor(8, 104, np.float32), 32))
    for gwc, tile in cases:
        ptx = kernels.compile_ptx(gwc.source, "compute_90", gwc.defines(tile))
        declared = sum(int(n) for n in re.findall(r"\.shared \.align \d+ \.b8 \S+\[(\d+)\]", ptx))
        assert declared == gwc.shared_bytes(tile)
