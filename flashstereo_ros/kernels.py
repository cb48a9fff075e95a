"""The CUDA kernels (kernels/*.cu), built at run time with NVRTC for the running GPU, cached on disk.

A build is keyed by the source (with its headers), the defines, the target and the NVRTC version, and
stored under $FLASHSTEREO_KERNEL_CACHE or ~/.cache/flashstereo_ros/kernels. The target is the GPU's own
`sm_XY` (CUBIN) when this NVRTC knows it, else PTX for the newest `compute_XY` it knows below the GPU
(the driver finishes the build). `compile_ptx` needs no GPU, so CI checks that every kernel compiles.

Each kernel family has a small class that compiles its module once and `prepare()`s launches with the
arguments baked in, so a frame is only a series of cuLaunchKernel calls (and can be captured in a graph).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import cuda, resources
from .contract import NORM_EPS
from .cuda import check
from .errors import BackendUnavailableError, CudaError, ModelError

SOURCES = ("preprocess.cu", "group_norm.cu", "gwc.cu", "gwc_tensor.cu", "glue.cu", "depth_points.cu")
HEADERS = ("fs_common.cuh",)
CACHE_ENV = "FLASHSTEREO_KERNEL_CACHE"
COMPILE_OPTIONS = ("--std=c++17", "--fmad=false")  # no contraction: the bit-identity rule
# kernel name -> argument kinds, the C signature in the .cu files ("ptr" = device pointer)
SIGNATURES: dict[str, tuple[str, ...]] = {
    "preprocess": ("ptr", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "ptr", "ptr", "i32", "ptr", "i32", "i32"),
    "group_norm": ("ptr", "ptr", "ptr", "ptr", "i32", "i32"),
    "gwc_volume": ("ptr", "ptr", "ptr", "i32", "i32", "i32"),
    "resize_disparity": ("ptr", "i32", "i32", "ptr", "ptr", "i32", "f32", "i32", "f32", "ptr", "i32", "i32"),
    "cast_f32_to_f16": ("ptr", "ptr", "u64"),
    "cast_f16_to_f32": ("ptr", "ptr", "u64"),
    "depth_image": ("ptr", "i32", "f32", "f32", "f32", "f32", "ptr"),
    "point_cloud": ("ptr", "i32", "i32", "ptr", "i32", "i32", "i32", "i32", "i32", "i32",
                    "f32", "f32", "f32", "f32", "ptr", "i32", "i32"),
}
_CTYPES = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "u64": ctypes.c_uint64, "f32": ctypes.c_float}
GWC_XT, GWC_KT = 8, 16  # columns (fixed) and disparities per thread of gwc.cu's register block
GWC_BLOCKS_PER_SM = None  # blocks per multiprocessor of the persistent GWC kernel (None: as many as fit)
GWC_FETCH_CHUNKS = 4  # copy groups (channel ranges) per item of the pipelined GWC kernel: docs/GPU.md
TENSOR_CAPABILITY = (8, 0)  # mma.sync m16n8k16 (gwc_tensor.cu) needs sm_80+
GWC_TENSOR_TILE = 80  # the tensor kernel's widest default tile: 6 blocks of 5 warps fit an SM (docs/GPU.md)
GWC_KERNEL_ENV = "FLASHSTEREO_GWC_KERNEL"  # "tensor" or "pipelined": GwcKernel's variant
STATIC_SHARED_LIMIT = 48 * 1024
BLOCK_2D = (32, 8, 1)
BLOCK_1D = (256, 1, 1)
_modules: dict[tuple, "Module"] = {}
_modules_lock = threading.Lock()


# ----------------------------------------------------------------------------------------------- NVRTC
def _require_nvrtc() -> None:
    if cuda.nvrtc is None:
        raise BackendUnavailableError("NVRTC is not available: pip install 'cuda-python>=12.6' nvidia-cuda-nvrtc")


def nvrtc_version() -> tuple[int, int]:
    _require_nvrtc()
    major, minor = check(cuda.nvrtc.nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


def supported_archs() -> tuple[int, ...]:
    """Compute capabilities (as 75, 87, 90, ...) this NVRTC can build for."""
    _require_nvrtc()
    return tuple(int(a) for a in check(cuda.nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs"))


def target_for(capability: tuple[int, int]) -> str:
    """'sm_XY' for the GPU when NVRTC knows it (CUBIN), else the newest 'compute_XY' below it (PTX)."""
    cc = capability[0] * 10 + capability[1]
    archs = supported_archs()
    if cc in archs:
        return f"sm_{cc}"
    older = [a for a in archs if a <= cc]
    if not older:
        raise BackendUnavailableError(f"this NVRTC ({'.'.join(map(str, nvrtc_version()))}) cannot build for "
                                      f"compute capability {capability[0]}.{capability[1]} (it knows {list(archs)})")
    return f"compute_{max(older)}"


def kernel_source(name: str) -> str:
    return resources.share_file("kernels", name).read_text()


def _headers() -> dict[str, str]:
    return {name: kernel_source(name) for name in HEADERS}


def _define_options(defines: Mapping[str, object] | None) -> list[str]:
    return [f"-D{key}={value}" for key, value in sorted((defines or {}).items())]


def _compile(source_name: str, arch: str, defines: Mapping[str, object] | None) -> tuple[bytes, str]:
    """NVRTC-compile one .cu for `arch` ('sm_XY' -> CUBIN, 'compute_XY' -> PTX); (image, log)."""
    _require_nvrtc()
    nv = cuda.nvrtc
    headers = _headers()
    program = check(nv.nvrtcCreateProgram(kernel_source(source_name).encode(), source_name.encode(), len(headers),
                                          [s.encode() for s in headers.values()], [n.encode() for n in headers]),
                    "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={arch}", *COMPILE_OPTIONS, *_define_options(defines)]
        status = nv.nvrtcCompileProgram(program, len(options), [o.encode() for o in options])
        log = _program_log(program)
        if status[0] != nv.nvrtcResult.NVRTC_SUCCESS:
            raise CudaError(f"nvrtcCompileProgram failed for {source_name} ({arch}, "
                            f"{_define_options(defines)}):\n{log}")
        if arch.startswith("sm_"):
            size = check(nv.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
            image = bytes(size)
            check(nv.nvrtcGetCUBIN(program, image), "nvrtcGetCUBIN")
        else:
            size = check(nv.nvrtcGetPTXSize(program), "nvrtcGetPTXSize")
            image = bytes(size)
            check(nv.nvrtcGetPTX(program, image), "nvrtcGetPTX")
        return image, log
    finally:
        check(nv.nvrtcDestroyProgram(program), "nvrtcDestroyProgram")


def _program_log(program) -> str:
    nv = cuda.nvrtc
    size = check(nv.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
    log = bytes(size)
    check(nv.nvrtcGetProgramLog(program, log), "nvrtcGetProgramLog")
    return log.rstrip(b"\0").decode(errors="replace")


def compile_ptx(source_name: str, arch: str = "compute_90", defines: Mapping[str, object] | None = None) -> str:
    """PTX of one kernel source for a virtual architecture; needs NVRTC only, no GPU."""
    if not arch.startswith("compute_"):
        raise ValueError(f"compile_ptx takes a virtual architecture like compute_90, got {arch!r}")
    image, _ = _compile(source_name, arch, defines)
    return image.rstrip(b"\0").decode()


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "flashstereo_ros" / "kernels"


def cache_key(source_name: str, arch: str, defines: Mapping[str, object] | None) -> str:
    digest = hashlib.sha256()
    for part in (kernel_source(source_name), *_headers().values(), " ".join(_define_options(defines)),
                 " ".join(COMPILE_OPTIONS), arch, ".".join(map(str, nvrtc_version()))):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def image_for(source_name: str, arch: str, defines: Mapping[str, object] | None = None) -> bytes:
    """The compiled image (CUBIN or PTX), from the disk cache or freshly compiled and stored there."""
    stem = Path(source_name).stem
    suffix = ".cubin" if arch.startswith("sm_") else ".ptx"
    path = cache_dir() / f"{stem}-{arch}-{cache_key(source_name, arch, defines)}{suffix}"
    try:
        return path.read_bytes()
    except OSError:
        pass
    image, _ = _compile(source_name, arch, defines)
    try:  # a cache that cannot be written only costs a recompile next time
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
            tmp.write(image)
        os.replace(tmp.name, path)
    except OSError:
        pass
    return image


# ------------------------------------------------------------------------------------ modules, launches
class Module:
    """A loaded CUDA module (one .cu with one set of defines) in a device's primary context."""

    def __init__(self, source_name: str, defines: Mapping[str, object] | None, device_id: int = 0):
        self.ctx = cuda.primary_context(device_id)
        self.source_name = source_name
        self.defines = dict(defines or {})
        self.arch = target_for(self.ctx.compute_capability)
        image = image_for(source_name, self.arch, defines)
        self.handle = check(cuda.driver.cuModuleLoadData(image), "cuModuleLoadData")
        self._kernels: dict[str, Kernel] = {}

    def kernel(self, name: str) -> "Kernel":
        if name not in self._kernels:
            if name not in SIGNATURES:
                raise CudaError(f"kernel '{name}' has no declared signature")
            handle = check(cuda.driver.cuModuleGetFunction(self.handle, name.encode()), f"cuModuleGetFunction({name})")
            self._kernels[name] = Kernel(name, handle)
        return self._kernels[name]


