// Unstructured (CSR, block (1, 1)) kernels of dds_t, dds and sdd.
//
// A CSR entry multiplies one value into a whole column of the dense operand, so the dense
// operand is packed transposed, MP = 64 rows at a time, into a per-thread float32 panel
// Ap[c][0..64) (8x8 AVX transposes): one entry is then 8 broadcast-FMAs on a contiguous
// 256-byte row, accumulating out[m0..m0+64, n] in 8 registers. Eight such output columns
// are transposed back through a small tile into row-major output, where the bias +
// activation epilogue runs 8 columns wide.
//   dds_t: rows n of W (CSR), A = x;  dds: columns k of W via the CSC metadata
//   (row_indices_t, perm_t into the values: no transposed copy), A = dy.
// sdd (dW[n, k] = sum_m dy[m, n] x[m, k] at the stored entries) packs both x and dy
// transposed, 64 rows of m at a time, and each entry is a 64-long dot product added to its
// float32 accumulator in panel order; the m range is cut into a few fixed slices summed last.
#include <omp.h>

#include <algorithm>
#include <type_traits>

#include "kernels.h"

#if defined(__AVX2__) && defined(__FMA__)

namespace spd {
namespace cpu {
namespace {

constexpr int MP = 64;                  // sdd: rows of m per packed panel (8 vectors)
constexpr int PF = 8;                   // entries ahead whose panel rows are prefetched
constexpr int SDD_SLICES = 4;           // sdd: fixed slices of the m reduction
constexpr int64_t L2_PANEL = 320 << 10; // dds_t/dds: largest 64-row panel (bytes) kept

thread_local Scratch t_panel;    // per worker: one packed panel
thread_local Scratch t_xt, t_dt;  // sdd, per worker: packed panels of x and dy
thread_local Scratch t_acc32;    // sdd, on the calling thread: float32 sums of the m slices

// Ap[c * P + i] = a[m0 + i, c0 + c] for c in [c0, c1), i < rows; zero for rows <= i < P.
template <int P, typename T>
inline void pack_panel_t(const T* a, int64_t lda, int64_t m0, int64_t rows, int64_t c0, int64_t c1, float* Ap) {
  int64_t c = c0;
  for (; c + 8 <= c1; c += 8) {
    for (int ib = 0; ib < P / 8; ++ib) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        const int64_t row = ib * 8 + i;
        r[i] = row < rows ? ld8(a + (m0 + row) * lda + c) : _mm256_setzero_ps();
      }
      transpose8(r);
      for (int i = 0; i < 8; ++i) _mm256_store_ps(Ap + (c + i) * P + ib * 8, r[i]);
    }
  }
  for (; c < c1; ++c)
    for (int i = 0; i < P; ++i) Ap[c * P + i] = i < rows ? to_f32(a[(m0 + i) * lda + c]) : 0.0f;
}

template <int V>
inline void prefetch_row(const float* p) {
  for (int v = 0; v < V; v += 2) _mm_prefetch(reinterpret_cast<const char*>(p + 8 * v), _MM_HINT_T0);
}

// acc[0..V) += sum_{e in [e0, e1)} vals[e] * Ap[idx[e]][0..8V), V vectors of one output column.
template <int V, typename T>
inline void spmm_row(__m256* acc, const float* Ap, int64_t e0, int64_t e1, const int32_t* idx, const int32_t* perm,
                     const T* vals) {
  constexpr int P = 8 * V;
  for (int64_t e = e0; e < e1; ++e) {
    if (e + PF < e1) {
      prefetch_row<V>(Ap + int64_t(idx[e + PF]) * P);
      // through the CSC permutation the values are read out of order: fetch them ahead too
      if (perm) _mm_prefetch(reinterpret_cast<const char*>(vals + perm[e + PF]), _MM_HINT_T0);
    }
    const __m256 w = _mm256_set1_ps(to_f32(vals[perm ? perm[e] : e]));
    const float* ap = Ap + int64_t(idx[e]) * P;
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[v] = _mm256_fmadd_ps(w, _mm256_load_ps(ap + 8 * v), acc[v]);
  }
}

// Two output columns at once, for V = 4: their entries interleaved give 8 independent chains.
template <int V, typename T>
inline void spmm_row2(__m256* acc_a, __m256* acc_b, const float* Ap, int64_t a0, int64_t a1, int64_t b0, int64_t b1,
                      const int32_t* idx, const int32_t* perm, const T* vals) {
  constexpr int P = 8 * V;
  const int64_t common = std::min(a1 - a0, b1 - b0);
  for (int64_t t = 0; t < common; ++t) {
    const int64_t ea = a0 + t, eb = b0 + t;
    if (t + PF < common) {
      prefetch_row<V>(Ap + int64_t(idx[ea + PF]) * P);
      prefetch_row<V>(Ap + int64_t(idx[eb + PF]) * P);
      if (perm) {
        _mm_prefetch(reinterpret_cast<const char*>(vals + perm[ea + PF]), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(vals + perm[eb + PF]), _MM_HINT_T0);
      }
    }
    const __m256 wa = _mm256_set1_ps(to_f32(vals[perm ? perm[ea] : ea]));
    const __m256 wb = _mm256_set1_ps(to_f32(vals[perm ? perm[eb] : eb]));
    const float* pa = Ap + int64_t(idx[ea]) * P;
    const float* pb = Ap + int64_t(idx[eb]) * P;
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      acc_a[v] = _mm256_fmadd_ps(wa, _mm256_load_ps(pa + 8 * v), acc_a[v]);
      acc_b[v] = _mm256_fmadd_ps(wb, _mm256_load_ps(pb + 8 * v), acc_b[v]);
    }
  }
  spmm_row<V>(acc_a, Ap, a0 + common, a1, idx, perm, vals);
  spmm_row<V>(acc_b, Ap, b0 + common, b1, idx, perm, vals);
}

