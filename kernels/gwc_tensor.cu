// gwc_volume on the tensor cores: the group-wise correlation volume as small matrix products.
//   left, right  (1,C,H,W) half bits, C = groups * GROUP_CHANNELS
//   vol          (1,G,D,H,W) OUT_T = half bits (OUT_HALF=1) or float (OUT_HALF=0), D = DISPARITIES
//   vol[g,d,y,x] = sum_c L[g,c,y,x] * R[g,c,y,x-d] for x >= d, else +0
// For one row y of one group g, the correlations of every left column x with every right column x' are
// the matrix product L^T R over the channels; the volume is its band x - x' in [0, D). One block takes
// TILE_X columns of a row: it copies the left tile and the right columns [x0 - DR, x0 + TILE_X) into shared
// memory (cp.async, zero outside the image and in the channels that pad C to whole k16 steps); each warp
// takes 16 left columns and the NT tiles of 8 right columns that cover its band, and multiplies them with
// mma.sync m16n8k16 (half operands, float32 accumulators; operands by ldmatrix.trans, since the features
// are channel planes); then the block puts the band's values into (d, x) rows in shared memory and writes
// each row with 16-byte stores.
// Numerics: each product of two halves is exact in float32, but the tensor cores add a k16 step's products
// in their own order and rounding, so a sum can differ from gwc.gwc_volume's channel-order float32 sum in
// its last bits: at the stand-in's shape 0.035% of the half values differ, by one or two ulps, and against
// float64 sums the float32 error is no larger than the channel-order sum's (docs/GPU.md).
// Every pipeline on a GPU builds the same kernel, so resident and stock output stay bit-identical.
// Needs sm_80+ (mma.sync m16n8k16). Launch: block (32 * TILE_X / 16), grid (ceil(W / TILE_X), H, G).
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
#define TILE_X 160  // columns per block (the host passes its choice)
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 0  // __launch_bounds__ minimum resident blocks (caps registers; 0: not given)
#endif
#if TILE_X % 16 != 0 || TILE_X > 512
#error "TILE_X must be a multiple of 16, at most 512"
#endif

#if OUT_HALF
typedef half_bits out_t;
#else
typedef float out_t;
#endif

#define KSTEPS ((GROUP_CHANNELS + 15) / 16)  // k16 steps per product
#define KPAD (16 * KSTEPS)                   // channel rows in shared memory (zero beyond GROUP_CHANNELS)
#define DR ((DISPARITIES + 7) / 8 * 8)       // right columns before the tile, whole 8-column chunks
#define NT ((DISPARITIES + 22) / 8)          // n8 tiles per warp: ceil((D + 15) / 8) cover its band
#define BAND (8 * NT - 16)                   // row m of a warp's tile, column n of its n-tile j: d = BAND + m - 8j - n
#define WARPS (TILE_X / 16)                  // a warp per 16 columns
#define THREADS (32 * WARPS)
#define RCOLS (TILE_X + DR)
// Row strides are an odd number of 16-byte chunks: the 8 rows of an ldmatrix, and the lanes' scattered
// stores of the band, then fall in different banks.
#define CHUNKS(n, per) (((n) + (per) - 1) / (per))
#define ODD_CHUNKS(n, per) ((CHUNKS(n, per) + 1 - CHUNKS(n, per) % 2) * (per))
#define LSTRIDE ODD_CHUNKS(TILE_X, 8)        // halves
#define RSTRIDE ODD_CHUNKS(RCOLS, 8)         // halves
#define OSTRIDE ODD_CHUNKS(TILE_X, 16 / (int)sizeof(out_t))
#define INPUT_BYTES (2 * KPAD * (LSTRIDE + RSTRIDE))
#define STAGING_BYTES (DISPARITIES * OSTRIDE * (int)sizeof(out_t))
// the band rows reuse the operands' space
#define SHARED_BYTES (INPUT_BYTES > STAGING_BYTES ? INPUT_BYTES : STAGING_BYTES)

