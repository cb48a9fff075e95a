// group_norm: per-pixel L2 normalisation of each channel group of the 1/4 features, to half.
//   in_*   (1,C,H,W) IN_T = float (IN_HALF=0) or half bits (IN_HALF=1); C = groups * GROUP_CHANNELS
//   out_*  (1,C,H,W) half bits
//   s = x0*x0; s = s + x1*x1; ... (float32, channel order, each op rounded: no FMA)
//   out_c = half_rn(x_c / max(sqrt_rn(s), NORM_EPS))
// Bit-identical to flashstereo_ros.gwc.normalize_groups (numpy adds the channel planes in order; a NaN
// norm stays NaN as with np.maximum). Left and right in one launch (blockIdx.z selects the side).
// Launch: block (256), grid (ceil(H*W/256), groups, 2); one thread per (side, group, pixel).
#include "fs_common.cuh"

#ifndef GROUP_CHANNELS
#error "GROUP_CHANNELS (channels per group) must be defined"
#endif
#ifndef NORM_EPS
#define NORM_EPS 1e-12f
#endif
#ifndef IN_HALF
#define IN_HALF 0
#endif
#if IN_HALF
typedef half_bits in_t;
#else
typedef float in_t;
#endif

extern "C" __global__ void group_norm(const in_t* __restrict__ in_left, const in_t* __restrict__ in_right,
                                      half_bits* __restrict__ out_left, half_bits* __restrict__ out_right,
                                      int groups, int plane) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= plane || (int)blockIdx.y >= groups) return;
    const in_t* in = blockIdx.z ? in_right : in_left;
    half_bits* out = blockIdx.z ? out_right : out_left;
    const size_t base = (size_t)blockIdx.y * GROUP_CHANNELS * plane + p;
    float v[GROUP_CHANNELS];
#pragma unroll
    for (int c = 0; c < GROUP_CHANNELS; ++c) v[c] = load_f32(in, base + (size_t)c * plane);
    float sum = __fmul_rn(v[0], v[0]);
#pragma unroll
    for (int c = 1; c < GROUP_CHANNELS; ++c) sum = __fadd_rn(sum, __fmul_rn(v[c], v[c]));
    float norm = __fsqrt_rn(sum);
    norm = norm < NORM_EPS ? NORM_EPS : norm;  // NaN stays NaN, like np.maximum
#pragma unroll
    for (int c = 0; c < GROUP_CHANNELS; ++c) out[base + (size_t)c * plane] = f32_to_f16(__fdiv_rn(v[c], norm));
}
