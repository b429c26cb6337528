// Transpose (and zero-pad) a dense operand so the CSR kernels read it along M with
// coalesced, full-width vector loads. Torch-free.
#include <algorithm>

#include "csr_common.cuh"
#include "csr_launch.h"

namespace spd_cuda {
namespace {

constexpr int kTile = 32;
constexpr int kRowsPerPass = 8;  // block (32, 8): each thread moves 4 elements per tile

// out[c * ld_out + m] = m < rows ? in[m * s0 + c * s1] : 0. Grid: x over tiles of m (up to
// ld_out), y strides over tiles of c. The tile goes through shared memory so both the read
// (along c) and the write (along m) are coalesced; the +1 column avoids bank conflicts.
template <typename T>
__global__ void __launch_bounds__(kTile* kRowsPerPass)
    transpose_pad_kernel(const T* __restrict__ in, int64_t rows, int64_t cols, int64_t s0, int64_t s1,
                         T* __restrict__ out, int64_t ld_out) {
  __shared__ T tile[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t c_tiles = (cols + kTile - 1) / kTile;
  const T zero = from_float<T>(0.f);
  for (int64_t ct = blockIdx.y; ct < c_tiles; ct += gridDim.y) {
    const int64_t c0 = ct * kTile;
    {
      const int64_t c = c0 + tx;
#pragma unroll
      for (int k = ty; k < kTile; k += kRowsPerPass) {
        const int64_t m = m0 + k;
        tile[k][tx] = (m < rows && c < cols) ? in[m * s0 + c * s1] : zero;
      }
    }
    __syncthreads();
    {
      const int64_t m = m0 + tx;
#pragma unroll
      for (int k = ty; k < kTile; k += kRowsPerPass) {
        const int64_t c = c0 + k;
        if (c < cols && m < ld_out) out[c * ld_out + m] = tile[tx][k];
      }
    }
    __syncthreads();
  }
}

template <typename T>
void launch(const void* in, int64_t rows, int64_t cols, int64_t s0, int64_t s1, void* out, int64_t ld_out,
            cudaStream_t stream) {
  const int64_t m_tiles = (ld_out + kTile - 1) / kTile;
  const int64_t c_tiles = (cols + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(std::min<int64_t>(c_tiles, 65535)));
  const dim3 block(kTile, kRowsPerPass);
  transpose_pad_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(in), rows, cols, s0, s1,
                                                      static_cast<T*>(out), ld_out);
}

}  // namespace

void launch_transpose_pad(DType dtype, const void* in, int64_t rows, int64_t cols, int64_t stride0,
                          int64_t stride1, void* out, int64_t ld_out, cudaStream_t stream) {
  if (cols <= 0 || ld_out <= 0) return;
  switch (dtype) {
    case DType::kFloat32:
      launch<float>(in, rows, cols, stride0, stride1, out, ld_out, stream);
      break;
    case DType::kFloat16:
      launch<__half>(in, rows, cols, stride0, stride1, out, ld_out, stream);
      break;
    case DType::kBFloat16:
      launch<__nv_bfloat16>(in, rows, cols, stride0, stride1, out, ld_out, stream);
      break;
  }
}

}  // namespace spd_cuda
