// gwc_volume: group-wise correlation cost volume from the normalised half features.
//   left, right  (1,C,H,W) half bits, C = groups * GROUP_CHANNELS
//   vol          (1,G,D,H,W) OUT_T = half bits (OUT_HALF=1) or float (OUT_HALF=0), D = DISPARITIES
//   vol[g,d,y,x] = sum_c L[g,c,y,x] * R[g,c,y,x-d] for x >= d, else +0
// The sum is float32 in channel order starting with channel 0's product; each product of two halves is
// exact in float32, so fmaf(l, r, acc) rounds exactly like acc + l*r: bit-identical to gwc.gwc_volume.
//
// Work item = TILE_X columns of one row y of one group g (the host picks TILE_X: a whole 1/4-resolution
// row when two stages of tiles fit the 48 KB of static shared memory, so no right column is loaded twice).
// An item needs the left tile and the right columns [x0 - DPAD, x0 + TILE_X). Each thread owns XT
// consecutive x and KT consecutive d: per channel it reads XT left and XT+KT-1 right values from shared
// memory for XT*KT multiply-adds held in registers, and finally writes XT consecutive x per d with one
// vector store per d (coalesced across the warp).
//
// A persistent grid (the host launches as many blocks per SM as fit); each block
// walks the items blockIdx.x, blockIdx.x + gridDim.x, ... and fetches the next item's tiles with cp.async
// (16-byte copies of halves straight into shared memory, zero-filled outside the image) into the second
// of two stages while it computes the current one, so loads, arithmetic and the stores of the previous
// item overlap. An item's fetch is up to FETCH_CHUNKS copy groups of consecutive channels; the arithmetic
// of each range starts when its group has landed: a block's first item, which nothing else overlaps,
// then costs about one range's fetch instead of the whole item's. Tiles stay half in shared memory and
// are widened to float as they are read. XT = 8, KT a multiple of 8 (16-byte shared loads).
// Launch: block (TILE_X/XT, ceil(D/KT)), grid (blocks). Measurements and the reasoning: docs/GPU.md
// (an earlier one-block-per-item form with float tiles is in the history, commit 747551c).
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
#ifndef TILE_X
#define TILE_X 64  // columns per block (the host passes its choice)
#endif
#define XT 8  // columns per thread: 16-byte loads and stores of halves
#ifndef KT
#define KT 16  // disparities per thread
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 1  // __launch_bounds__ minimum resident blocks (caps registers when > 1)
#endif
#ifndef FETCH_CHUNKS
#define FETCH_CHUNKS 4  // copy groups (channel ranges) per item in the pipelined kernel, 1..8
#endif
#if FETCH_CHUNKS < 1 || FETCH_CHUNKS > 8 || FETCH_CHUNKS > GROUP_CHANNELS
#error "FETCH_CHUNKS must be 1..8 and at most GROUP_CHANNELS"
#endif
#if KT % 8 != 0 || TILE_X % 8 != 0
#error "KT and TILE_X must be multiples of 8"
#endif

#define TX (TILE_X / XT)                           // thread columns
#define TD ((DISPARITIES + KT - 1) / KT)           // thread rows
#define THREADS (TX * TD)
#define DPAD (TD * KT)                             // disparities covered, >= DISPARITIES
#define RCOLS (TILE_X + DPAD)                      // right columns needed
#define RSTRIDE ((RCOLS + 7) & ~7)                 // right row length in shared memory (whole 8-column chunks)

#if OUT_HALF
typedef half_bits out_t;
#else
typedef float out_t;
#endif

// two floats -> two halves in one word (lo in the low half), each rounded to nearest even like cvt.rn.f16.f32
__device__ __forceinline__ unsigned pack_f16x2(float lo, float hi) {
#if __CUDA_ARCH__ >= 800
    unsigned w;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));  // first source -> upper half
    return w;
#else
    return (unsigned)f32_to_f16(lo) | ((unsigned)f32_to_f16(hi) << 16);
#endif
}