// four 8x8 half matrices, each from 8 rows of 16 bytes (lane i gives row i % 8 of matrix i / 8), transposed
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const half_bits* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}

__device__ __forceinline__ void ldmatrix_x2_trans(unsigned (&r)[4], const half_bits* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(shared_address(row)));
}

// acc += A (16x16, row-major fragment a) * B (16x8, column-major fragment b0 b1), float32 accumulators
__device__ __forceinline__ void mma16816(float (&acc)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The left tile (KPAD rows of LSTRIDE) and the right columns (KPAD rows of RSTRIDE) of row y, group g into
// shared memory; zero outside the image and for channels >= GROUP_CHANNELS. When W % 8 == 0, 16-byte
// asynchronous copies: lane q of each warp takes the row's 16-byte chunk q (left chunks, then right ones)
// and warp w the channel rows w, w + WARPS, ..., so a thread works out its chunk's place once and each
// row costs a pointer step and the copy. Else element by element.
__device__ __forceinline__ void fetch(half_bits* lt, half_bits* rt, const half_bits* __restrict__ left,
                                      const half_bits* __restrict__ right, int g, int y, int x0, int width,
                                      size_t plane, int tid) {
    const size_t row = (size_t)g * GROUP_CHANNELS * plane + (size_t)y * width;
    const int rstart = x0 - DR;
    if ((width & 7) == 0) {
        constexpr int LCH = TILE_X / 8, CH = LCH + RCOLS / 8;  // 16-byte chunks per channel row
        for (int q = tid & 31; q < CH; q += 32) {
            const bool is_left = q < LCH;
            const int j = 8 * (is_left ? q : q - LCH), x = (is_left ? x0 : rstart) + j;
            const bool inside = x >= 0 && x < width;
            const half_bits* src = (is_left ? left : right) + row + (inside ? x : 0);
            half_bits* dst = (is_left ? lt : rt) + j;
            const int stride = is_left ? LSTRIDE : RSTRIDE;
            for (int c = tid >> 5; c < KPAD; c += WARPS) {
                const bool valid = inside && c < GROUP_CHANNELS;
                copy16(dst + c * stride, valid ? src + (size_t)c * plane : src, valid);
            }
        }
    } else {
        constexpr int COLS = TILE_X + RCOLS;
        for (int i = tid; i < KPAD * COLS; i += THREADS) {
            const int c = i / COLS, q = i - c * COLS;
            const bool is_left = q < TILE_X;
            const int j = is_left ? q : q - TILE_X, x = (is_left ? x0 : rstart) + j;
            const bool valid = c < GROUP_CHANNELS && x >= 0 && x < width;
            (is_left ? lt + c * LSTRIDE : rt + c * RSTRIDE)[j] =
                valid ? (is_left ? left : right)[row + (size_t)c * plane + x] : (half_bits)0;
        }
    }
}

__device__ __forceinline__ out_t to_out(float v) {
#if OUT_HALF
    return f32_to_f16(v);
#else
    return v;
#endif
}

// The warp's accumulators into the band rows (d, x) in shared memory: only 0 <= d < D; +0 where x < d
// when MASK (a tile that starts before column D)
template <bool MASK>
__device__ __forceinline__ void put_band(out_t* rows, const float (&acc)[NT][4], int lane, int xm, int x0) {
    const int m = lane >> 2, d = BAND + m - 2 * (lane & 3);  // e = 0, j = 0
    out_t* base = rows + d * OSTRIDE + xm + m;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int step = 8 * (e >> 1) - 8 * j - (e & 1);  // d - (d of e = 0, j = 0); x steps 8 * (e >> 1)
            if ((unsigned)(d + step) < DISPARITIES)
                base[step * OSTRIDE + 8 * (e >> 1)] =
                    to_out(MASK && x0 + xm + m + 8 * (e >> 1) < d + step ? 0.0f : acc[j][e]);
        }
}

