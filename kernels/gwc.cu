// gwc_volume: group-wise correlation cost volume from the normalised half features.
//   left, right  (1,C,H,W) half bits, C = groups * GROUP_CHANNELS
//   vol          (1,G,D,H,W) OUT_T = half bits (OUT_HALF=1) or float (OUT_HALF=0), D = DISPARITIES
//   vol[g,d,y,x] = sum_c L[g,c,y,x] * R[g,c,y,x-d] for x >= d, else +0
// The sum is float32 in channel order starting with channel 0's product; each product of two halves is
// exact in float32, so fmaf(l, r, acc) rounds exactly like acc + l*r: bit-identical to gwc.gwc_volume.
// Block = TILE_X columns of one row y of one group g. The left tile and the right columns it needs,
// [x0 - DPAD, x0 + TILE_X), sit in shared memory as float (8-byte global loads when W % 4 == 0).
// Each thread owns XT consecutive x and KT consecutive d: per channel it reads XT left and XT+KT-1 right
// values (float4 shared loads) for XT*KT multiply-adds held in registers, then writes XT consecutive x
// per d with one vector store (coalesced across the warp).
// Launch: block (TILE_X/XT, ceil(D/KT)), grid (ceil(W/TILE_X), H, G).
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

#define TILE_X 64                                  // columns per block
#define XT 4                                       // columns per thread
#define KT 8                                       // disparities per thread
#define TX (TILE_X / XT)                           // thread columns
#define TD ((DISPARITIES + KT - 1) / KT)           // thread rows
#define DPAD (TD * KT)                             // disparities covered, >= DISPARITIES
#define RCOLS (TILE_X + DPAD)                      // right columns in shared memory

