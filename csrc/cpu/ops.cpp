// The CPU kernels registered as spd_kernels_C::cpu_{dds_t, dds, sdd}: argument checks, output
// allocation and dispatch on dtype; the arithmetic lives in bsr.cpp and csr.cpp.
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "kernels.h"
#include "meta_checks.h"

// Without AVX2/FMA at compile time (another architecture, or a portable build without them)
// the kernels are not registered and the cpu backend reports itself unavailable.
#if defined(__AVX2__) && defined(__FMA__)

namespace spd {
namespace {

using cpu::bf16;
using cpu::Meta;

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

int activation_code(c10::string_view act) {
  if (act == "none") return cpu::ACT_NONE;
  if (act == "relu") return cpu::ACT_RELU;
  if (act == "gelu") return cpu::ACT_GELU;
  if (act == "gelu_tanh") return cpu::ACT_GELU_TANH;
  TORCH_CHECK_VALUE(false, "activation must be one of none, relu, gelu, gelu_tanh; got '", std::string(act), "'");
}

enum Walk { BY_ROWS = 1, BY_COLS = 2 };

// The shared metadata checks (meta_checks.h), the cpu kernels' dtypes and blocks, and the
// index ranges of the arrays the kernel will walk (CSR for dds_t/sdd, CSC for dds).
Meta check_cpu_meta(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                    const at::Tensor& block_rows, const at::Tensor& col_offsets, const at::Tensor& row_indices_t,
                    const at::Tensor& perm_t, int walk) {
  const MetaSizes s =
      check_meta(values, row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t, at::kCPU);
  TORCH_CHECK_TYPE(values.scalar_type() == at::kFloat || values.scalar_type() == at::kBFloat16,
                   "values must be float32 or bfloat16 for the cpu kernels, got ", values.scalar_type());
  TORCH_CHECK_VALUE(cpu::block_supported(int(s.bm), int(s.bk)),
                    "the cpu kernels take bm, bk multiples of 8 or both at most 32; got block (", s.bm, ", ", s.bk,
                    ")");
  Meta m{row_offsets.data_ptr<int32_t>(),
         col_indices.data_ptr<int32_t>(),
         block_rows.data_ptr<int32_t>(),
         col_offsets.data_ptr<int32_t>(),
         row_indices_t.data_ptr<int32_t>(),
         perm_t.data_ptr<int32_t>(),
         s.nbr,
         s.nbc,
         s.nnzb,
         int(s.bm),
         int(s.bk)};
  if (walk & BY_ROWS) {
    check_offsets(row_offsets, "row_offsets", s.nnzb);
    check_range(col_indices, "col_indices", s.nbc);
  }
  if (walk & BY_COLS) {
    check_offsets(col_offsets, "col_offsets", s.nnzb);
    check_range(row_indices_t, "row_indices_t", s.nbr);
    check_range(perm_t, "perm_t", s.nnzb);
  }
  TORCH_CHECK(cpu_has_avx2_fma(), "the cpu kernels need a CPU with AVX2 and FMA");
  return m;
}

// A dense 2-D operand with unit column stride (copied once otherwise).
at::Tensor dense_operand(const at::Tensor& t, const char* name, int64_t cols, const at::Tensor& values) {
  check_dense(t, name, cols, values);
  if (t.size(1) > 1 && t.stride(1) != 1) return t.contiguous();
  return t;
}

// torch's intra-op thread count; one thread when already inside a parallel region.
int num_threads() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

int64_t row_stride(const at::Tensor& t) { return t.size(0) > 1 ? t.stride(0) : t.size(1); }

std::tuple<at::Tensor, at::Tensor> dds_t_cpu(const at::Tensor& x_in, const at::Tensor& values_in,
                                             const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                             const at::Tensor& block_rows, const at::Tensor& col_offsets,
                                             const at::Tensor& row_indices_t, const at::Tensor& perm_t,
                                             const std::optional<at::Tensor>& bias_in, c10::string_view activation,
                                             bool save_preact) {
  const Meta m = check_cpu_meta(values_in, row_offsets, col_indices, block_rows, col_offsets, row_indices_t,
                                perm_t, BY_ROWS);
  const at::Tensor values = values_in.contiguous();
  const int act = activation_code(activation);
  const at::Tensor x = dense_operand(x_in, "x", m.k(), values);
  const int64_t M = x.size(0), N = m.n();
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    check_bias(*bias_in, N, values);
    bias = bias_in->contiguous();
  }
  at::Tensor y = at::empty({M, N}, x.options());
  at::Tensor z = save_preact ? at::empty({M, N}, x.options()) : at::empty({0}, x.options());
  if (M == 0 || N == 0) return {y, z};
  const int nt = num_threads();
  if (values.scalar_type() == at::kFloat) {
    cpu::dds_t<float>(x.data_ptr<float>(), row_stride(x), M, values.data_ptr<float>(), m,
                      bias.defined() ? bias.data_ptr<float>() : nullptr, act, y.data_ptr<float>(),
                      save_preact ? z.data_ptr<float>() : nullptr, nt);
  } else {
    auto p = [](const at::Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr<at::BFloat16>()); };
    cpu::dds_t<bf16>(p(x), row_stride(x), M, p(values), m, bias.defined() ? p(bias) : nullptr, act, p(y),
                     save_preact ? p(z) : nullptr, nt);
  }
  return {y, z};
}