// ---------------------------------------------------------------------------------- dds_t, dds
// out[m, n] = epilogue(sum_{e in line n} vals[perm ? perm[e] : e] * a[m, idx[e]]), out (M, ocols).
// Panels of P = 8V rows of a: V = 8 when the packed panel (acols x P floats) fits in L2, else
// V = 4 with two output columns interleaved.
template <int V, typename T, int ACT>
void spmm_impl(const T* a, int64_t lda, int64_t M, int64_t acols, int64_t ocols, const int32_t* offs,
               const int32_t* idx, const int32_t* perm, const T* vals, const T* bias, T* y, T* z, int nt) {
  constexpr int P = 8 * V;
  const int64_t npan = (M + P - 1) / P;
  // (no streaming stores here: a task writes 32 bytes of each row at a time, half a cache line,
  // and partial lines streamed to memory cost more than they save)
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t pan = 0; pan < npan; ++pan) {
    const int64_t m0 = pan * P, rows = std::min<int64_t>(P, M - m0);
    float* Ap = t_panel.get(size_t(acols) * P);
    pack_panel_t<P>(a, lda, m0, rows, 0, acols, Ap);
    alignas(32) float tile[8][P];
    for (int64_t n0 = 0; n0 < ocols; n0 += 8) {
      const int nn = int(std::min<int64_t>(8, ocols - n0));
      int i = 0;
      if constexpr (V == 4) {
        for (; i + 2 <= nn; i += 2) {
          __m256 acc_a[V], acc_b[V];
          for (int v = 0; v < V; ++v) acc_a[v] = acc_b[v] = _mm256_setzero_ps();
          spmm_row2<V>(acc_a, acc_b, Ap, offs[n0 + i], offs[n0 + i + 1], offs[n0 + i + 1], offs[n0 + i + 2], idx,
                       perm, vals);
          for (int v = 0; v < V; ++v) {
            _mm256_store_ps(tile[i] + 8 * v, acc_a[v]);
            _mm256_store_ps(tile[i + 1] + 8 * v, acc_b[v]);
          }
        }
      }
      for (; i < nn; ++i) {
        __m256 acc[V];
        for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_ps();
        spmm_row<V>(acc, Ap, offs[n0 + i], offs[n0 + i + 1], idx, perm, vals);
        for (int v = 0; v < V; ++v) _mm256_store_ps(tile[i] + 8 * v, acc[v]);
      }
      for (int i = nn; i < 8; ++i)
        for (int v = 0; v < V; ++v) _mm256_store_ps(tile[i] + 8 * v, _mm256_setzero_ps());
      const T* bn = bias ? bias + n0 : nullptr;
      for (int ib = 0; ib * 8 < rows; ++ib) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_load_ps(tile[i] + ib * 8);
        transpose8(r);  // r[i] = out[m0 + ib*8 + i, n0 .. n0+8)
        const int mm = int(std::min<int64_t>(8, rows - ib * 8));
        for (int i = 0; i < mm; ++i) {
          const int64_t o = (m0 + ib * 8 + i) * ocols + n0;
          if (nn == 8) {
            epilogue8<ACT>(r[i], bn, y + o, z ? z + o : nullptr);
          } else {
            alignas(32) float buf[8];
            _mm256_store_ps(buf, r[i]);
            for (int j = 0; j < nn; ++j) epilogue1<ACT>(buf[j], bn ? bn + j : nullptr, y + o + j, z ? z + o + j : nullptr);
          }
        }
      }
    }
  }
}

