// Host entry points of the CSR CUDA kernels: plain C++ (no torch), raw pointers and sizes.
// Each launch_* function enqueues exactly one kernel on `stream` (or nothing when the problem
// is empty) and never synchronises; the caller checks the launch right after it.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "csr_plan.h"

namespace spd_cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
// Same codes as csr_common.cuh's ActivationCode.
enum class Activation : int { kNone = 0, kRelu = 1, kGelu = 2, kGeluTanh = 3 };

// out[c * ld_out + m] = in[m * stride0 + c * stride1] for m < rows, c < cols, and 0 for
// rows <= m < ld_out: a (rows, cols) matrix of any strides to a (cols, ld_out) row-major one
// whose zero padding lets the consumers use full-width vector loads with no tail.
void launch_transpose_pad(DType dtype, const void* in, int64_t rows, int64_t cols, int64_t stride0,
                          int64_t stride1, void* out, int64_t ld_out, cudaStream_t stream);

// out (M, R) = act(in (M, C) · Sᵀ + bias), S an (R, C) CSR matrix given by offsets (R + 1),
// indices (nnz, column of each entry) and values[perm ? perm[j] : j] (value of entry j, at
// `values_stride` elements apart). `in_t` is the input transposed and padded by
// launch_transpose_pad to (C, plan.m_pad). Forward: S = W (CSR). Input grad: S = Wᵀ, i.e. W's
// CSC metadata (col_offsets, row_indices_t, perm_t) over W's values.
struct SpmmArgs {
  const void* in_t = nullptr;
  const int32_t* offsets = nullptr;
  const int32_t* indices = nullptr;
  const void* values = nullptr;
  int64_t values_stride = 1;
  const int32_t* perm = nullptr;  // nullable
  int64_t rows = 0;               // R
  int64_t m = 0;                  // tokens
  const void* bias = nullptr;     // nullable, (R,) at bias_stride
  int64_t bias_stride = 1;
  void* out = nullptr;  // (M, R) at row stride ld_out
  int64_t ld_out = 0;
  void* preact = nullptr;  // nullable: the pre-activation, (M, R) at ld_preact
  int64_t ld_preact = 0;
  Activation activation = Activation::kNone;
};
void launch_csr_spmm(DType dtype, const SpmmPlan& plan, const SpmmArgs& args, cudaStream_t stream);

// out[j] = sum_m a_t[rows[j], m] * b_t[cols[j], m] (float32 accumulation) for j < nnz, with a_t,
// b_t transposed and zero-padded by launch_transpose_pad to the leading dimension ld_t (a
// multiple of sddmm_vec_for(sizeof(T))). Weight grad: a = dY, b = X, rows/cols = W's
// block_rows/col_indices, out = dW's values.
struct SddmmArgs {
  const void* a_t = nullptr;
  const void* b_t = nullptr;
  int64_t ld_t = 0;
  const int32_t* rows = nullptr;
  const int32_t* cols = nullptr;
  int64_t nnz = 0;
  void* out = nullptr;
  int64_t out_stride = 1;
};
void launch_csr_sddmm(DType dtype, const SddmmArgs& args, cudaStream_t stream);

// Streaming multiprocessors of the current device (cached; a host query, no synchronisation).
int current_sm_count();

}  // namespace spd_cuda
