// Shared device helpers for flashstereo_ros kernels (NVRTC, no CUDA headers needed).
// Half precision is carried as unsigned short and converted with PTX: cuda_fp16.h is not reliably
// available to NVRTC, and cvt.rn is exactly numpy's float32 -> float16 rounding (nearest, ties to even).
#pragma once

typedef unsigned short half_bits;

__device__ __forceinline__ half_bits f32_to_f16(float f) {
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float f16_to_f32(half_bits h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Same test as numpy's isfinite, independent of fast-math flags: exponent bits not all ones.
__device__ __forceinline__ bool is_finite_f32(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

__device__ __forceinline__ float load_f32(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float load_f32(const half_bits* p, size_t i) { return f16_to_f32(p[i]); }
__device__ __forceinline__ void store_f32(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(half_bits* p, size_t i, float v) { p[i] = f32_to_f16(v); }

// ---- asynchronous copies (cp.async, sm_80+; plain loads and stores before)
// (an intrinsic, not asm, so the compiler folds a stage's offsets into one 32-bit shared address)
__device__ __forceinline__ unsigned shared_address(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// 16 bytes global -> shared without passing through registers (sm_80+ cp.async), or 16 zero bytes when
// !valid (then nothing is read)
__device__ __forceinline__ void copy16(half_bits* dst, const half_bits* src, bool valid) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
#else
    *reinterpret_cast<uint4*>(dst) = valid ? *reinterpret_cast<const uint4*>(src) : make_uint4(0u, 0u, 0u, 0u);
#endif
}

__device__ __forceinline__ void copies_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// every copy this thread started has landed (then a barrier makes them visible to the block)
__device__ __forceinline__ void copies_wait_all() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// A linear-resize table of n destination samples, as built by kernels.linear_resize_table():
// words [0,n) first source index, [n,2n) second source index, [2n,3n) weight of the first (float bits),
// [3n,4n) weight of the second. Weights and clamping follow cv2.INTER_LINEAR (half-pixel centres).
struct ResizeTap {
    int i0, i1;
    float w0, w1;
};

__device__ __forceinline__ ResizeTap resize_tap(const int* table, int n, int i) {
    ResizeTap t;
    t.i0 = table[i];
    t.i1 = table[n + i];
    t.w0 = __int_as_float(table[2 * n + i]);
    t.w1 = __int_as_float(table[3 * n + i]);
    return t;
}

// w0*a + w1*b, rounded after each operation (no FMA), the order cv2's scalar resize uses.
__device__ __forceinline__ float lerp2(float a, float w0, float b, float w1) {
    return __fadd_rn(__fmul_rn(a, w0), __fmul_rn(b, w1));
}
