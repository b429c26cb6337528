// The CPU kernels of the three products of a sparse linear layer, W (N, K) sparse:
//   dds_t  y = act(x·Wᵀ + bias)   (and z = x·Wᵀ + bias)     x (M, K) -> y, z (M, N)
//   dds    dx = dy·W                                        dy (M, N) -> dx (M, K)
//   sdd    dW = (dyᵀ·x) at the stored blocks                -> (nnz_blocks, bm, bk)
// Dense operands have unit column stride and any row stride (ld*); outputs are contiguous.
// T is float or bf16 (float32 arithmetic). Each output element is computed by one thread in
// a fixed order, so results do not depend on the number of threads.
#pragma once

#include <cstdint>

#include "simd.h"

namespace spd {
namespace cpu {

struct Meta {
  const int32_t* row_offsets;    // (nbr + 1)
  const int32_t* col_indices;    // (nnzb)
  const int32_t* block_rows;     // (nnzb)
  const int32_t* col_offsets;    // (nbc + 1)
  const int32_t* row_indices_t;  // (nnzb), CSC order
  const int32_t* perm_t;         // (nnzb), CSC entry -> stored block
  int64_t nbr, nbc, nnzb;
  int bm, bk;
  int64_t n() const { return nbr * bm; }
  int64_t k() const { return nbc * bk; }
};

// Whether the AVX2 kernels take this block shape: CSR (1, 1), bm and bk multiples of 8 (BSR), or
// a small block with both sides at most 32 (vblock.cpp: (8k, 1) vectors, the rest as elements).
inline bool bsr_block(int bm, int bk) { return bm % 8 == 0 && bk % 8 == 0; }
inline bool block_supported(int bm, int bk) { return bsr_block(bm, bk) || (bm <= 32 && bk <= 32); }

template <typename T>
void dds_t(const T* x, int64_t ldx, int64_t m, const T* values, const Meta& meta, const T* bias, int act,
           T* y, T* z, int nthreads);

template <typename T>
void dds(const T* dy, int64_t lddy, int64_t m, const T* values, const Meta& meta, T* dx, int nthreads);

template <typename T>
void sdd(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t m, const Meta& meta, T* dw,
         int nthreads);

// Layout-specific implementations (bsr.cpp, csr.cpp: CSR and any block as elements, vblock.cpp).
template <typename T>
void bsr_dds_t(const T* x, int64_t ldx, int64_t m, const T* values, const Meta& meta, const T* bias,
               int act, T* y, T* z, int nthreads);
template <typename T>
void bsr_dds(const T* dy, int64_t lddy, int64_t m, const T* values, const Meta& meta, T* dx, int nthreads);
template <typename T>
void bsr_sdd(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t m, const Meta& meta, T* dw,
             int nthreads);
template <typename T>
void csr_dds_t(const T* x, int64_t ldx, int64_t m, const T* values, const Meta& meta, const T* bias,
               int act, T* y, T* z, int nthreads);
template <typename T>
void csr_dds(const T* dy, int64_t lddy, int64_t m, const T* values, const Meta& meta, T* dx, int nthreads);
template <typename T>
void csr_sdd(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t m, const Meta& meta, T* dw,
             int nthreads);

template <typename T>
void vblock_dds_t(const T* x, int64_t ldx, int64_t m, const T* values, const Meta& meta, const T* bias,
                  int act, T* y, T* z, int nthreads);
template <typename T>
void vblock_dds(const T* dy, int64_t lddy, int64_t m, const T* values, const Meta& meta, T* dx, int nthreads);
template <typename T>
void vblock_sdd(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t m, const Meta& meta, T* dw,
                int nthreads);

template <typename T>
inline void dds_t(const T* x, int64_t ldx, int64_t m, const T* values, const Meta& meta, const T* bias,
                  int act, T* y, T* z, int nthreads) {
  if (meta.bm == 1 && meta.bk == 1)
    csr_dds_t(x, ldx, m, values, meta, bias, act, y, z, nthreads);
  else if (!bsr_block(meta.bm, meta.bk))
    vblock_dds_t(x, ldx, m, values, meta, bias, act, y, z, nthreads);
  else
    bsr_dds_t(x, ldx, m, values, meta, bias, act, y, z, nthreads);
}

template <typename T>
inline void dds(const T* dy, int64_t lddy, int64_t m, const T* values, const Meta& meta, T* dx,
                int nthreads) {
  if (meta.bm == 1 && meta.bk == 1)
    csr_dds(dy, lddy, m, values, meta, dx, nthreads);
  else if (!bsr_block(meta.bm, meta.bk))
    vblock_dds(dy, lddy, m, values, meta, dx, nthreads);
  else
    bsr_dds(dy, lddy, m, values, meta, dx, nthreads);
}

template <typename T>
inline void sdd(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t m, const Meta& meta, T* dw,
                int nthreads) {
  if (meta.bm == 1 && meta.bk == 1)
    csr_sdd(dy, lddy, x, ldx, m, meta, dw, nthreads);
  else if (!bsr_block(meta.bm, meta.bk))
    vblock_sdd(dy, lddy, x, ldx, m, meta, dw, nthreads);
  else
    bsr_sdd(dy, lddy, x, ldx, m, meta, dw, nthreads);
}

}  // namespace cpu
}  // namespace spd
