// Multi-scale deformable attention (Deformable DETR, arXiv:2010.04159; used by
// DETA, arXiv:2212.06137): declarations, input checks shared by the CPU and
// CUDA kernels, the bilinear sampling rule both kernels use, and the only
// device dispatcher.
//
// Shape shorthand: N batch, S = sum_l H_l * W_l value positions, M heads,
// D channels per head, Lq queries, L levels, P points per level.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

namespace deta {

// The sampling rule shared by both kernels, so that they cannot drift apart:
// grid_sample(bilinear, zeros padding, align_corners=False) at pixel
// coordinates x = loc_x * W - 0.5, y = loc_y * H - 0.5. A sample contributes
// only when -1 < x < W and -1 < y < H; corners off the map contribute 0.
template <typename scalar_t>
struct BilinearSample {
  // Spatial index (level start + y * W + x) of the corners (y0, x0),
  // (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1); -1 when off the map.
  int64_t index[4];
  // Bilinear weights of the same corners.
  scalar_t weight[4];
  // Fractional position inside the cell, needed by the location gradient.
  scalar_t lx;
  scalar_t ly;
};

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t floor_value(scalar_t v) {
#if defined(__CUDA_ARCH__)
  return floor(v);
#else
  return std::floor(v);
#endif
}

// Fills `s` and returns true when the sample at normalised (loc_x, loc_y)
// touches the level-`height` x `width` map stored from `start`. NaN locations
// fail the range test and so contribute nothing.
template <typename scalar_t>
C10_HOST_DEVICE inline bool bilinear_sample(
    scalar_t loc_x,
    scalar_t loc_y,
    int64_t height,
    int64_t width,
    int64_t start,
    BilinearSample<scalar_t>& s) {
  const scalar_t w = static_cast<scalar_t>(width);
  const scalar_t h = static_cast<scalar_t>(height);
  const scalar_t x = loc_x * w - scalar_t(0.5);
  const scalar_t y = loc_y * h - scalar_t(0.5);
  if (!(x > scalar_t(-1) && y > scalar_t(-1) && x < w && y < h)) {
    return false;
  }
  const scalar_t xf = floor_value(x);
  const scalar_t yf = floor_value(y);
  const int64_t x0 = static_cast<int64_t>(xf);
  const int64_t y0 = static_cast<int64_t>(yf);
  s.lx = x - xf;
  s.ly = y - yf;
  const scalar_t hx = scalar_t(1) - s.lx;
  const scalar_t hy = scalar_t(1) - s.ly;
  const bool x0_in = x0 >= 0;
  const bool x1_in = x0 + 1 < width;
  const bool y0_in = y0 >= 0;
  const bool y1_in = y0 + 1 < height;
  const int64_t base = start + y0 * width + x0;
  s.index[0] = (y0_in && x0_in) ? base : -1;
  s.index[1] = (y0_in && x1_in) ? base + 1 : -1;
  s.index[2] = (y1_in && x0_in) ? base + width : -1;
  s.index[3] = (y1_in && x1_in) ? base + width + 1 : -1;
  s.weight[0] = hy * hx;
  s.weight[1] = hy * s.lx;
  s.weight[2] = s.ly * hx;
  s.weight[3] = s.ly * s.lx;
  return true;
}

namespace detail {

inline void check_float_tensor(
    const at::Tensor& t,
    const char* name,
    const at::Tensor& value) {
  TORCH_CHECK(
      t.scalar_type() == value.scalar_type(),
      "ms_deform_attn: ",
      name,
      " must have the dtype of value (",
      value.scalar_type(),
      "), got ",
      t.scalar_type());
  TORCH_CHECK(
      t.device() == value.device(),
      "ms_deform_attn: ",
      name,
      " must be on the device of value (",
      value.device(),
      "), got ",
      t.device());
  TORCH_CHECK(
      t.is_contiguous(),
      "ms_deform_attn: ",
      name,
      " must be contiguous (call .contiguous() first)");
}

inline void check_index_tensor(
    const at::Tensor& t,
    const char* name,
    const at::Tensor& value) {
  TORCH_CHECK(
      t.scalar_type() == at::kLong,
      "ms_deform_attn: ",
      name,
      " must be int64, got ",
      t.scalar_type());
  TORCH_CHECK(
      t.device() == value.device(),
      "ms_deform_attn: ",
      name,
      " must be on the device of value (",
      value.device(),
      "), got ",
      t.device());
  TORCH_CHECK(
      t.is_contiguous(), "ms_deform_attn: ", name, " must be contiguous");
}

// The kernels index value with spatial_shapes and level_start_index, so the
// contents of CPU tensors are checked too. CUDA tensors are not read back: that
// would be a device-to-host sync per call, idling the GPU and ruling out CUDA
// graphs. The CUDA kernels instead skip corners outside value (wrong level
// tensors give wrong numbers, never out-of-bounds reads), and
// deta.layers.set_validate_levels(True) checks them in Python for debugging.
inline void check_levels(
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    int64_t num_value) {
  const at::Tensor shapes = spatial_shapes.to(at::kCPU);
  const at::Tensor starts = level_start_index.to(at::kCPU);
  const int64_t* sh = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    const int64_t h = sh[2 * l];
    const int64_t w = sh[2 * l + 1];
    TORCH_CHECK(
        h >= 0 && w >= 0 && (w == 0 || h <= num_value / w),
        "ms_deform_attn: spatial_shapes[",
        l,
        "] = (",
        h,
        ", ",
        w,
        ") is negative or larger than value.size(1) = ",
        num_value);
    TORCH_CHECK(
        st[l] == total,
        "ms_deform_attn: level_start_index[",
        l,
        "] = ",
        st[l],
        " is inconsistent with spatial_shapes (expected ",
        total,
        ")");
    total += h * w;
    TORCH_CHECK(
        total <= num_value,
        "ms_deform_attn: sum(H * W) of spatial_shapes exceeds value.size(1) = ",
        num_value);
  }
  TORCH_CHECK(
      total == num_value,
      "ms_deform_attn: sum(H * W) of spatial_shapes is ",
      total,
      " but value.size(1) is ",
      num_value);
}

} // namespace detail

