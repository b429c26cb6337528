// CSR SDDMM: the weight gradient sampled at the pattern, out[j] = sum_m dY[m, row_j] X[m, col_j].
// Torch-free.
//
// Scheme: one thread per nonzero, in CSR order. Both operands arrive transposed (rows of
// length m_pad along M), so thread j streams the two rows dY_t[row_j], X_t[col_j] with
// 32-byte vector loads (full sectors) and keeps the dot product in float32 registers. Every
// warp gets 32 consecutive nonzeros whatever the row lengths are (the COO row index of each
// nonzero, block_rows, is part of the metadata), so skewed rows need no extra balancing;
// neighbouring threads usually share row_j, and their dY_t loads coalesce into one.
#include <algorithm>

#include "csr_common.cuh"
#include "csr_launch.h"

namespace spd_cuda {
namespace {

constexpr int kSddmmThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kSddmmThreads) csr_sddmm_kernel(const SddmmArgs a) {
  constexpr int V = 32 / static_cast<int>(sizeof(T));  // elements per 32-byte run
  const T* __restrict__ at = static_cast<const T*>(a.a_t);
  const T* __restrict__ bt = static_cast<const T*>(a.b_t);
  T* __restrict__ out = static_cast<T*>(a.out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < a.nnz; j += stride) {
    const T* pa = at + static_cast<int64_t>(__ldg(a.rows + j)) * a.ld_t;
    const T* pb = bt + static_cast<int64_t>(__ldg(a.cols + j)) * a.ld_t;
    float acc0 = 0.f, acc1 = 0.f;
    int64_t m = 0;
    for (; m + 2 * V <= a.ld_t; m += 2 * V) {  // two runs per operand in flight
      float x0[V], y0[V], x1[V], y1[V];
      load_vec<T, V>(pa + m, x0);
      load_vec<T, V>(pb + m, y0);
      load_vec<T, V>(pa + m + V, x1);
      load_vec<T, V>(pb + m + V, y1);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        acc0 = fmaf(x0[i], y0[i], acc0);
        acc1 = fmaf(x1[i], y1[i], acc1);
      }
    }
    if (m < a.ld_t) {  // ld_t is a multiple of V: at most one run left
      float x0[V], y0[V];
      load_vec<T, V>(pa + m, x0);
      load_vec<T, V>(pb + m, y0);
#pragma unroll
      for (int i = 0; i < V; ++i) acc0 = fmaf(x0[i], y0[i], acc0);
    }
    out[j * a.out_stride] = from_float<T>(acc0 + acc1);
  }
}

template <typename T>
void launch(const SddmmArgs& args, cudaStream_t stream) {
  const int64_t blocks = std::min<int64_t>((args.nnz + kSddmmThreads - 1) / kSddmmThreads, 1 << 30);
  csr_sddmm_kernel<T><<<static_cast<unsigned>(blocks), kSddmmThreads, 0, stream>>>(args);
}

}  // namespace

void launch_csr_sddmm(DType dtype, const SddmmArgs& args, cudaStream_t stream) {
  if (args.nnz <= 0) return;
  switch (dtype) {
    case DType::kFloat32:
      launch<float>(args, stream);
      break;
    case DType::kFloat16:
      launch<__half>(args, stream);
      break;
    case DType::kBFloat16:
      launch<__nv_bfloat16>(args, stream);
      break;
  }
}

}  // namespace spd_cuda