template <typename T, int ACT>
void spmm(const T* a, int64_t lda, int64_t M, int64_t acols, int64_t ocols, const int32_t* offs, const int32_t* idx,
          const int32_t* perm, const T* vals, const T* bias, T* y, T* z, int nt) {
  if (acols * 64 * 4 <= L2_PANEL)
    spmm_impl<8, T, ACT>(a, lda, M, acols, ocols, offs, idx, perm, vals, bias, y, z, nt);
  else
    spmm_impl<4, T, ACT>(a, lda, M, acols, ocols, offs, idx, perm, vals, bias, y, z, nt);
}

// ---------------------------------------------------------------------------------- sdd
// acc[e] (+)= dot(dt[0..64), xt[ci[e]][0..64)) for the entries e of one row: 4 entries at a
// time (4 independent chains), one horizontal sum each.
inline void sdd_row(const float* dt, const float* xt, int64_t e0, int64_t e1, const int32_t* ci, float* acc,
                    bool first) {
  if (e0 == e1) return;
  __m256 d[8];
  for (int v = 0; v < 8; ++v) d[v] = _mm256_load_ps(dt + 8 * v);
  int64_t e = e0;
  for (; e + 4 <= e1; e += 4) {
    if (e + 4 + PF < e1)
      for (int q = 0; q < 4; ++q) prefetch_row<8>(xt + int64_t(ci[e + PF + q]) * MP);
    const float* p0 = xt + int64_t(ci[e]) * MP;
    const float* p1 = xt + int64_t(ci[e + 1]) * MP;
    const float* p2 = xt + int64_t(ci[e + 2]) * MP;
    const float* p3 = xt + int64_t(ci[e + 3]) * MP;
    __m256 a0 = _mm256_mul_ps(d[0], _mm256_load_ps(p0));
    __m256 a1 = _mm256_mul_ps(d[0], _mm256_load_ps(p1));
    __m256 a2 = _mm256_mul_ps(d[0], _mm256_load_ps(p2));
    __m256 a3 = _mm256_mul_ps(d[0], _mm256_load_ps(p3));
    for (int v = 1; v < 8; ++v) {
      a0 = _mm256_fmadd_ps(d[v], _mm256_load_ps(p0 + 8 * v), a0);
      a1 = _mm256_fmadd_ps(d[v], _mm256_load_ps(p1 + 8 * v), a1);
      a2 = _mm256_fmadd_ps(d[v], _mm256_load_ps(p2 + 8 * v), a2);
      a3 = _mm256_fmadd_ps(d[v], _mm256_load_ps(p3 + 8 * v), a3);
    }
    const float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
    acc[e] = first ? s0 : acc[e] + s0;
    acc[e + 1] = first ? s1 : acc[e + 1] + s1;
    acc[e + 2] = first ? s2 : acc[e + 2] + s2;
    acc[e + 3] = first ? s3 : acc[e + 3] + s3;
  }
  for (; e < e1; ++e) {
    const float* p0 = xt + int64_t(ci[e]) * MP;
    __m256 a0 = _mm256_mul_ps(d[0], _mm256_load_ps(p0));
    for (int v = 1; v < 8; ++v) a0 = _mm256_fmadd_ps(d[v], _mm256_load_ps(p0 + 8 * v), a0);
    const float s0 = hsum(a0);
    acc[e] = first ? s0 : acc[e] + s0;
  }
}