// XT = 8 consecutive outputs at an aligned address (16 bytes of halves; floats in float4s)
__device__ __forceinline__ void store_row(out_t* p, const float* v) {
#if OUT_HALF
    unsigned w[XT / 2];
#pragma unroll
    for (int i = 0; i < XT / 2; ++i) w[i] = pack_f16x2(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
#else
#pragma unroll
    for (int i = 0; i < XT; i += 4) *reinterpret_cast<float4*>(p + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
#endif
}

__device__ __forceinline__ float4 halves_to_float4(unsigned a, unsigned b) {
    return make_float4(f16_to_f32((half_bits)(a & 0xffffu)), f16_to_f32((half_bits)(a >> 16)),
                       f16_to_f32((half_bits)(b & 0xffffu)), f16_to_f32((half_bits)(b >> 16)));
}


// The thread's results for row y of group g, columns [xb, xb + XT), disparities [d0, d0 + KT) (those < D):
// +0 where x < d; one vector store per d when the row allows it. xb < width. The layout test is made once,
// not per d: the per-d code is then only the masking, the packing and the store.
__device__ __forceinline__ void store_outputs(out_t* __restrict__ vol, const float (&acc)[XT][KT], int g, int y,
                                              int xb, int d0, int width, size_t plane) {
    out_t* out = vol + ((size_t)g * DISPARITIES + d0) * plane + (size_t)y * width + xb;
    const int t = d0 - xb;  // column i at disparity d0 + k is x < d, i.e. +0, when i - k < t
    if ((width % (OUT_HALF ? XT : 4)) == 0 && xb + XT <= width) {
#pragma unroll
        for (int k = 0; k < KT; ++k) {
            if (DPAD != DISPARITIES && d0 + k >= DISPARITIES) break;
            float v[XT];
#pragma unroll
            for (int i = 0; i < XT; ++i) v[i] = i - k >= t ? acc[i][k] : 0.0f;
            store_row(out + k * plane, v);
        }
    } else {
#pragma unroll
        for (int k = 0; k < KT; ++k) {
            if (DPAD != DISPARITIES && d0 + k >= DISPARITIES) break;
#pragma unroll
            for (int i = 0; i < XT; ++i)
                if (xb + i < width) store_f32(out + k * plane, i, i - k >= t ? acc[i][k] : 0.0f);
        }
    }
}

#define CSTRIDE (TILE_X + RSTRIDE)                   // halves per channel in a stage: its left row, then its right row
#define STAGE (GROUP_CHANNELS * CSTRIDE)
#define NR8 ((XT + KT) / 8)                          // 16-byte right loads per channel (r[0] unused)
#define CHUNK_CHANNELS ((GROUP_CHANNELS + FETCH_CHUNKS - 1) / FETCH_CHUNKS)  // channels per copy group

// every copy group of this thread but the `pending` most recently committed ones has landed (the
// instruction takes an immediate, hence the switch; pending < 2 * FETCH_CHUNKS <= 16)
__device__ __forceinline__ void copies_wait(int pending) {
#if __CUDA_ARCH__ >= 800
#define FS_WAIT(n) \
    case n:        \
        asm volatile("cp.async.wait_group " #n ";" ::: "memory"); \
        break;
    switch (pending) {
        FS_WAIT(0) FS_WAIT(1) FS_WAIT(2) FS_WAIT(3) FS_WAIT(4) FS_WAIT(5) FS_WAIT(6) FS_WAIT(7)
        FS_WAIT(8) FS_WAIT(9) FS_WAIT(10) FS_WAIT(11) FS_WAIT(12) FS_WAIT(13) FS_WAIT(14) FS_WAIT(15)
    }
#undef FS_WAIT
#endif
}

struct Item {
    int x0, y, g;
};

__device__ __forceinline__ Item item_at(int item, int tiles_x, int height) {
    Item it;
    const int per_group = tiles_x * height;
    it.g = item / per_group;
    const int rest = item - it.g * per_group;
    it.y = rest / tiles_x;
    it.x0 = (rest - it.y * tiles_x) * TILE_X;
    return it;
}

// Start fetching channels [c0, c1) of an item's tiles into a stage: per channel (CSTRIDE halves apart) the
// left columns [x0, x0 + TILE_X), then the right columns [x0 - DPAD, x0 - DPAD + RSTRIDE), halves, zero
// outside the image. When W % 8 == 0, 16-byte asynchronous copies: a thread takes the same chunk q of a
// channel's (left, right) row in every channel of the range, so its source, destination and validity are
// worked out once per call and each channel costs a pointer step and the copy (about 3 instructions,
// against about 40 when the index was divided per chunk: docs/GPU.md). Else element by element (synchronous).
// The barrier before the item's arithmetic makes either visible to the whole block.
__device__ __forceinline__ void fetch(half_bits* stage, const half_bits* __restrict__ left,
                                      const half_bits* __restrict__ right, Item it, int width, size_t plane,
                                      int tid, int c0, int c1) {
    const size_t row = (size_t)it.g * GROUP_CHANNELS * plane + (size_t)it.y * width;
    const int rstart = it.x0 - DPAD - TILE_X;  // stage column j >= TILE_X holds right column rstart + j
    if ((width & 7) == 0) {
        constexpr int CH = CSTRIDE / 8;  // 16-byte chunks per channel; chunk q sits at stage column 8q
#pragma unroll
        for (int q0 = 0; q0 < CH; q0 += THREADS) {
            const int q = q0 + tid;
            if (q >= CH) break;
            const bool is_left = q < TILE_X / 8;
            const int x = (is_left ? it.x0 : rstart) + 8 * q;
            const bool valid = x >= 0 && x < width;
            const half_bits* src = (is_left ? left : right) + row + (valid ? x : 0);
            for (int c = c0; c < c1; ++c) copy16(stage + c * CSTRIDE + 8 * q, src + c * plane, valid);
        }
    } else {
        for (int i = c0 * CSTRIDE + tid; i < c1 * CSTRIDE; i += THREADS) {
            const int c = i / CSTRIDE, j = i - c * CSTRIDE;
            const bool is_left = j < TILE_X;
            const int x = (is_left ? it.x0 : rstart) + j;
            stage[i] = (x >= 0 && x < width) ? (is_left ? left : right)[row + (size_t)c * plane + x] : (half_bits)0;
        }
    }
}

// Fetch a whole item as copy groups of CHUNK_CHANNELS channels, committed in channel order.
__device__ __forceinline__ void fetch_item(half_bits* stage, const half_bits* __restrict__ left,
                                           const half_bits* __restrict__ right, Item it, int width,
                                           size_t plane, int tid) {
#pragma unroll 1
    for (int c0 = 0; c0 < GROUP_CHANNELS; c0 += CHUNK_CHANNELS) {
        fetch(stage, left, right, it, width, plane, tid, c0, min(c0 + CHUNK_CHANNELS, GROUP_CHANNELS));
        copies_commit();
    }
}

// 8 halves (one 16-byte word) -> 8 floats
__device__ __forceinline__ void widen8(uint4 w, float* f) {
    const float4 a = halves_to_float4(w.x, w.y), b = halves_to_float4(w.z, w.w);
    f[0] = a.x;
    f[1] = a.y;
    f[2] = a.z;
    f[3] = a.w;
    f[4] = b.x;
    f[5] = b.y;
    f[6] = b.z;
    f[7] = b.w;
}

// one channel's operands of a thread: XT left values and XT+KT right values (r[0] unused), widened
__device__ __forceinline__ void load_operands(const half_bits* lrow, const half_bits* rrow, float* l, float* r) {
    widen8(*reinterpret_cast<const uint4*>(lrow), l);
#pragma unroll
    for (int q = 0; q < NR8; ++q) widen8(*reinterpret_cast<const uint4*>(rrow + 8 * q), r + 8 * q);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
gwc_volume(const half_bits* __restrict__ left, const half_bits* __restrict__ right, out_t* __restrict__ vol,
           int groups, int height, int width) {
    __shared__ __align__(16) half_bits stages[2][STAGE];
    const int tiles_x = (width + TILE_X - 1) / TILE_X;
    const int items = tiles_x * height * groups;
    const size_t plane = (size_t)height * width;
    const int tid = threadIdx.y * TX + threadIdx.x;
    const int lx = threadIdx.x * XT;     // first local column of this thread
    const int d0 = threadIdx.y * KT;     // first disparity of this thread
    const int jb = lx - d0 + DPAD - KT;  // r[m] = right stage column jb + m = R at column x0+lx-d0-KT+m

    int item = blockIdx.x;
    if (item >= items) return;
    Item it = item_at(item, tiles_x, height);  // the current item's place, worked out once when fetched
    fetch_item(stages[0], left, right, it, width, plane, tid);
    constexpr int GROUPS = (GROUP_CHANNELS + CHUNK_CHANNELS - 1) / CHUNK_CHANNELS;  // copy groups per item
    for (int s = 0; item < items; s ^= 1, item += gridDim.x) {
        const int next = item + gridDim.x;
        Item next_it = it;
        if (next < items) {
            next_it = item_at(next, tiles_x, height);
            fetch_item(stages[s ^ 1], left, right, next_it, width, plane, tid);
        } else {
#pragma unroll 1
            for (int g = 0; g < GROUPS; ++g) copies_commit();  // empty groups keep the count below uniform
        }

        const half_bits* lrow = stages[s] + lx;
        const half_bits* rrow = stages[s] + TILE_X + jb;
        float acc[XT][KT];
        float l[XT], r[XT + KT];
        // channel range 0: this item's first group has landed (its later groups and the next item's may not)
        copies_wait(2 * GROUPS - 1);
        __syncthreads();  // ... for every thread's copies
        load_operands(lrow, rrow, l, r);
#pragma unroll
        for (int i = 0; i < XT; ++i)
#pragma unroll
            for (int k = 0; k < KT; ++k) acc[i][k] = l[i] * r[KT + i - k];  // channel 0 starts the sum
        int c = 1;
#pragma unroll 1
        for (int g = 0; g < GROUPS; ++g) {
            if (g > 0) {
                copies_wait(2 * GROUPS - 1 - g);
                __syncthreads();
            }
            const int c1 = min((g + 1) * CHUNK_CHANNELS, GROUP_CHANNELS);
#pragma unroll 2
            for (; c < c1; ++c) {
                load_operands(lrow + c * CSTRIDE, rrow + c * CSTRIDE, l, r);
#pragma unroll
                for (int i = 0; i < XT; ++i)  // column x0+lx+i, disparity d0+k reads R at x-d: r[KT+i-k]
#pragma unroll
                    for (int k = 0; k < KT; ++k) acc[i][k] = fmaf(l[i], r[KT + i - k], acc[i][k]);
            }
        }
        const int xb = it.x0 + lx;
        if (xb < width) store_outputs(vol, acc, it.g, it.y, xb, d0, width, plane);
        it = next_it;
        __syncthreads();  // every thread is done with stages[s] before the next iteration refills it
    }
}