#if OUT_HALF
typedef half_bits out_t;
__device__ __forceinline__ void store4(half_bits* p, const float* v) {
    uint2 w;
    w.x = (unsigned)f32_to_f16(v[0]) | ((unsigned)f32_to_f16(v[1]) << 16);
    w.y = (unsigned)f32_to_f16(v[2]) | ((unsigned)f32_to_f16(v[3]) << 16);
    *reinterpret_cast<uint2*>(p) = w;
}
#else
typedef float out_t;
__device__ __forceinline__ void store4(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
#endif

// four halves at an 8-byte aligned address -> float4
__device__ __forceinline__ float4 load4(const half_bits* p) {
    const uint2 w = *reinterpret_cast<const uint2*>(p);
    return make_float4(f16_to_f32((half_bits)(w.x & 0xffffu)), f16_to_f32((half_bits)(w.x >> 16)),
                       f16_to_f32((half_bits)(w.y & 0xffffu)), f16_to_f32((half_bits)(w.y >> 16)));
}

// one channel's operands of a thread: XT left values and 12 right values (r[0] unused) from shared memory
__device__ __forceinline__ void load_operands(const float* left_row, const float* right_row, int lx, int jb,
                                              float* l, float* r) {
    const float4 lv = *reinterpret_cast<const float4*>(left_row + lx);
    l[0] = lv.x;
    l[1] = lv.y;
    l[2] = lv.z;
    l[3] = lv.w;
#pragma unroll
    for (int q = 0; q < 3; ++q) {
        const float4 rv = *reinterpret_cast<const float4*>(right_row + jb + 4 * q);
        r[4 * q] = rv.x;
        r[4 * q + 1] = rv.y;
        r[4 * q + 2] = rv.z;
        r[4 * q + 3] = rv.w;
    }
}

extern "C" __global__ void __launch_bounds__(TX * TD)
gwc_volume(const half_bits* __restrict__ left, const half_bits* __restrict__ right, out_t* __restrict__ vol,
           int height, int width) {
    __shared__ __align__(16) float tile_left[GROUP_CHANNELS][TILE_X];
    __shared__ __align__(16) float tile_right[GROUP_CHANNELS][RCOLS];
    const int x0 = blockIdx.x * TILE_X, y = blockIdx.y, g = blockIdx.z;
    const size_t plane = (size_t)height * width;
    const size_t row = (size_t)g * GROUP_CHANNELS * plane + (size_t)y * width;
    const int tid = threadIdx.y * TX + threadIdx.x;
    const int threads = TX * TD;
    const int rstart = x0 - DPAD;
    const bool aligned = (width & 3) == 0;  // then rows, tiles and chunks of 4 columns are 8-byte aligned

    if (aligned) {
        for (int i = tid; i < GROUP_CHANNELS * (TILE_X / 4); i += threads) {
            const int c = i / (TILE_X / 4), q = 4 * (i - c * (TILE_X / 4)), x = x0 + q;
            const float4 v = x < width ? load4(left + row + (size_t)c * plane + x) : make_float4(0.f, 0.f, 0.f, 0.f);
            *reinterpret_cast<float4*>(&tile_left[c][q]) = v;
        }
        for (int i = tid; i < GROUP_CHANNELS * (RCOLS / 4); i += threads) {
            const int c = i / (RCOLS / 4), q = 4 * (i - c * (RCOLS / 4)), x = rstart + q;
            const float4 v = (x >= 0 && x < width) ? load4(right + row + (size_t)c * plane + x)
                                                   : make_float4(0.f, 0.f, 0.f, 0.f);
            *reinterpret_cast<float4*>(&tile_right[c][q]) = v;
        }
    } else {
        for (int i = tid; i < GROUP_CHANNELS * TILE_X; i += threads) {
            const int c = i / TILE_X, j = i - c * TILE_X, x = x0 + j;
            tile_left[c][j] = x < width ? f16_to_f32(left[row + (size_t)c * plane + x]) : 0.0f;
        }
        for (int i = tid; i < GROUP_CHANNELS * RCOLS; i += threads) {
            const int c = i / RCOLS, j = i - c * RCOLS, x = rstart + j;
            tile_right[c][j] = (x >= 0 && x < width) ? f16_to_f32(right[row + (size_t)c * plane + x]) : 0.0f;
        }
    }
    __syncthreads();

    const int lx = threadIdx.x * XT;           // first local column of this thread
    const int d0 = threadIdx.y * KT;           // first disparity of this thread
    const int jb = lx - d0 + DPAD - KT;        // r[m] = tile_right[c][jb + m] is R at column x0+lx-d0-KT+m
    float acc[XT][KT];
    float l[XT], r[12];
    load_operands(tile_left[0], tile_right[0], lx, jb, l, r);
#pragma unroll
    for (int i = 0; i < XT; ++i)
#pragma unroll
        for (int k = 0; k < KT; ++k) acc[i][k] = l[i] * r[KT + i - k];  // channel 0 starts the sum
#pragma unroll 2
    for (int c = 1; c < GROUP_CHANNELS; ++c) {
        load_operands(tile_left[c], tile_right[c], lx, jb, l, r);
#pragma unroll
        for (int i = 0; i < XT; ++i)  // column x0+lx+i, disparity d0+k reads R at x-d: r[KT+i-k]
#pragma unroll
            for (int k = 0; k < KT; ++k) acc[i][k] = fmaf(l[i], r[KT + i - k], acc[i][k]);
    }

    const int xb = x0 + lx;
    if (xb >= width) return;
    const bool vector_store = aligned && xb + XT <= width;
#pragma unroll
    for (int k = 0; k < KT; ++k) {
        const int d = d0 + k;
        if (d >= DISPARITIES) break;
        out_t* out = vol + ((size_t)g * DISPARITIES + d) * plane + (size_t)y * width + xb;
        float v[XT];
#pragma unroll
        for (int i = 0; i < XT; ++i) v[i] = xb + i >= d ? acc[i][k] : 0.0f;
        if (vector_store) {
            store4(out, v);
        } else {
#pragma unroll
            for (int i = 0; i < XT; ++i)
                if (xb + i < width) store_f32(out, i, v[i]);
        }
    }
}