template <typename T>
void sdd_impl(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t M, const Meta& mt, T* dw, int nt) {
  const int64_t N = mt.nbr, K = mt.nbc, nnz = mt.nnzb;
  const int32_t* ro = mt.row_offsets;
  const int32_t* ci = mt.col_indices;
  // The m reduction is split into S fixed slices (S depends on M only, not on the threads);
  // each slice is one task that packs its own panels and sums into its own float32 buffer,
  // and the buffers are added in slice order. No barrier inside the reduction, and the same
  // bits for any thread count.
  const int64_t npan = (M + MP - 1) / MP;
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(SDD_SLICES, npan));
  float* part = t_acc32.get(size_t(S) * nnz);
  if (M == 0) std::fill(part, part + nnz, 0.0f);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t s = 0; s < S; ++s) {
      float* xt = t_xt.get(size_t(K) * MP);
      float* dt = t_dt.get(size_t(N) * MP);
      float* out = part + s * nnz;
      const int64_t p0 = s * npan / S, p1 = (s + 1) * npan / S;
      for (int64_t pan = p0; pan < p1; ++pan) {
        const int64_t m0 = pan * MP, rows = std::min<int64_t>(MP, M - m0);
        pack_panel_t<MP>(x, ldx, m0, rows, 0, K, xt);
        pack_panel_t<MP>(dy, lddy, m0, rows, 0, N, dt);
        for (int64_t n = 0; n < N; ++n) sdd_row(dt + n * MP, xt, ro[n], ro[n + 1], ci, out, pan == p0);
      }
    }
#pragma omp for schedule(static)
    for (int64_t e = 0; e < nnz; ++e) {
      float v = part[e];
      for (int64_t s = 1; s < S; ++s) v += part[s * nnz + e];
      dw[e] = from_f32<T>(v);
    }
  }
}

}  // namespace

template <typename T>
void csr_dds_t(const T* x, int64_t ldx, int64_t m, const T* values, const Meta& mt, const T* bias, int act, T* y,
               T* z, int nt) {
  const int64_t N = mt.nbr, K = mt.nbc;
  const int32_t* ro = mt.row_offsets;
  const int32_t* ci = mt.col_indices;
  switch (act) {
    case ACT_RELU: return spmm<T, ACT_RELU>(x, ldx, m, K, N, ro, ci, nullptr, values, bias, y, z, nt);
    case ACT_GELU: return spmm<T, ACT_GELU>(x, ldx, m, K, N, ro, ci, nullptr, values, bias, y, z, nt);
    case ACT_GELU_TANH:
      return spmm<T, ACT_GELU_TANH>(x, ldx, m, K, N, ro, ci, nullptr, values, bias, y, z, nt);
    default: return spmm<T, ACT_NONE>(x, ldx, m, K, N, ro, ci, nullptr, values, bias, y, z, nt);
  }
}

template <typename T>
void csr_dds(const T* dy, int64_t lddy, int64_t m, const T* values, const Meta& mt, T* dx, int nt) {
  spmm<T, ACT_NONE>(dy, lddy, m, mt.nbr, mt.nbc, mt.col_offsets, mt.row_indices_t, mt.perm_t, values,
                         static_cast<const T*>(nullptr), dx, static_cast<T*>(nullptr), nt);
}

template <typename T>
void csr_sdd(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t m, const Meta& mt, T* dw, int nt) {
  sdd_impl<T>(dy, lddy, x, ldx, m, mt, dw, nt);
}

#define SPD_INSTANTIATE(T)                                                                                  \
  template void csr_dds_t<T>(const T*, int64_t, int64_t, const T*, const Meta&, const T*, int, T*, T*, int); \
  template void csr_dds<T>(const T*, int64_t, int64_t, const T*, const Meta&, T*, int);                      \
  template void csr_sdd<T>(const T*, int64_t, const T*, int64_t, int64_t, const Meta&, T*, int);
SPD_INSTANTIATE(float)
SPD_INSTANTIATE(bf16)
#undef SPD_INSTANTIATE

}  // namespace cpu
}  // namespace spd

#endif  // __AVX2__ && __FMA__
