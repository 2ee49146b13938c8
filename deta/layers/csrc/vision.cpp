// Python bindings of deta._C: the multi-scale deformable attention op and the
// build information reported by deta.utils.collect_env.
#include <torch/extension.h>

#include <sstream>
#include <string>

#include "MsDeformAttn/ms_deform_attn.h"

namespace deta {

#if defined(WITH_CUDA)
extern int get_cudart_version();
#endif

bool has_cuda() {
#if defined(WITH_CUDA)
  return true;
#else
  return false;
#endif
}

// CUDA runtime version the extension was compiled against, e.g. "13.0".
std::string get_cuda_version() {
#if defined(WITH_CUDA)
  const int version = get_cudart_version();
  std::ostringstream oss;
  oss << version / 1000 << "." << (version % 1000) / 10;
  return oss.str();
#else
  return std::string("not available");
#endif
}

std::string get_compiler_version() {
  std::ostringstream oss;
#if defined(__clang__)
  oss << "clang " << __clang_major__ << "." << __clang_minor__ << "."
      << __clang_patchlevel__;
#elif defined(__GNUC__)
  oss << "GCC " << __GNUC__ << "." << __GNUC_MINOR__ << "."
      << __GNUC_PATCHLEVEL__;
#elif defined(_MSC_VER)
  oss << "MSVC " << _MSC_FULL_VER;
#else
  oss << "unknown compiler";
#endif
  return oss.str();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def(
      "ms_deform_attn_forward",
      &ms_deform_attn_forward,
      "Multi-scale deformable attention forward; returns (N, Lq, M * D)",
      py::arg("value"),
      py::arg("spatial_shapes"),
      py::arg("level_start_index"),
      py::arg("sampling_loc"),
      py::arg("attn_weight"),
      py::arg("im2col_step"));
  m.def(
      "ms_deform_attn_backward",
      &ms_deform_attn_backward,
      "Multi-scale deformable attention backward; returns "
      "[grad_value, grad_sampling_loc, grad_attn_weight]",
      py::arg("value"),
      py::arg("spatial_shapes"),
      py::arg("level_start_index"),
      py::arg("sampling_loc"),
      py::arg("attn_weight"),
      py::arg("grad_output"),
      py::arg("im2col_step"));
  m.def("has_cuda", &has_cuda, "Whether deta._C was built with CUDA kernels");
  m.def(
      "cpu_kernel_isa",
      &cpu_kernel_isa,
      "Build of the CPU kernels used now: 'avx2' or 'baseline' "
      "($DETA_CPU_KERNEL_ISA=baseline forces it)");
  m.def(
      "get_cuda_version",
      &get_cuda_version,
      "CUDA runtime version deta._C was built against");
  m.def(
      "get_compiler_version",
      &get_compiler_version,
      "Host compiler that built deta._C");
}

} // namespace deta
