// Checks of a sparse weight's metadata, shared by the CPU and CUDA bindings: the values
// (nnz_blocks, bm, bk) and the six int32 index arrays of spd_kernels.formats.SparseMatrix
// (row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t).
//
// check_meta(), check_dense(), check_same_rows() and check_bias() read shapes, dtypes and devices only, so they
// run on any device without a synchronisation. check_offsets() / check_range() read the index data and so are for host
// memory (the CPU kernels); on a GPU, spd_kernels.formats.check_metadata checks the contents
// once per pattern before a kernel runs.
#pragma once

#include <cstdint>

#include "checks.h"

namespace spd {

// Sizes of a weight whose metadata passed check_meta, in blocks.
struct MetaSizes {
  int64_t nbr;   // block rows (N / bm)
  int64_t nbc;   // block columns (K / bk)
  int64_t nnzb;  // stored blocks
  int64_t bm, bk;
};

inline MetaSizes check_meta(const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
                            const at::Tensor& block_rows, const at::Tensor& col_offsets,
                            const at::Tensor& row_indices_t, const at::Tensor& perm_t, const at::Device& device) {
  SPD_CHECK_DEVICE(values, device);
  SPD_CHECK_DEVICE(row_offsets, device);
  SPD_CHECK_DEVICE(col_indices, device);
  SPD_CHECK_DEVICE(block_rows, device);
  SPD_CHECK_DEVICE(col_offsets, device);
  SPD_CHECK_DEVICE(row_indices_t, device);
  SPD_CHECK_DEVICE(perm_t, device);
  SPD_CHECK_DIM(values, 3);
  SPD_CHECK_INDEX(row_offsets);
  SPD_CHECK_INDEX(col_indices);
  SPD_CHECK_INDEX(block_rows);
  SPD_CHECK_INDEX(col_offsets);
  SPD_CHECK_INDEX(row_indices_t);
  SPD_CHECK_INDEX(perm_t);
  TORCH_CHECK_VALUE(row_offsets.numel() >= 1 && col_offsets.numel() >= 1,
                    "row_offsets and col_offsets need at least one entry, got ", row_offsets.numel(), " and ",
                    col_offsets.numel());
  const int64_t nnzb = values.size(0);
  TORCH_CHECK_VALUE(nnzb < (int64_t{1} << 31), nnzb, " stored blocks do not fit int32 indices");
  for (const at::Tensor* t : {&col_indices, &block_rows, &row_indices_t, &perm_t}) {
    TORCH_CHECK_VALUE(t->numel() == nnzb, "index arrays must have nnz_blocks=", nnzb, " entries, got ", t->numel());
  }
  return {row_offsets.numel() - 1, col_offsets.numel() - 1, nnzb, values.size(1), values.size(2)};
}

// A dense operand of a product, (M, cols), on the weight's device and of its dtype.
inline void check_dense(const at::Tensor& t, const char* name, int64_t cols, const at::Tensor& values) {
  SPD_CHECK_DEVICE(t, values.device());
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D (M, ", cols, "), got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.size(1) == cols, name, " must have ", cols, " columns, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == values.scalar_type(), name, " has dtype ", t.scalar_type(),
                   " but values have dtype ", values.scalar_type());
}

// The two dense operands of the weight gradient: dy (M, N) and x (M, K) share M.
inline void check_same_rows(const at::Tensor& dy, const at::Tensor& x) {
  TORCH_CHECK_VALUE(dy.size(0) == x.size(0), "dy and x must have the same number of rows, got ", dy.sizes(), " and ",
                    x.sizes());
}

// The bias of the forward product: (n,), on the weight's device and of its dtype.
inline void check_bias(const at::Tensor& bias, int64_t n, const at::Tensor& values) {
  SPD_CHECK_DEVICE(bias, values.device());
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == n, "bias must have shape (", n, ",), got ", bias.sizes());
  TORCH_CHECK_TYPE(bias.scalar_type() == values.scalar_type(), "bias has dtype ", bias.scalar_type(),
                   " but values have dtype ", values.scalar_type());
}

// Offsets of a compressed axis (host memory): ptr[0] = 0, non-decreasing, ptr[n] = nnz. Every
// entry a kernel reads then lies in [0, nnz), so a bad array is an error, never an
// out-of-bounds read.
inline void check_offsets(const at::Tensor& t, const char* name, int64_t nnz) {
  const int32_t* p = t.data_ptr<int32_t>();
  const int64_t n = t.numel() - 1;
  TORCH_CHECK_VALUE(p[0] == 0 && p[n] == nnz, name, " must start at 0 and end at nnz_blocks=", nnz, ", got ", p[0],
                    " ... ", p[n]);
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(p[i] <= p[i + 1], name, " must be non-decreasing, got ", p[i], " then ", p[i + 1], " at ", i);
}

// Every entry of an index array (host memory) in [0, hi).
inline void check_range(const at::Tensor& t, const char* name, int64_t hi) {
  const int32_t* p = t.data_ptr<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i)
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < hi, name, "[", i, "] = ", p[i], " is outside [0, ", hi, ")");
}

}  // namespace spd