def load_module(source_name: str, defines: Mapping[str, object] | None = None, device_id: int = 0) -> Module:
    """The module for (source, defines) on a device, built once per process (modules live as long as it)."""
    key = (device_id, source_name, tuple(sorted((k, str(v)) for k, v in (defines or {}).items())))
    with _modules_lock:
        module = _modules.get(key)
    if module is None:
        module = Module(source_name, defines, device_id)
        with _modules_lock:
            module = _modules.setdefault(key, module)
    module.ctx.make_current()
    return module


class Kernel:
    """One __global__ function with its declared argument kinds."""

    def __init__(self, name: str, handle):
        self.name = name
        self.handle = handle
        self.signature = SIGNATURES[name]

    def attribute(self, name: str) -> int:
        attr = getattr(cuda.driver.CUfunction_attribute, f"CU_FUNC_ATTRIBUTE_{name}")
        return int(check(cuda.driver.cuFuncGetAttribute(attr, self.handle), "cuFuncGetAttribute"))

    def resident_blocks(self, threads: int, shared: int = 0) -> int:
        """Blocks of `threads` threads that fit on one multiprocessor at once (registers, shared memory)."""
        return int(check(cuda.driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(self.handle, int(threads), shared),
                         "cuOccupancyMaxActiveBlocksPerMultiprocessor"))

    def prepare(self, grid: Sequence[int], block: Sequence[int], args: Sequence[object], shared: int = 0) -> "Launch":
        if len(args) != len(self.signature):
            raise CudaError(f"kernel {self.name} takes {len(self.signature)} arguments, got {len(args)}")
        values, keep = [], []
        for kind, arg in zip(self.signature, args):
            if kind == "ptr":
                if not isinstance(arg, (int, np.integer)):
                    keep.append(arg)  # the launch keeps its buffers alive: no use after free
                    arg = arg.ptr
            elif kind == "f32":
                arg = float(np.float32(arg))  # the float32 the numpy reference uses, rounded once here
            else:
                arg = int(arg)
            values.append(_CTYPES[kind](arg))
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
        if min(grid) < 1:
            raise CudaError(f"kernel {self.name}: empty grid {grid}")
        return Launch(self, grid, block, values, shared, keep)


