// CUDA kernels of multi-scale deformable attention, forward and backward.
//
// One warp handles one (batch, query, head) group; its lanes stride over the
// D channels, so the loads of a corner row (D contiguous values) coalesce.
// The bilinear setup of each sample is computed by every lane (it is cheap and
// saves a broadcast) with bilinear_sample, the rule the CPU kernel uses too.
//
// The backward reduces the per-sample location and attention gradients over
// channels with warp shuffles and scatters the value gradient with atomics,
// so grad_value is not bit-reproducible on CUDA (the CPU kernel is); under
// torch.use_deterministic_algorithms(True) the backward launcher alerts.
//
// The host does not read the level tensors of CUDA calls back (no sync; see
// ms_deform_attn.h), so corners outside value are dropped here: bad level
// tensors give wrong numbers, never out-of-bounds accesses.
#pragma once

#include <ATen/cuda/Atomic.cuh>

#include "ms_deform_attn.h"

namespace deta {
namespace cuda_kernels {

constexpr int kWarpSize = 32;
constexpr int kThreadsPerBlock = 256;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;

struct Dims {
  int64_t num_value; // S
  int64_t heads; // M
  int64_t channels; // D
  int64_t queries; // Lq
  int64_t levels; // L
  int64_t points; // P
  int64_t groups; // N * Lq * M
};

// Start of the (batch, head) slice of value (or grad_value) of a group; the
// row of spatial position s is at + s * M * D.
__device__ __forceinline__ int64_t slice_offset(const Dims& d, int64_t group) {
  const int64_t m = group % d.heads;
  const int64_t b = group / (d.queries * d.heads);
  return b * d.num_value * d.heads * d.channels + m * d.channels;
}

// Treats corners outside the num_value rows of the slice as off the map.
template <typename scalar_t>
__device__ __forceinline__ void drop_outside(
    BilinearSample<scalar_t>& s,
    int64_t num_value) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (s.index[k] >= num_value) {
      s.index[k] = -1;
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    ms_deform_attn_forward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts,
    const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn,
    scalar_t* __restrict__ out,
    Dims d) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row_stride = d.heads * d.channels;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t group = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
           threadIdx.x / kWarpSize;
       group < d.groups;
       group += warps) {
    const scalar_t* value_bm = value + slice_offset(d, group);
    for (int64_t c = lane; c < d.channels; c += kWarpSize) {
      scalar_t acc = 0;
      for (int64_t l = 0; l < d.levels; ++l) {
        const int64_t height = shapes[2 * l];
        const int64_t width = shapes[2 * l + 1];
        const int64_t start = starts[l];
        for (int64_t p = 0; p < d.points; ++p) {
          const int64_t i = (group * d.levels + l) * d.points + p;
          BilinearSample<scalar_t> s;
          if (!bilinear_sample(
                  loc[2 * i], loc[2 * i + 1], height, width, start, s)) {
            continue;
          }
          drop_outside(s, d.num_value);
          scalar_t v = 0;
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (s.index[k] >= 0) {
              v += s.weight[k] * value_bm[s.index[k] * row_stride + c];
            }
          }
          acc += attn[i] * v;
        }
      }
      out[group * d.channels + c] = acc;
    }
  }
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t warp_sum(scalar_t v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    ms_deform_attn_backward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts,
    const scalar_t* __restrict__ loc,
    const scalar_t* __restrict__ attn,
    const scalar_t* __restrict__ grad_out,
    scalar_t* __restrict__ grad_value,
    scalar_t* __restrict__ grad_loc,
    scalar_t* __restrict__ grad_attn,
    Dims d) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row_stride = d.heads * d.channels;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  // The loop bounds depend only on the warp's group, so every lane of a warp
  // runs the same iterations and the shuffles below see all 32 lanes.
  for (int64_t group = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
           threadIdx.x / kWarpSize;
       group < d.groups;
       group += warps) {
    const int64_t offset = slice_offset(d, group);
    const scalar_t* value_bm = value + offset;
    scalar_t* grad_value_bm = grad_value + offset;
    const scalar_t* grad = grad_out + group * d.channels;
    for (int64_t l = 0; l < d.levels; ++l) {
      const int64_t height = shapes[2 * l];
      const int64_t width = shapes[2 * l + 1];
      const int64_t start = starts[l];
      for (int64_t p = 0; p < d.points; ++p) {
        const int64_t i = (group * d.levels + l) * d.points + p;
        BilinearSample<scalar_t> s;
        if (!bilinear_sample(
                loc[2 * i], loc[2 * i + 1], height, width, start, s)) {
          continue; // warp-uniform; its gradients stay zero
        }
        drop_outside(s, d.num_value);
        const scalar_t a = attn[i];
        // dot[k] = <grad_output row, corner k row>, from which all the
        // sample's gradients follow.
        scalar_t dot[4] = {0, 0, 0, 0};
        for (int64_t c = lane; c < d.channels; c += kWarpSize) {
          const scalar_t g = grad[c];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (s.index[k] >= 0) {
              const int64_t pos = s.index[k] * row_stride + c;
              dot[k] += g * value_bm[pos];
              gpuAtomicAddNoReturn(grad_value_bm + pos, a * s.weight[k] * g);
            }
          }
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          dot[k] = warp_sum(dot[k]);
        }
        if (lane == 0) {
          const scalar_t hx = scalar_t(1) - s.lx;
          const scalar_t hy = scalar_t(1) - s.ly;
          grad_attn[i] = s.weight[0] * dot[0] + s.weight[1] * dot[1] +
              s.weight[2] * dot[2] + s.weight[3] * dot[3];
          // x = loc_x * W - 0.5: d/d(loc_x) = W * d/dx; likewise y and H.
          grad_loc[2 * i] = a *
              (hy * (dot[1] - dot[0]) + s.ly * (dot[3] - dot[2])) *
              static_cast<scalar_t>(width);
          grad_loc[2 * i + 1] = a *
              (hx * (dot[2] - dot[0]) + s.lx * (dot[3] - dot[1])) *
              static_cast<scalar_t>(height);
        }
      }
    }
  }
}

} // namespace cuda_kernels
} // namespace deta
