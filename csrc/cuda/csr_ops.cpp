// Torch binding of the CSR CUDA kernels: argument checks, allocation, device guard, current
// stream, a launch check after every kernel, and the CUDA-key registrations of the
// spd_kernels_C::cuda_* ops declared in csrc/registration.cpp.
//
// Host C++ only (the kernels live in the torch-free csr_*.cu files), so it is compiled by the
// host compiler rather than nvcc: the torch headers are parsed once instead of once per
// architecture. Nothing here waits for the device: sizes come from tensor shapes, scratch
// comes from the caching allocator, and kernels go on the current stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "csr_launch.h"
#include "meta_checks.h"

namespace spd {
namespace {

using spd_cuda::DType;

DType dtype_of(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK(false, what, " must be float32, float16 or bfloat16 for the cuda backend, got ",
                  t.scalar_type());
  }
  return DType::kFloat32;  // unreachable
}

spd_cuda::Activation activation_of(const std::string& name) {
  if (name == "none") return spd_cuda::Activation::kNone;
  if (name == "relu") return spd_cuda::Activation::kRelu;
  if (name == "gelu") return spd_cuda::Activation::kGelu;
  if (name == "gelu_tanh") return spd_cuda::Activation::kGeluTanh;
  TORCH_CHECK(false, "activation must be one of none, relu, gelu, gelu_tanh; got '", name, "'");
  return spd_cuda::Activation::kNone;  // unreachable
}

// Sizes of a CSR (block (1, 1)) weight, after the shared metadata checks (meta_checks.h).
struct CsrSizes {
  int64_t n;    // rows of W
  int64_t k;    // columns of W
  int64_t nnz;  // stored entries
};

CsrSizes check_csr(const char* op, const at::Tensor& ref, const char* ref_name, const at::Tensor& values,
                   const at::Tensor& row_offsets, const at::Tensor& col_indices, const at::Tensor& block_rows,
                   const at::Tensor& col_offsets, const at::Tensor& row_indices_t, const at::Tensor& perm_t) {
  TORCH_CHECK(ref.device().is_cuda(), op, ": ", ref_name, " must be a CUDA tensor, got ", ref.device());
  const MetaSizes s =
      check_meta(values, row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t, ref.device());
  TORCH_CHECK(s.bm == 1 && s.bk == 1, op,
              ": the cuda backend takes CSR weights, values of shape (nnz, 1, 1) (block (1, 1)); got ",
              values.sizes());
  TORCH_CHECK(values.scalar_type() == ref.scalar_type(), op, ": values have dtype ", values.scalar_type(),
              " but ", ref_name, " has ", ref.scalar_type());
  return {s.nbr, s.nbc, s.nnzb};
}

// `t` (rows, cols), any strides, as a (cols, ld) row-major copy zero-padded from rows to ld.
at::Tensor transposed(const at::Tensor& t, int64_t ld, DType dt, cudaStream_t stream) {
  at::Tensor out = at::empty({t.size(1), ld}, t.options());
  if (t.size(1) > 0) {
    spd_cuda::launch_transpose_pad(dt, t.data_ptr(), t.size(0), t.size(1), t.stride(0), t.stride(1),
                                   out.data_ptr(), ld, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// out (M, R) = act(in · Sᵀ + bias); S given by (offsets, indices, perm) over W's values.
void spmm(const at::Tensor& in, const at::Tensor& values, const at::Tensor& offsets, const at::Tensor& indices,
          const at::Tensor* perm, const at::Tensor* bias, spd_cuda::Activation act, at::Tensor& out,
          at::Tensor* preact) {
  const int64_t m = in.size(0);
  const int64_t rows = offsets.numel() - 1;
  if (m == 0 || rows == 0) return;
  const DType dt = dtype_of(in, "the dense operand");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(in.get_device()).stream();
  const spd_cuda::SpmmPlan plan = spd_cuda::plan_spmm(m, rows, values.size(0), spd_cuda::current_sm_count());
  TORCH_CHECK(plan.num_tiles < (int64_t{1} << 31), "too many row tiles (", plan.num_tiles, ")");
  const at::Tensor in_t = transposed(in, plan.m_pad, dt, stream);
  spd_cuda::SpmmArgs a;
  a.in_t = in_t.data_ptr();
  a.offsets = offsets.data_ptr<int32_t>();
  a.indices = indices.data_ptr<int32_t>();
  a.values = values.data_ptr();
  a.values_stride = values.stride(0);
  a.perm = perm != nullptr ? perm->data_ptr<int32_t>() : nullptr;
  a.rows = rows;
  a.m = m;
  if (bias != nullptr) {
    a.bias = bias->data_ptr();
    a.bias_stride = bias->stride(0);
  }
  a.out = out.data_ptr();
  a.ld_out = out.stride(0);
  if (preact != nullptr) {
    a.preact = preact->data_ptr();
    a.ld_preact = preact->stride(0);
  }
  a.activation = act;
  spd_cuda::launch_csr_spmm(dt, plan, a, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cuda_dds_t(const at::Tensor& x, const at::Tensor& values,
                                              const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                              const at::Tensor& block_rows, const at::Tensor& col_offsets,
                                              const at::Tensor& row_indices_t, const at::Tensor& perm_t,
                                              const std::optional<at::Tensor>& bias, c10::string_view activation,
                                              bool save_preact) {
  const char* op = "cuda_dds_t";
  const CsrSizes s =
      check_csr(op, x, "x", values, row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t);
  check_dense(x, "x", s.k, values);
  dtype_of(x, "x");
  const spd_cuda::Activation act = activation_of(std::string(activation));
  if (bias.has_value()) check_bias(*bias, s.n, values);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int64_t m = x.size(0);
  at::Tensor y = at::empty({m, s.n}, x.options());
  at::Tensor z = save_preact ? at::empty({m, s.n}, x.options()) : at::empty({0}, x.options());
  spmm(x, values, row_offsets, col_indices, nullptr, bias.has_value() ? &*bias : nullptr, act, y,
       save_preact ? &z : nullptr);
  return {y, z};
}

at::Tensor cuda_dds(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& row_offsets,
                    const at::Tensor& col_indices, const at::Tensor& block_rows, const at::Tensor& col_offsets,
                    const at::Tensor& row_indices_t, const at::Tensor& perm_t) {
  const char* op = "cuda_dds";
  const CsrSizes s =
      check_csr(op, dy, "dy", values, row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t);
  check_dense(dy, "dy", s.n, values);
  dtype_of(dy, "dy");
  const c10::cuda::OptionalCUDAGuard guard(dy.device());
  at::Tensor dx = at::empty({dy.size(0), s.k}, dy.options());
  // dX = dY · W walks W by columns: the CSC metadata is the CSR of Wᵀ over the same values.
  spmm(dy, values, col_offsets, row_indices_t, &perm_t, nullptr, spd_cuda::Activation::kNone, dx, nullptr);
  return dx;
}

at::Tensor cuda_sdd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& values,
                    const at::Tensor& row_offsets, const at::Tensor& col_indices, const at::Tensor& block_rows,
                    const at::Tensor& col_offsets, const at::Tensor& row_indices_t, const at::Tensor& perm_t) {
  const char* op = "cuda_sdd";
  const CsrSizes s =
      check_csr(op, dy, "dy", values, row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t);
  check_dense(dy, "dy", s.n, values);
  check_dense(x, "x", s.k, values);
  check_same_rows(dy, x);
  const DType dt = dtype_of(dy, "dy");
  const c10::cuda::OptionalCUDAGuard guard(dy.device());
  const int64_t m = dy.size(0);
  if (m == 0) return at::zeros_like(values, at::MemoryFormat::Contiguous);  // an empty sum
  at::Tensor dw = at::empty_like(values, at::MemoryFormat::Contiguous);
  if (s.nnz == 0) return dw;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dy.get_device()).stream();
  const int64_t ld = spd_cuda::round_up(m, spd_cuda::sddmm_vec_for(static_cast<int>(dy.element_size())));
  const at::Tensor dy_t = transposed(dy, ld, dt, stream);
  const at::Tensor x_t = transposed(x, ld, dt, stream);
  spd_cuda::SddmmArgs a;
  a.a_t = dy_t.data_ptr();
  a.b_t = x_t.data_ptr();
  a.ld_t = ld;
  a.rows = block_rows.data_ptr<int32_t>();
  a.cols = col_indices.data_ptr<int32_t>();
  a.nnz = s.nnz;
  a.out = dw.data_ptr();
  a.out_stride = dw.stride(0);
  spd_cuda::launch_csr_sddmm(dt, a, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dw;
}

}  // namespace spd

TORCH_LIBRARY_IMPL(spd_kernels_C, CUDA, m) {
  m.impl("cuda_dds_t", &spd::cuda_dds_t);
  m.impl("cuda_dds", &spd::cuda_dds);
  m.impl("cuda_sdd", &spd::cuda_sdd);
}
