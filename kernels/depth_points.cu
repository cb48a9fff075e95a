// depth_points: REP 118 depth and an organised coloured point cloud from the published disparity d'.
// The float32 operations of flashstereo_ros.depth (depth_image, point_cloud, pack_rgb), in its order:
// depth_image: disp (n) float -> depth (n) float
//   z = fb / d; z = d <= 0 ? +inf : z; z = z > max_depth ? +inf : z; z = z < min_depth ? -inf : z;
//   z = (!finite(d) || d < min_disparity) ? NaN : z
//   Launch: block (256), grid (ceil(n/256)).
// point_cloud: depth (H,W) float + left image (uint8 H x W x C, `step` bytes a row) -> cloud (h',w',4) float
//   (h' = ceil(H/stride), w' = ceil(W/stride)); for pixel (u,v) = (j*stride, i*stride):
//   z = finite(depth) ? depth : NaN; x = ((u - cx) * z) / fx; y = ((v - cy) * z) / fy;
//   rgb = float bits of 0x00RRGGBB (r_off/g_off/b_off as in preprocess.cu)
//   Launch: block (32, 8), grid (ceil(w'/32), ceil(h'/8)).
#include "fs_common.cuh"

#define F32_NAN __int_as_float(0x7fc00000)
#define F32_INF __int_as_float(0x7f800000)

extern "C" __global__ void depth_image(const float* __restrict__ disp, int n, float focal_baseline,
                                       float min_disparity, float min_depth, float max_depth,
                                       float* __restrict__ depth) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float d = disp[i];
    float z = __fdiv_rn(focal_baseline, d);
    if (d <= 0.0f) z = F32_INF;
    if (z > max_depth) z = F32_INF;
    if (z < min_depth) z = -F32_INF;
    if (!is_finite_f32(d) || d < min_disparity) z = F32_NAN;
    depth[i] = z;
}

extern "C" __global__ void point_cloud(const float* __restrict__ depth, int height, int width,
                                       const unsigned char* __restrict__ image, int step, int channels,
                                       int r_off, int g_off, int b_off, int stride,
                                       float cx, float cy, float fx, float fy,
                                       float* __restrict__ cloud, int out_h, int out_w) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = blockIdx.y * blockDim.y + threadIdx.y;
    if (j >= out_w || i >= out_h) return;
    const int u = j * stride, v = i * stride;
    float z = depth[(size_t)v * width + u];
    if (!is_finite_f32(z)) z = F32_NAN;
    const float x = __fdiv_rn(__fmul_rn(__fsub_rn((float)u, cx), z), fx);
    const float y = __fdiv_rn(__fmul_rn(__fsub_rn((float)v, cy), z), fy);
    const unsigned char* pixel = image + (size_t)v * step + (size_t)u * channels;
    const unsigned int rgb = ((unsigned int)pixel[r_off] << 16) | ((unsigned int)pixel[g_off] << 8) | pixel[b_off];
    float4 point;
    point.x = x;
    point.y = y;
    point.z = z;
    point.w = __uint_as_float(rgb);
    reinterpret_cast<float4*>(cloud)[(size_t)i * out_w + j] = point;
}