// Validates the forward inputs (dims, dtypes, devices, contiguity; level
// bookkeeping on CPU) so that neither kernel can read out of bounds.
inline void check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step) {
  TORCH_CHECK(
      value.dim() == 4,
      "ms_deform_attn: value must be 4-d (N, S, M, D), got shape ",
      value.sizes());
  TORCH_CHECK(
      value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
      "ms_deform_attn: value must be float32 or float64, got ",
      value.scalar_type(),
      " (cast half/bfloat16 to float32; deta.layers.ms_deform_attn does so)");
  TORCH_CHECK(
      value.is_contiguous(),
      "ms_deform_attn: value must be contiguous (call .contiguous() first)");
  TORCH_CHECK(
      im2col_step > 0,
      "ms_deform_attn: im2col_step must be positive, got ",
      im2col_step);
  detail::check_index_tensor(spatial_shapes, "spatial_shapes", value);
  detail::check_index_tensor(level_start_index, "level_start_index", value);
  detail::check_float_tensor(sampling_loc, "sampling_loc", value);
  detail::check_float_tensor(attn_weight, "attn_weight", value);
  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
      "ms_deform_attn: spatial_shapes must have shape (L, 2), got ",
      spatial_shapes.sizes());
  const int64_t levels = spatial_shapes.size(0);
  TORCH_CHECK(
      level_start_index.dim() == 1 && level_start_index.size(0) == levels,
      "ms_deform_attn: level_start_index must have shape (L,) = (",
      levels,
      ",), got ",
      level_start_index.sizes());
  TORCH_CHECK(
      sampling_loc.dim() == 6 && sampling_loc.size(0) == value.size(0) &&
          sampling_loc.size(2) == value.size(2) &&
          sampling_loc.size(3) == levels && sampling_loc.size(5) == 2,
      "ms_deform_attn: sampling_loc must have shape (N, Lq, M, L, P, 2) = (",
      value.size(0),
      ", Lq, ",
      value.size(2),
      ", ",
      levels,
      ", P, 2), got ",
      sampling_loc.sizes());
  TORCH_CHECK(
      attn_weight.sizes() == sampling_loc.sizes().slice(0, 5),
      "ms_deform_attn: attn_weight must have shape (N, Lq, M, L, P) = ",
      sampling_loc.sizes().slice(0, 5),
      ", got ",
      attn_weight.sizes());
  if (spatial_shapes.is_cpu()) {
    detail::check_levels(spatial_shapes, level_start_index, value.size(1));
  }
}