class Launch:
    """A kernel with its arguments baked in; `run(stream)` is one cuLaunchKernel.

    Buffer objects passed as pointer arguments are referenced for the launch's lifetime; plain integer
    addresses are the caller's to keep valid.
    """

    def __init__(self, kernel: Kernel, grid, block, values, shared: int, keep=()):
        self.kernel, self.grid, self.block, self.shared = kernel, grid, block, shared
        self._values = values  # keep the ctypes storage the pointer array points into
        self._buffers = tuple(keep)
        self._params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])

    @property
    def args(self) -> tuple:
        return tuple(v.value for v in self._values)

    def run(self, stream) -> None:
        handle = stream.handle if isinstance(stream, cuda.Stream) else stream
        check(cuda.driver.cuLaunchKernel(self.kernel.handle, *self.grid, *self.block, self.shared, handle,
                                         ctypes.addressof(self._params), 0), f"cuLaunchKernel({self.kernel.name})")


def _blocks(n: int, per: int) -> int:
    return (int(n) + per - 1) // per


def _half_flag(dtype, what: str) -> int:
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return 1
    if dtype == np.float32:
        return 0
    raise ModelError(f"{what} dtype {dtype} is not supported (float32 or float16)")


# ------------------------------------------------------------------------------------- kernel families
def linear_resize_table(src: int, dst: int) -> np.ndarray:
    """cv2.INTER_LINEAR taps from `src` samples to `dst` (half-pixel centres), as 4*dst int32 words.

    [i0 (dst) | i1 (dst) | w0 float bits (dst) | w1 float bits (dst)]; the source position is computed in
    double and rounded to float as cv2 does, and taps outside the image are clamped with weight 0.
    """
    if src < 1 or dst < 1:
        raise ValueError(f"cannot resize {src} samples to {dst}")
    scale = 1.0 / (dst / src)
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(pos).astype(np.int64)
    frac = (pos - first.astype(np.float32)).astype(np.float32)
    low, high = first < 0, first >= src - 1
    frac[low | high] = 0.0
    first = np.clip(first, 0, src - 1)
    second = np.minimum(first + 1, src - 1)
    w0 = (np.float32(1.0) - frac).astype(np.float32)
    table = np.empty(4 * dst, np.int32)
    table[:dst], table[dst:2 * dst] = first, second
    table[2 * dst:3 * dst], table[3 * dst:] = w0.view(np.int32), frac.view(np.int32)
    return table


