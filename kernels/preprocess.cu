// preprocess: camera image -> feature-engine input.
//   src  uint8, H x W x C (C = channels: 1, 3 or 4), rows `step` bytes apart (ROS Image layout)
//   dst  (1,3,h,w) planar RGB 0..255, OUT_T = float (OUT_HALF=0) or half bits (OUT_HALF=1)
//   dst[c,y,x] = src[y, x, order[c]]                          when resize == 0 (exact: uint8 -> float)
//              = lerp over rows(lerp over columns(src))       when resize != 0, cv2.INTER_LINEAR semantics
//   r_off/g_off/b_off: byte offset of R, G, B inside a pixel (mono: all 0; bgr8: 2,1,0).
//   xtab/ytab: resize tables (fs_common.cuh), unused when resize == 0.
// Launch: block (32, 8), grid (ceil(w/32), ceil(h/8)); one thread per output pixel, all three planes.
#include "fs_common.cuh"

#ifndef OUT_HALF
#define OUT_HALF 0
#endif
#if OUT_HALF
typedef half_bits out_t;
#else
typedef float out_t;
#endif

extern "C" __global__ void preprocess(const unsigned char* __restrict__ src, int src_h, int src_w, int step,
                                      int channels, int r_off, int g_off, int b_off,
                                      const int* __restrict__ xtab, const int* __restrict__ ytab, int resize,
                                      out_t* __restrict__ dst, int dst_h, int dst_w) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_w || y >= dst_h) return;
    const int offsets[3] = {r_off, g_off, b_off};
    const size_t plane = (size_t)dst_h * dst_w;
    const size_t out = (size_t)y * dst_w + x;
    if (!resize) {
        const unsigned char* pixel = src + (size_t)y * step + (size_t)x * channels;
#pragma unroll
        for (int c = 0; c < 3; ++c) store_f32(dst, c * plane + out, (float)pixel[offsets[c]]);
        return;
    }
    const ResizeTap tx = resize_tap(xtab, dst_w, x);
    const ResizeTap ty = resize_tap(ytab, dst_h, y);
    const unsigned char* row0 = src + (size_t)ty.i0 * step;
    const unsigned char* row1 = src + (size_t)ty.i1 * step;
    const size_t c0 = (size_t)tx.i0 * channels, c1 = (size_t)tx.i1 * channels;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const int o = offsets[c];
        const float h0 = lerp2((float)row0[c0 + o], tx.w0, (float)row0[c1 + o], tx.w1);
        const float h1 = lerp2((float)row1[c0 + o], tx.w0, (float)row1[c1 + o], tx.w1);
        store_f32(dst, c * plane + out, lerp2(h0, ty.w0, h1, ty.w1));
    }
}
