// glue: the small steps around the engines.
// resize_disparity: engine disparity (h,w) IN_T (float or half bits, IN_HALF) -> camera disparity (H,W) float
//   v = src[y,x]                                   when resize == 0
//     = lerp rows(lerp columns(src)) * scale       when resize != 0 (cv2.INTER_LINEAR, then * W/w)
//   v = v - offset                                 when subtract != 0 (published d' = d - (cx_l - cx_r))
//   Launch: block (32, 8), grid (ceil(W/32), ceil(H/8)).
// cast_f32_to_f16 / cast_f16_to_f32: n elements, numpy astype semantics (round to nearest even; exact).
//   Launch: block (256), grid (ceil(n/256)) or fewer blocks: grid-stride loop.
#include "fs_common.cuh"

#ifndef IN_HALF
#define IN_HALF 0
#endif
#if IN_HALF
typedef half_bits in_t;
#else
typedef float in_t;
#endif

extern "C" __global__ void resize_disparity(const in_t* __restrict__ src, int src_h, int src_w,
                                            const int* __restrict__ xtab, const int* __restrict__ ytab,
                                            int resize, float scale, int subtract, float offset,
                                            float* __restrict__ dst, int dst_h, int dst_w) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_w || y >= dst_h) return;
    float v;
    if (!resize) {
        v = load_f32(src, (size_t)y * src_w + x);
    } else {
        const ResizeTap tx = resize_tap(xtab, dst_w, x);
        const ResizeTap ty = resize_tap(ytab, dst_h, y);
        const size_t r0 = (size_t)ty.i0 * src_w, r1 = (size_t)ty.i1 * src_w;
        const float h0 = lerp2(load_f32(src, r0 + tx.i0), tx.w0, load_f32(src, r0 + tx.i1), tx.w1);
        const float h1 = lerp2(load_f32(src, r1 + tx.i0), tx.w0, load_f32(src, r1 + tx.i1), tx.w1);
        v = __fmul_rn(lerp2(h0, ty.w0, h1, ty.w1), scale);
    }
    if (subtract) v = __fsub_rn(v, offset);
    dst[(size_t)y * dst_w + x] = v;
}

extern "C" __global__ void cast_f32_to_f16(const float* __restrict__ src, half_bits* __restrict__ dst,
                                           unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        dst[i] = f32_to_f16(src[i]);
}

extern "C" __global__ void cast_f16_to_f32(const half_bits* __restrict__ src, float* __restrict__ dst,
                                           unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        dst[i] = f16_to_f32(src[i]);
}
