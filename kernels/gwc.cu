// gwc_volume: group-wise correlation cost volume from the normalised half features.
//   left, right  (1,C,H,W) half bits, C = groups * GROUP_CHANNELS
//   vol          (1,G,D,H,W) OUT_T = half bits (OUT_HALF=1) or float (OUT_HALF=0), D = DISPARITIES
//   vol[g,d,y,x] = sum_c L[g,c,y,x] * R[g,c,y,x-d] for x >= d, else +0
// The sum is float32 in channel order starting with channel 0's product; each product of two halves is
// exact in float32, so fmaf(l, r, acc) rounds exactly like acc + l*r: bit-identical to gwc.gwc_volume.
// Block = one row y of one group g and TILE_X columns; the left tile and the right columns it needs
// ([x0-D+1, x0+TILE_X)) sit in shared memory as float; D_SLICES thread rows split the disparities, each
// thread keeps its left vector in registers and computes DPT independent sums (ILP), writes coalesced in x.
// Launch: block (TILE_X, D_SLICES), grid (ceil(W/TILE_X), H, G).
#include "fs_common.cuh"

#ifndef GROUP_CHANNELS
#error "GROUP_CHANNELS (channels per group) must be defined"
#endif
#ifndef DISPARITIES
#error "DISPARITIES (volume disparity planes) must be defined"
#endif
#ifndef OUT_HALF
#define OUT_HALF 1
#endif
#if OUT_HALF
typedef half_bits out_t;
#else
typedef float out_t;
#endif

#define TILE_X 32
#define D_SLICES 8
#define DPT ((DISPARITIES + D_SLICES - 1) / D_SLICES)
#define RIGHT_COLS (TILE_X + DISPARITIES - 1)

extern "C" __global__ void __launch_bounds__(TILE_X * D_SLICES)
gwc_volume(const half_bits* __restrict__ left, const half_bits* __restrict__ right, out_t* __restrict__ vol,
           int height, int width) {
    __shared__ float tile_left[GROUP_CHANNELS][TILE_X];
    __shared__ float tile_right[GROUP_CHANNELS][RIGHT_COLS];
    const int x0 = blockIdx.x * TILE_X, y = blockIdx.y, g = blockIdx.z;
    const size_t plane = (size_t)height * width;
    const size_t row = (size_t)g * GROUP_CHANNELS * plane + (size_t)y * width;
    const int tid = threadIdx.y * TILE_X + threadIdx.x;
    const int threads = TILE_X * D_SLICES;
    for (int i = tid; i < GROUP_CHANNELS * TILE_X; i += threads) {
        const int c = i / TILE_X, j = i - c * TILE_X, x = x0 + j;
        tile_left[c][j] = x < width ? f16_to_f32(left[row + (size_t)c * plane + x]) : 0.0f;
    }
    for (int i = tid; i < GROUP_CHANNELS * RIGHT_COLS; i += threads) {
        const int c = i / RIGHT_COLS, j = i - c * RIGHT_COLS, x = x0 - (DISPARITIES - 1) + j;
        tile_right[c][j] = (x >= 0 && x < width) ? f16_to_f32(right[row + (size_t)c * plane + x]) : 0.0f;
    }
    __syncthreads();
    const int x = x0 + threadIdx.x;
    if (x >= width) return;
    float l[GROUP_CHANNELS];
#pragma unroll
    for (int c = 0; c < GROUP_CHANNELS; ++c) l[c] = tile_left[c][threadIdx.x];
    float acc[DPT];
#pragma unroll
    for (int k = 0; k < DPT; ++k) {
        const int d = threadIdx.y + k * D_SLICES;
        const int j = d < DISPARITIES ? threadIdx.x + (DISPARITIES - 1) - d : 0;
        acc[k] = l[0] * tile_right[0][j];
    }
#pragma unroll
    for (int c = 1; c < GROUP_CHANNELS; ++c) {
#pragma unroll
        for (int k = 0; k < DPT; ++k) {
            const int d = threadIdx.y + k * D_SLICES;
            const int j = d < DISPARITIES ? threadIdx.x + (DISPARITIES - 1) - d : 0;
            acc[k] = fmaf(l[c], tile_right[c][j], acc[k]);
        }
    }
    const size_t out_base = (size_t)g * DISPARITIES * plane + (size_t)y * width + x;
#pragma unroll
    for (int k = 0; k < DPT; ++k) {
        const int d = threadIdx.y + k * D_SLICES;
        if (d < DISPARITIES) store_f32(vol, out_base + (size_t)d * plane, x >= d ? acc[k] : 0.0f);
    }
}