def apply_resize_table(table: np.ndarray, values: np.ndarray, axis: int) -> np.ndarray:
    """Numpy mirror of one pass of the kernels' resize (fs_common.cuh lerp2) along `axis`, float32."""
    n = table.size // 4
    i0, i1 = table[:n], table[n:2 * n]
    w0, w1 = table[2 * n:3 * n].view(np.float32), table[3 * n:].view(np.float32)
    shape = [1] * values.ndim
    shape[axis] = n
    a = np.take(values, i0, axis=axis).astype(np.float32)
    b = np.take(values, i1, axis=axis).astype(np.float32)
    return (a * w0.reshape(shape) + b * w1.reshape(shape)).astype(np.float32)


def resize_reference(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., H, W) -> (..., h, w) float32 exactly as preprocess.cu / resize_disparity compute it
    (columns first, then rows; each product and sum rounded to float32)."""
    h, w = size
    columns = apply_resize_table(linear_resize_table(values.shape[-1], w), values, values.ndim - 1)
    return apply_resize_table(linear_resize_table(values.shape[-2], h), columns, values.ndim - 2)


def channel_offsets(encoding: str) -> tuple[int, tuple[int, int, int]]:
    """(channels per pixel, byte offsets of R, G, B) of an image encoding."""
    from .images import ENCODINGS

    channels, order = ENCODINGS[encoding]
    return channels, tuple(order)


class PreprocessKernel:
    """uint8 camera image -> (1,3,h,w) RGB float/half engine input (kernels/preprocess.cu)."""

    def __init__(self, out_dtype, device_id: int = 0):
        self.out_dtype = np.dtype(out_dtype)
        module = load_module("preprocess.cu", {"OUT_HALF": _half_flag(out_dtype, "feature input")}, device_id)
        self.kernel = module.kernel("preprocess")

    def prepare(self, src, src_hw: tuple[int, int], step: int, encoding: str, dst, dst_hw: tuple[int, int],
                xtab=0, ytab=0) -> Launch:
        channels, (r, g, b) = channel_offsets(encoding)
        resize = tuple(src_hw) != tuple(dst_hw)
        if resize and (not xtab or not ytab):
            raise CudaError("preprocess needs resize tables when the camera and engine sizes differ")
        h, w = dst_hw
        args = (src, src_hw[0], src_hw[1], step, channels, r, g, b, xtab if resize else 0, ytab if resize else 0,
                int(resize), dst, h, w)
        return self.kernel.prepare((_blocks(w, BLOCK_2D[0]), _blocks(h, BLOCK_2D[1])), BLOCK_2D, args)


class GroupNormKernel:
    """Per-group L2 norm of left and right 1/4 features to half, in one launch (kernels/group_norm.cu)."""

    def __init__(self, group_channels: int, in_dtype, device_id: int = 0):
        self.group_channels = int(group_channels)
        defines = {"GROUP_CHANNELS": self.group_channels, "IN_HALF": _half_flag(in_dtype, "feature"),
                   "NORM_EPS": norm_eps_literal()}
        self.kernel = load_module("group_norm.cu", defines, device_id).kernel("group_norm")

    def prepare(self, left_in, right_in, left_out, right_out, groups: int, plane: int) -> Launch:
        return self.kernel.prepare((_blocks(plane, BLOCK_1D[0]), groups, 2), BLOCK_1D,
                                   (left_in, right_in, left_out, right_out, groups, plane))


class GwcKernel:
    """The group-wise correlation volume from normalised half features.

    Two variants (`variant`, else $FLASHSTEREO_GWC_KERNEL, else the GPU's default):
    - "tensor" (kernels/gwc_tensor.cu; the default on compute capability 8.0+): the band of each row's
      left x right correlation matrix on the tensor cores (mma.sync, float32 accumulation). Sums can
      differ from gwc.gwc_volume's channel-order sum in the last float32 bits (at the stand-in's shape
      0.035% of the half values, by one or two ulps); every pipeline in a process builds the same
      variant, so resident and stock agree bit for bit.
    - "pipelined" (kernels/gwc.cu; the default below 8.0): float32 multiply-adds in channel order, bit for
      bit gwc.gwc_volume. A persistent grid of as many blocks per multiprocessor as fit (or blocks_per_sm)
      fetches the next tile while computing the current one, each tile's fetch in `fetch_chunks` copy
      groups of channels so that computing starts when the first has landed.
    The module is built per tile width: `prepare` splits the row into equal tiles of at most `max_tile`
    columns (default: the widest whose shared memory fits the static limit, so a 480x640 frame's
    160-column rows are one tile each and no right column is loaded twice; for the tensor kernel
    GWC_TENSOR_TILE, so they are two). Measurements: docs/GPU.md.
    """

    VARIANTS = ("tensor", "pipelined")

    def __init__(self, group_channels: int, disparities: int, out_dtype, device_id: int = 0,
                 kt: int = GWC_KT, max_tile: int | None = None, min_blocks: int | None = None,
                 variant: str | None = None, blocks_per_sm: int | None = GWC_BLOCKS_PER_SM,
                 max_blocks: int | None = None, fetch_chunks: int = GWC_FETCH_CHUNKS):
        self.group_channels, self.disparities = int(group_channels), int(disparities)
        if self.group_channels < 1 or self.disparities < 1:
            raise ValueError(f"the GWC volume needs channels per group and disparities >= 1, got "
                             f"{group_channels} and {disparities}")
        self.out_half = _half_flag(out_dtype, "gwc_volume")
        self.device_id, self.kt = device_id, int(kt)
        self.variant = variant or os.environ.get(GWC_KERNEL_ENV) or default_gwc_variant(device_id)
        if self.variant not in self.VARIANTS:
            raise ValueError(f"the GWC kernel variant ({GWC_KERNEL_ENV}) is one of {', '.join(self.VARIANTS)}, "
                             f"got {self.variant!r}")
        self.blocks_per_sm, self.max_blocks = blocks_per_sm, max_blocks
        # __launch_bounds__' minimum resident blocks; for the tensor kernel none (0): given one, the compiler
        # spilled (6 blocks of tile 80: 12.5 us) or took 86 registers (1 block: 12.3 us) against 64
        # registers and no spill without it (11.0 us; docs/GPU.md)
        self.min_blocks = (0 if self.variant == "tensor" else 1) if min_blocks is None else int(min_blocks)
        self.fetch_chunks = max(1, min(int(fetch_chunks), 8, self.group_channels))
        if self.variant == "pipelined" and (self.kt < 8 or self.kt % 8):
            raise ValueError(f"the pipelined GWC kernel takes kt a multiple of 8, got {kt}")
        self.thread_rows = _blocks(self.disparities, self.kt)
        self.tile_step = 16 if self.variant == "tensor" else 8
        if max_tile is None and self.variant == "tensor":
            max_tile = GWC_TENSOR_TILE
        elif max_tile is not None and int(max_tile) < self.tile_step:
            raise ValueError(f"the {self.variant} GWC kernel's tiles are multiples of {self.tile_step} columns, "
                             f"got max_tile {max_tile}")
        widest = self._widest_tile()
        self.max_tile = widest if max_tile is None else min(int(max_tile) // self.tile_step * self.tile_step, widest)
        if self.max_tile < self.tile_step:
            raise ModelError(f"the GWC kernel's tiles need {self.shared_bytes(self.tile_step)} bytes of shared "
                             f"memory for {group_channels} channels per group and {disparities} disparities "
                             f"(limit {STATIC_SHARED_LIMIT})")
        self._kernels: dict[int, Kernel] = {}

    @property
    def source(self) -> str:
        return "gwc_tensor.cu" if self.variant == "tensor" else "gwc.cu"

    def shared_bytes(self, tile: int) -> int:
        """Static shared memory of one block, as the .cu declares it."""
        if self.variant == "tensor":  # the half operands (channels padded to k16 steps), reused for the band rows
            channels = _blocks(self.group_channels, 16) * 16
            right = tile + _blocks(self.disparities, 8) * 8
            operands = 2 * channels * (_odd_chunks(tile, 8) + _odd_chunks(right, 8))
            size = 2 if self.out_half else 4
            return max(operands, self.disparities * _odd_chunks(tile, 16 // size) * size)
        # two stages of halves: the left tile and the right columns it needs (rows padded to whole 8-column chunks)
        right = (tile + self.thread_rows * self.kt + 7) // 8 * 8
        return 4 * self.group_channels * (tile + right)

    def threads(self, tile: int) -> int:
        return 2 * tile if self.variant == "tensor" else tile // GWC_XT * self.thread_rows

    def block(self, tile: int) -> tuple[int, int, int]:
        if self.variant == "tensor":
            return self.threads(tile), 1, 1
        return tile // GWC_XT, self.thread_rows, 1

    def _widest_tile(self) -> int:
        tile, step = 0, self.tile_step
        while self.shared_bytes(tile + step) <= STATIC_SHARED_LIMIT and self.threads(tile + step) <= 1024:
            tile += step
        return tile

    def tile_for(self, width: int) -> int:
        """Columns per tile for a row of `width`: equal tiles, each at most max_tile, a multiple of tile_step."""
        tiles = _blocks(width, self.max_tile)
        return _blocks(_blocks(width, tiles), self.tile_step) * self.tile_step

    def defines(self, tile: int) -> dict[str, int]:
        common = {"GROUP_CHANNELS": self.group_channels, "DISPARITIES": self.disparities, "OUT_HALF": self.out_half,
                  "TILE_X": tile, "MIN_BLOCKS": self.min_blocks}
        if self.variant == "tensor":
            return common
        return {**common, "KT": self.kt, "FETCH_CHUNKS": self.fetch_chunks}

    def kernel(self, tile: int) -> Kernel:
        if tile not in self._kernels:
            capability = cuda.primary_context(self.device_id).compute_capability
            if self.variant == "tensor" and capability < TENSOR_CAPABILITY:
                raise BackendUnavailableError(
                    f"the tensor GWC kernel needs compute capability 8.0+ (this GPU has "
                    f"{capability[0]}.{capability[1]}); unset {GWC_KERNEL_ENV} or set it to 'pipelined'")
            self._kernels[tile] = load_module(self.source, self.defines(tile), self.device_id).kernel("gwc_volume")
        return self._kernels[tile]

    def grid(self, tile: int, groups: int, height: int, width: int) -> tuple[int, ...]:
        if self.variant == "tensor":
            return _blocks(width, tile), height, groups
        items = _blocks(width, tile) * height * groups
        fit = self.kernel(tile).resident_blocks(self.threads(tile))
        per_sm = max(1, fit if self.blocks_per_sm is None else min(int(self.blocks_per_sm), fit))
        sms = cuda.primary_context(self.device_id).attribute("MULTIPROCESSOR_COUNT")
        blocks = min(items, sms * per_sm, self.max_blocks or items)  # max_blocks: tests make blocks loop
        return (max(1, blocks),)

    def prepare(self, left, right, volume, groups: int, height: int, width: int) -> Launch:
        for name, buf in (("left", left), ("right", right), ("volume", volume)):
            if int(getattr(buf, "ptr", buf)) % 16:  # the kernels' 16-byte copies
                raise CudaError(f"the GWC kernel needs its {name} buffer 16-byte aligned")
        tile = self.tile_for(width)
        return self.kernel(tile).prepare(self.grid(tile, groups, height, width), self.block(tile),
                                         (left, right, volume, groups, height, width))

    def describe(self, width: int) -> str:
        """The variant and its shape, for reports."""
        tile = self.tile_for(width)
        if self.variant == "tensor":
            return f"tensor (mma.sync m16n8k16, float32 accumulation), tile {tile}"
        return f"pipelined {GWC_XT}x{self.kt}, tile {tile}, {self.fetch_chunks} copy groups per item"


def default_gwc_variant(device_id: int = 0) -> str:
    """'tensor' where the tensor cores take mma.sync m16n8k16 (compute capability 8.0+), else 'pipelined'."""
    return "tensor" if cuda.primary_context(device_id).compute_capability >= TENSOR_CAPABILITY else "pipelined"


def _odd_chunks(count: int, per: int) -> int:
    """count rounded up to whole chunks of `per`, an odd number of them (gwc_tensor.cu's ODD_CHUNKS)."""
    chunks = _blocks(count, per)
    return (chunks if chunks % 2 else chunks + 1) * per


class DisparityResizeKernel:
    """Engine disparity -> camera size (value-scaled) minus the principal-point offset (kernels/glue.cu)."""

    def __init__(self, in_dtype, device_id: int = 0):
        module = load_module("glue.cu", {"IN_HALF": _half_flag(in_dtype, "disparity")}, device_id)
        self.kernel = module.kernel("resize_disparity")

    def prepare(self, src, src_hw: tuple[int, int], dst, dst_hw: tuple[int, int], offset: float | None,
                xtab=0, ytab=0) -> Launch:
        resize = tuple(src_hw) != tuple(dst_hw)
        if resize and (not xtab or not ytab):
            raise CudaError("the disparity resize needs tables when the camera and engine sizes differ")
        scale = dst_hw[1] / src_hw[1]  # values scale with the width, as images.disparity_to_camera
        h, w = dst_hw
        args = (src, src_hw[0], src_hw[1], xtab if resize else 0, ytab if resize else 0, int(resize), scale,
                int(bool(offset)), offset or 0.0, dst, h, w)
        return self.kernel.prepare((_blocks(w, BLOCK_2D[0]), _blocks(h, BLOCK_2D[1])), BLOCK_2D, args)


class CastKernel:
    """float32 <-> float16 element casts (numpy astype semantics) (kernels/glue.cu)."""

    MAX_BLOCKS = 4096

    def __init__(self, src_dtype, dst_dtype, device_id: int = 0):
        src_dtype, dst_dtype = np.dtype(src_dtype), np.dtype(dst_dtype)
        names = {(np.dtype(np.float32), np.dtype(np.float16)): "cast_f32_to_f16",
                 (np.dtype(np.float16), np.dtype(np.float32)): "cast_f16_to_f32"}
        if (src_dtype, dst_dtype) not in names:
            raise ModelError(f"no cast kernel from {src_dtype} to {dst_dtype}")
        self.kernel = load_module("glue.cu", {"IN_HALF": 0}, device_id).kernel(names[(src_dtype, dst_dtype)])

    def prepare(self, src, dst, count: int) -> Launch:
        blocks = max(1, min(_blocks(count, BLOCK_1D[0]), self.MAX_BLOCKS))
        return self.kernel.prepare((blocks,), BLOCK_1D, (src, dst, count))


class DepthPointsKernels:
    """REP 118 depth and the organised coloured cloud, the float32 steps of depth.py (kernels/depth_points.cu)."""

    def __init__(self, device_id: int = 0):
        module = load_module("depth_points.cu", None, device_id)
        self.depth = module.kernel("depth_image")
        self.points = module.kernel("point_cloud")

    def prepare_depth(self, disparity, count: int, focal_baseline: float, min_disparity: float, min_depth: float,
                      max_depth: float, depth) -> Launch:
        return self.depth.prepare((_blocks(count, BLOCK_1D[0]),), BLOCK_1D,
                                  (disparity, count, focal_baseline, min_disparity, min_depth, max_depth, depth))

    def prepare_points(self, depth, hw: tuple[int, int], image, step: int, encoding: str, stride: int,
                       cx: float, cy: float, fx: float, fy: float, cloud) -> Launch:
        channels, (r, g, b) = channel_offsets(encoding)
        out_h, out_w = points_shape(hw, stride)
        args = (depth, hw[0], hw[1], image, step, channels, r, g, b, stride, cx, cy, fx, fy, cloud, out_h, out_w)
        return self.points.prepare((_blocks(out_w, BLOCK_2D[0]), _blocks(out_h, BLOCK_2D[1])), BLOCK_2D, args)


def points_shape(hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """(ceil(H/s), ceil(W/s)): the organised cloud's size, as depth.point_cloud's slicing gives."""
    return _blocks(hw[0], stride), _blocks(hw[1], stride)


def norm_eps_literal() -> str:
    """NORM_EPS as a C float literal that rounds to np.float32(NORM_EPS)."""
    return re.sub(r"[^0-9eE.+-]", "", repr(float(np.float32(NORM_EPS)))) + "f"