inline void check_ms_deform_attn_grad(
    const at::Tensor& value,
    const at::Tensor& sampling_loc,
    const at::Tensor& grad_output) {
  const std::vector<int64_t> expected = {
      value.size(0), sampling_loc.size(1), value.size(2) * value.size(3)};
  TORCH_CHECK(
      grad_output.sizes() == at::IntArrayRef(expected),
      "ms_deform_attn: grad_output must have shape (N, Lq, M * D) = ",
      at::IntArrayRef(expected),
      ", got ",
      grad_output.sizes());
  detail::check_float_tensor(grad_output, "grad_output", value);
}

// The build of the CPU kernels a call runs now: "avx2" (x86-64-v3) or
// "baseline"; $DETA_CPU_KERNEL_ISA=baseline forces the latter.
std::string cpu_kernel_isa();

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight);

std::vector<at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output);

#if defined(WITH_CUDA)
at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight);

std::vector<at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output);
#endif

#define DETA_NO_CUDA_MESSAGE                                          \
  "deta._C was built without CUDA; reinstall with FORCE_CUDA=1 "      \
  "(and TORCH_CUDA_ARCH_LIST, CUDA_HOME) pip install "                \
  "--no-build-isolation -e . to run ms_deform_attn on CUDA tensors"

// Returns (N, Lq, M * D), channels ordered [head][d]. im2col_step is kept for
// interface compatibility with Deformable DETR; these kernels need no im2col
// buffer, so it is only validated.
inline at::Tensor ms_deform_attn_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    int64_t im2col_step) {
  check_ms_deform_attn_inputs(
      value,
      spatial_shapes,
      level_start_index,
      sampling_loc,
      attn_weight,
      im2col_step);
  if (value.is_cuda()) {
#if defined(WITH_CUDA)
    return ms_deform_attn_forward_cuda(
        value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
#else
    TORCH_CHECK(false, DETA_NO_CUDA_MESSAGE);
#endif
  }
  TORCH_CHECK(
      value.device().is_cpu(),
      "ms_deform_attn: unsupported device ",
      value.device());
  return ms_deform_attn_forward_cpu(
      value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
}

// Returns {grad_value, grad_sampling_loc, grad_attn_weight}.
inline std::vector<at::Tensor> ms_deform_attn_backward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output,
    int64_t im2col_step) {
  check_ms_deform_attn_inputs(
      value,
      spatial_shapes,
      level_start_index,
      sampling_loc,
      attn_weight,
      im2col_step);
  check_ms_deform_attn_grad(value, sampling_loc, grad_output);
  if (value.is_cuda()) {
#if defined(WITH_CUDA)
    return ms_deform_attn_backward_cuda(
        value,
        spatial_shapes,
        level_start_index,
        sampling_loc,
        attn_weight,
        grad_output);
#else
    TORCH_CHECK(false, DETA_NO_CUDA_MESSAGE);
#endif
  }
  TORCH_CHECK(
      value.device().is_cpu(),
      "ms_deform_attn: unsupported device ",
      value.device());
  return ms_deform_attn_backward_cpu(
      value,
      spatial_shapes,
      level_start_index,
      sampling_loc,
      attn_weight,
      grad_output);
}

} // namespace deta
