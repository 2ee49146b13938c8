// Host launchers of the CUDA multi-scale deformable attention kernels. The
// inputs have been validated by the dispatcher in ms_deform_attn.h, all but
// the contents of the level tensors (the kernels guard those themselves).
// CUDA headers from c10 only: ATen/cuda/CUDAContext.h would also need the
// cuBLAS and cuSPARSE headers, which this op does not use.
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "ms_deform_attn.h"
#include "ms_deform_attn_kernel.cuh"

namespace deta {
namespace {

cuda_kernels::Dims get_dims(
    const at::Tensor& value,
    const at::Tensor& sampling_loc) {
  cuda_kernels::Dims d;
  d.num_value = value.size(1);
  d.heads = value.size(2);
  d.channels = value.size(3);
  d.queries = sampling_loc.size(1);
  d.levels = sampling_loc.size(3);
  d.points = sampling_loc.size(4);
  d.groups = value.size(0) * d.queries * d.heads;
  return d;
}

// One warp per group; the kernels loop over groups, so the grid is capped.
unsigned int num_blocks(int64_t groups) {
  const int64_t blocks = (groups + cuda_kernels::kWarpsPerBlock - 1) /
      cuda_kernels::kWarpsPerBlock;
  return static_cast<unsigned int>(
      std::min<int64_t>(std::max<int64_t>(blocks, 1), 1 << 20));
}

} // namespace

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_forward_cuda: needs CUDA");
  c10::cuda::CUDAGuard device_guard(value.device());
  const cuda_kernels::Dims d = get_dims(value, sampling_loc);
  // Every element is written by the kernel.
  at::Tensor out = at::empty(
      {value.size(0), d.queries, d.heads * d.channels}, value.options());
  if (out.numel() == 0) {
    return out;
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int blocks = num_blocks(d.groups);
  AT_DISPATCH_FLOATING_TYPES(
      value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
        cuda_kernels::ms_deform_attn_forward_kernel<scalar_t>
            <<<blocks, cuda_kernels::kThreadsPerBlock, 0, stream>>>(
                value.data_ptr<scalar_t>(),
                spatial_shapes.data_ptr<int64_t>(),
                level_start_index.data_ptr<int64_t>(),
                sampling_loc.data_ptr<scalar_t>(),
                attn_weight.data_ptr<scalar_t>(),
                out.data_ptr<scalar_t>(),
                d);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_backward_cuda: needs CUDA");
  // grad_value is scattered with atomicAdd, in no fixed order: raises (or
  // warns, with warn_only=True) under torch.use_deterministic_algorithms(True).
  at::globalContext().alertNotDeterministic("ms_deform_attn_backward_cuda");
  c10::cuda::CUDAGuard device_guard(value.device());
  const cuda_kernels::Dims d = get_dims(value, sampling_loc);
  at::Tensor grad_value = at::zeros_like(value);
  at::Tensor grad_loc = at::zeros_like(sampling_loc);
  at::Tensor grad_attn = at::zeros_like(attn_weight);
  if (grad_output.numel() == 0 || grad_attn.numel() == 0) {
    return {grad_value, grad_loc, grad_attn};
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int blocks = num_blocks(d.groups);
  AT_DISPATCH_FLOATING_TYPES(
      value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
        cuda_kernels::ms_deform_attn_backward_kernel<scalar_t>
            <<<blocks, cuda_kernels::kThreadsPerBlock, 0, stream>>>(
                value.data_ptr<scalar_t>(),
                spatial_shapes.data_ptr<int64_t>(),
                level_start_index.data_ptr<int64_t>(),
                sampling_loc.data_ptr<scalar_t>(),
                attn_weight.data_ptr<scalar_t>(),
                grad_output.data_ptr<scalar_t>(),
                grad_value.data_ptr<scalar_t>(),
                grad_loc.data_ptr<scalar_t>(),
                grad_attn.data_ptr<scalar_t>(),
                d);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_value, grad_loc, grad_attn};
}

} // namespace deta