at::Tensor dds_cpu(const at::Tensor& dy_in, const at::Tensor& values_in, const at::Tensor& row_offsets,
                   const at::Tensor& col_indices, const at::Tensor& block_rows, const at::Tensor& col_offsets,
                   const at::Tensor& row_indices_t, const at::Tensor& perm_t) {
  const Meta m = check_cpu_meta(values_in, row_offsets, col_indices, block_rows, col_offsets, row_indices_t,
                                perm_t, BY_COLS);
  const at::Tensor values = values_in.contiguous();
  const at::Tensor dy = dense_operand(dy_in, "dy", m.n(), values);
  const int64_t M = dy.size(0), K = m.k();
  at::Tensor dx = at::empty({M, K}, dy.options());
  if (M == 0 || K == 0) return dx;
  const int nt = num_threads();
  if (values.scalar_type() == at::kFloat) {
    cpu::dds<float>(dy.data_ptr<float>(), row_stride(dy), M, values.data_ptr<float>(), m, dx.data_ptr<float>(), nt);
  } else {
    auto p = [](const at::Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr<at::BFloat16>()); };
    cpu::dds<bf16>(p(dy), row_stride(dy), M, p(values), m, p(dx), nt);
  }
  return dx;
}

at::Tensor sdd_cpu(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& values_in,
                   const at::Tensor& row_offsets, const at::Tensor& col_indices, const at::Tensor& block_rows,
                   const at::Tensor& col_offsets, const at::Tensor& row_indices_t, const at::Tensor& perm_t) {
  const Meta m = check_cpu_meta(values_in, row_offsets, col_indices, block_rows, col_offsets, row_indices_t,
                                perm_t, BY_ROWS);
  const at::Tensor values = values_in.contiguous();
  const at::Tensor dy = dense_operand(dy_in, "dy", m.n(), values);
  const at::Tensor x = dense_operand(x_in, "x", m.k(), values);
  check_same_rows(dy, x);
  const int64_t M = x.size(0);
  at::Tensor dw = at::empty(values.sizes(), values.options());
  if (m.nnzb == 0) return dw;
  const int nt = num_threads();
  if (values.scalar_type() == at::kFloat) {
    cpu::sdd<float>(dy.data_ptr<float>(), row_stride(dy), x.data_ptr<float>(), row_stride(x), M, m,
                    dw.data_ptr<float>(), nt);
  } else {
    auto p = [](const at::Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr<at::BFloat16>()); };
    cpu::sdd<bf16>(p(dy), row_stride(dy), p(x), row_stride(x), M, m, p(dw), nt);
  }
  return dw;
}

}  // namespace
}  // namespace spd

TORCH_LIBRARY_IMPL(spd_kernels_C, CPU, m) {
  m.impl("cpu_dds_t", &spd::dds_t_cpu);
  m.impl("cpu_dds", &spd::dds_cpu);
  m.impl("cpu_sdd", &spd::sdd_cpu);
}

#endif  // __AVX2__ && __FMA__