#if MIN_BLOCKS > 0
#define GWC_BOUNDS __launch_bounds__(THREADS, MIN_BLOCKS)
#else
#define GWC_BOUNDS __launch_bounds__(THREADS)
#endif
extern "C" __global__ void GWC_BOUNDS
gwc_volume(const half_bits* __restrict__ left, const half_bits* __restrict__ right, out_t* __restrict__ vol,
           int groups, int height, int width) {
    __shared__ __align__(16) unsigned char shared[SHARED_BYTES];
    half_bits* lt = reinterpret_cast<half_bits*>(shared);
    half_bits* rt = lt + KPAD * LSTRIDE;
    out_t* rows = reinterpret_cast<out_t*>(shared);  // the band as (d, x) rows, once the operands are read
    const int x0 = blockIdx.x * TILE_X, y = blockIdx.y, g = blockIdx.z;
    const size_t plane = (size_t)height * width;
    const int tid = threadIdx.x, lane = tid & 31, xm = 16 * (tid >> 5);  // xm: this warp's first column
    fetch(lt, rt, left, right, g, y, x0, width, plane, tid);
    copies_commit();
    copies_wait_all();
    __syncthreads();

    unsigned a[KSTEPS][4];  // this warp's 16 left columns (rows of A), every k step
#pragma unroll
    for (int s = 0; s < KSTEPS; ++s)
        ldmatrix_x4_trans(a[s], lt + (16 * s + (lane & 7) + (lane >> 4) * 8) * LSTRIDE + xm + (lane & 8));
    const half_bits* rcol = rt + xm + DR + 16 - 8 * NT;  // n-tile 0's first right column (>= rt: NT's choice)
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
        for (int s = 0; s < KSTEPS; s += 2) {
            unsigned b[4];
            if (s + 1 < KSTEPS) {  // two k steps: channel rows 16s + lane
                ldmatrix_x4_trans(b, rcol + (16 * s + lane) * RSTRIDE + 8 * j);
                mma16816(acc[j], a[s], b[0], b[1]);
                mma16816(acc[j], a[s + 1], b[2], b[3]);
            } else {
                ldmatrix_x2_trans(b, rcol + (16 * s + (lane & 15)) * RSTRIDE + 8 * j);
                mma16816(acc[j], a[s], b[0], b[1]);
            }
        }
    }
    __syncthreads();  // every warp has its operands: the band rows may overwrite them

    // accumulator e of n-tile j: row m = lane / 4 (+8 for e >= 2), column n = 2 (lane % 4) + e % 2, so
    // d = BAND + m - 8j - n; only a row's first columns (x0 < D) hold values with x < d (+0 there)
    if (x0 < DISPARITIES)
        put_band<true>(rows, acc, lane, xm, x0);
    else
        put_band<false>(rows, acc, lane, xm, x0);
    __syncthreads();

    // thread t copies columns [8 (t % Q), +8) of band rows t / Q, t / Q + 16, ... (THREADS = 16 Q)
    constexpr int Q = TILE_X / 8;
    const int x = 8 * (tid % Q);
    out_t* out = vol + ((size_t)g * DISPARITIES + tid / Q) * plane + (size_t)y * width + x0 + x;
    const out_t* src = rows + (tid / Q) * OSTRIDE + x;
    if ((width & 7) == 0) {
        if (x0 + x < width)
            for (int d = tid / Q; d < DISPARITIES; d += 16, out += 16 * plane, src += 16 * OSTRIDE) {
#if OUT_HALF
                *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(src);
#else
                *reinterpret_cast<float4*>(out) = *reinterpret_cast<const float4*>(src);
                *reinterpret_cast<float4*>(out + 4) = *reinterpret_cast<const float4*>(src + 4);
#endif
            }
    } else {
        for (int d = tid / Q; d < DISPARITIES; d += 16, out += 16 * plane, src += 16 * OSTRIDE)
#pragma unroll
            for (int i = 0; i < 8; ++i)
                if (x0 + x + i < width) out[i] = src[i];
    }
}
