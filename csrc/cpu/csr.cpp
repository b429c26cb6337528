// Unstructured (CSR, block (1, 1)) kernels of dds_t, dds and sdd.
//
// A CSR entry multiplies one value into a whole column of the dense operand, so the dense
// operand is packed transposed, MP = 64 rows at a time, into a per-thread float32 panel
// Ap[c][0..64) (8x8 AVX transposes): one entry is then 8 broadcast-FMAs on a contiguous
// 256-byte row, accumulating out[m0..m0+64, n] in 8 registers. Eight such output columns
// are transposed back through a small tile into row-major output, where the bias +
// activation epilogue runs 8 columns wide.
//   dds_t: rows n of W (CSR), A = x;  dds: columns k of W via the CSC metadata, A = dy, the
//   values gathered once per call into CSC order (float32, O(nnz)) so the walk reads them in
//   sequence rather than through perm_t.
// sdd (dW[n, k] = sum_m dy[m, n] x[m, k] at the stored entries) packs both x and dy
// transposed, 64 rows of m at a time, and each entry is a 64-long dot product added to its
// float32 accumulator in panel order, 8 entries of a row per hadd reduction; the m range is cut
// into a few fixed slices summed last.
// Small blocks without a kernel in vblock.cpp also run here: blocks of 1, 2 or 4 lines (4x4,
// 2x1, 1x8, ...) on a 16-row panel where one loaded panel value feeds the block's lines
// (spmm_short), anything else on the element view of the pattern (expand_rows / expand_cols).
#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

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
thread_local Scratch t_gather;   // dds (and block views), on the calling thread: values in line order

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
template <int V, typename T, int ACT, typename TV>
void spmm_impl(const T* a, int64_t lda, int64_t M, int64_t acols, int64_t ocols, const int32_t* offs,
               const int32_t* idx, const int32_t* perm, const TV* vals, const T* bias, T* y, T* z, int nt) {
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

// Output columns n0 .. n0 + nn (nn <= 8) of rows m0 .. m0 + rows from tile (8 rows of P floats,
// row i = column n0 + i over the panel's rows): 8x8 transposes, then the epilogue 8 wide.
template <int P, int ACT, typename T>
inline void store_cols(const float* tile, int nn, int64_t m0, int64_t rows, int64_t n0, int64_t ocols, const T* bias,
                       T* y, T* z) {
  const T* bn = bias ? bias + n0 : nullptr;
  for (int ib = 0; ib * 8 < rows; ++ib) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_load_ps(tile + i * P + ib * 8);
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

template <typename T, int ACT, typename TV>
void spmm(const T* a, int64_t lda, int64_t M, int64_t acols, int64_t ocols, const int32_t* offs, const int32_t* idx,
          const int32_t* perm, const TV* vals, const T* bias, T* y, T* z, int nt) {
  if (acols * 64 * 4 <= L2_PANEL)
    spmm_impl<8, T, ACT, TV>(a, lda, M, acols, ocols, offs, idx, perm, vals, bias, y, z, nt);
  else
    spmm_impl<4, T, ACT, TV>(a, lda, M, acols, ocols, offs, idx, perm, vals, bias, y, z, nt);
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

// Lane r of the result = the sum of the 8 lanes of a[r] (fixed order).
inline __m256 reduce8(const __m256 a[8]) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// sdd_row with 8 entries at a time: 8 independent chains over the two halves of the 64 rows (4
// vectors of dt in registers per half), and the 8 dot products reduced in one hadd tree and
// added to acc[e .. e+8) as one vector (instead of 8 horizontal sums and scalar updates).
inline void sdd_row8(const float* dt, const float* xt, int64_t e0, int64_t e1, const int32_t* ci, float* acc,
                     bool first) {
  int64_t e = e0;
  for (; e + 8 <= e1; e += 8) {
    if (e + 8 + PF < e1)
      for (int q = 0; q < 8; ++q) prefetch_row<8>(xt + int64_t(ci[e + PF + q]) * MP);
    const float* p[8];
    for (int q = 0; q < 8; ++q) p[q] = xt + int64_t(ci[e + q]) * MP;
    __m256 a[8];
    for (int q = 0; q < 8; ++q) a[q] = _mm256_setzero_ps();
    for (int h = 0; h < MP; h += 32) {
      __m256 d[4];
      for (int v = 0; v < 4; ++v) d[v] = _mm256_load_ps(dt + h + 8 * v);
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q)
        for (int v = 0; v < 4; ++v) a[q] = _mm256_fmadd_ps(d[v], _mm256_load_ps(p[q] + h + 8 * v), a[q]);
    }
    const __m256 r = reduce8(a);
    _mm256_storeu_ps(acc + e, first ? r : _mm256_add_ps(_mm256_loadu_ps(acc + e), r));
  }
  sdd_row(dt, xt, e, e1, ci, acc, first);
}

// The sampled product over lines (rows of W): offs (N + 1) / ci walk the stored elements, and
// element e's result goes to dw[operm ? operm[e] : e] (operm: a block pattern expanded to
// elements, below).
template <typename T>
void sdd_impl(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t M, int64_t N, int64_t K, int64_t nnz,
              const int32_t* ro, const int32_t* ci, const int32_t* operm, T* dw, int nt) {
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
        for (int64_t n = 0; n < N; ++n) sdd_row8(dt + n * MP, xt, ro[n], ro[n + 1], ci, out, pan == p0);
      }
    }
#pragma omp for schedule(static)
    for (int64_t e = 0; e < nnz; ++e) {
      float v = part[e];
      for (int64_t s = 1; s < S; ++s) v += part[s * nnz + e];
      dw[operm ? operm[e] : e] = from_f32<T>(v);
    }
  }
}

// ---------------------------------------------------------------------------------- any block
// A block pattern without a kernel of its own (block sides that are not multiples of 8, e.g.
// 4x4, 2x1) runs through the CSR kernels on its element view: each stored block becomes bm
// lines of bk elements (rows of W for dds_t / sdd, columns through the CSC metadata for dds),
// with the position of every element in the block-ordered values. Built per call on the
// calling thread: O(nnz), against O(M nnz) for the product.
struct Lines {
  std::vector<int32_t> offs, idx, vpos;
};
thread_local Lines t_lines;

// Rows of W: line n = nb * bm + i holds, for each stored block e of block row nb in order, the
// elements j < bk at columns kb * bk + j (ascending).
inline const Lines& expand_rows(const Meta& mt) {
  const int bm = mt.bm, bk = mt.bk;
  const int64_t N = mt.n(), nnz = mt.nnzb * bm * bk;
  Lines& L = t_lines;
  L.offs.resize(N + 1);
  L.idx.resize(nnz);
  L.vpos.resize(nnz);
  int64_t t = 0;
  L.offs[0] = 0;
  for (int64_t nb = 0; nb < mt.nbr; ++nb)
    for (int i = 0; i < bm; ++i) {
      for (int64_t e = mt.row_offsets[nb]; e < mt.row_offsets[nb + 1]; ++e)
        for (int j = 0; j < bk; ++j, ++t) {
          L.idx[t] = int32_t(int64_t(mt.col_indices[e]) * bk + j);
          L.vpos[t] = int32_t((e * bm + i) * bk + j);
        }
      L.offs[nb * bm + i + 1] = int32_t(t);
    }
  return L;
}

// Columns of W (CSC, rows ascending): line k = kb * bk + j holds, for each stored block of block
// column kb, the elements i < bm at rows nb * bm + i.
inline const Lines& expand_cols(const Meta& mt) {
  const int bm = mt.bm, bk = mt.bk;
  const int64_t K = mt.k(), nnz = mt.nnzb * bm * bk;
  Lines& L = t_lines;
  L.offs.resize(K + 1);
  L.idx.resize(nnz);
  L.vpos.resize(nnz);
  int64_t t = 0;
  L.offs[0] = 0;
  for (int64_t kb = 0; kb < mt.nbc; ++kb)
    for (int j = 0; j < bk; ++j) {
      for (int64_t q = mt.col_offsets[kb]; q < mt.col_offsets[kb + 1]; ++q) {
        const int64_t e = mt.perm_t[q], nb = mt.row_indices_t[q];
        for (int i = 0; i < bm; ++i, ++t) {
          L.idx[t] = int32_t(nb * bm + i);
          L.vpos[t] = int32_t((e * bm + i) * bk + j);
        }
      }
      L.offs[kb * bk + j + 1] = int32_t(t);
    }
  return L;
}

// vals[pos[t]] as float32 in line order, so the inner loops read the values in sequence instead
// of through a permutation (one gather per call).
template <typename T>
const float* gather_values(const T* vals, const int32_t* pos, int64_t n, int nt) {
  float* g = t_gather.get(size_t(n));
#pragma omp parallel for schedule(static) num_threads(nt) if (n > (1 << 16))
  for (int64_t t = 0; t < n; ++t) g[t] = to_f32(vals[pos[t]]);
  return g;
}

template <typename T, typename TV>
void spmm_act(const T* a, int64_t lda, int64_t M, int64_t acols, int64_t ocols, const int32_t* offs,
              const int32_t* idx, const TV* vals, const T* bias, int act, T* y, T* z, int nt) {
  switch (act) {
    case ACT_RELU: return spmm<T, ACT_RELU>(a, lda, M, acols, ocols, offs, idx, nullptr, vals, bias, y, z, nt);
    case ACT_GELU: return spmm<T, ACT_GELU>(a, lda, M, acols, ocols, offs, idx, nullptr, vals, bias, y, z, nt);
    case ACT_GELU_TANH:
      return spmm<T, ACT_GELU_TANH>(a, lda, M, acols, ocols, offs, idx, nullptr, vals, bias, y, z, nt);
    default: return spmm<T, ACT_NONE>(a, lda, M, acols, ocols, offs, idx, nullptr, vals, bias, y, z, nt);
  }
}

// ---------------------------------------------------------------------------------- short blocks
// Blocks of BM = 1, 2 or 4 lines (4x4, 2x1, 1x8, ...): a 16-row panel of the dense operand packed
// transposed (64 bytes a column: K = 384 is 24 KB, in L1), and for each stored block and each of
// its bk columns, one 2-vector load of the panel feeds the BM lines' 2 accumulators each (a loaded
// input value serves BM outputs, against 1 for CSR). 8 / BM block lines fill an 8-column tile that
// is transposed back through the CSR epilogue. w[(e * BM + i) * bk + j]: the block's (i, j) weight.
template <int BM, typename T, int ACT, typename TV>
void spmm_short(const T* a, int64_t lda, int64_t M, int64_t acols, int64_t nlines, int bk, const int32_t* offs,
                const int32_t* idx, const TV* w, const T* bias, T* y, T* z, int nt) {
  constexpr int P = 16, G = 8 / BM;
  const int64_t ocols = nlines * BM;
  const int64_t npan = (M + P - 1) / P;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t pan = 0; pan < npan; ++pan) {
    const int64_t m0 = pan * P, rows = std::min<int64_t>(P, M - m0);
    float* Ap = t_panel.get(size_t(acols) * P);
    pack_panel_t<P>(a, lda, m0, rows, 0, acols, Ap);
    alignas(32) float tile[8][P];
    for (int64_t nb0 = 0; nb0 < nlines; nb0 += G) {
      for (int g = 0; g < G; ++g) {
        const int64_t nb = nb0 + g;
        __m256 acc[BM][2];
        for (int i = 0; i < BM; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        if (nb < nlines) {
          for (int64_t e = offs[nb]; e < offs[nb + 1]; ++e) {
            const float* ap = Ap + int64_t(idx[e]) * bk * P;
            const TV* we = w + e * BM * bk;
            for (int j = 0; j < bk; ++j) {
              const __m256 a0 = _mm256_load_ps(ap + j * P), a1 = _mm256_load_ps(ap + j * P + 8);
#pragma GCC unroll 4
              for (int i = 0; i < BM; ++i) {
                const __m256 wb = _mm256_set1_ps(to_f32(we[i * bk + j]));
                acc[i][0] = _mm256_fmadd_ps(wb, a0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(wb, a1, acc[i][1]);
              }
            }
          }
        }
        for (int i = 0; i < BM; ++i) {
          _mm256_store_ps(tile[g * BM + i], acc[i][0]);
          _mm256_store_ps(tile[g * BM + i] + 8, acc[i][1]);
        }
      }
      store_cols<P, ACT>(tile[0], int(std::min<int64_t>(8, ocols - nb0 * BM)), m0, rows, nb0 * BM, ocols, bias, y,
                         z);
    }
  }
}

template <int BM, typename T, typename TV>
void spmm_short_act(const T* a, int64_t lda, int64_t M, int64_t acols, int64_t nlines, int bk, const int32_t* offs,
                    const int32_t* idx, const TV* w, const T* bias, int act, T* y, T* z, int nt) {
  switch (act) {
    case ACT_RELU: return spmm_short<BM, T, ACT_RELU>(a, lda, M, acols, nlines, bk, offs, idx, w, bias, y, z, nt);
    case ACT_GELU: return spmm_short<BM, T, ACT_GELU>(a, lda, M, acols, nlines, bk, offs, idx, w, bias, y, z, nt);
    case ACT_GELU_TANH:
      return spmm_short<BM, T, ACT_GELU_TANH>(a, lda, M, acols, nlines, bk, offs, idx, w, bias, y, z, nt);
    default: return spmm_short<BM, T, ACT_NONE>(a, lda, M, acols, nlines, bk, offs, idx, w, bias, y, z, nt);
  }
}

// Whether spmm_short takes blocks of bm lines of bk (both sides at most 32, not CSR).
inline bool short_block(int bm, int bk) { return (bm == 1 || bm == 2 || bm == 4) && bk <= 32 && bm * bk > 1; }

template <typename T, typename TV>
void spmm_short_any(int bm, const T* a, int64_t lda, int64_t M, int64_t acols, int64_t nlines, int bk,
                    const int32_t* offs, const int32_t* idx, const TV* w, const T* bias, int act, T* y, T* z, int nt) {
  if (bm == 1) return spmm_short_act<1>(a, lda, M, acols, nlines, bk, offs, idx, w, bias, act, y, z, nt);
  if (bm == 2) return spmm_short_act<2>(a, lda, M, acols, nlines, bk, offs, idx, w, bias, act, y, z, nt);
  spmm_short_act<4>(a, lda, M, acols, nlines, bk, offs, idx, w, bias, act, y, z, nt);
}

// The blocks in CSC order, each transposed (bk lines of bm): the input grad as a forward of Wᵀ.
template <typename T>
const float* gather_blocks_t(const T* vals, const Meta& mt, int nt) {
  const int bm = mt.bm, bk = mt.bk;
  const int64_t bs = int64_t(bm) * bk;
  float* g = t_gather.get(size_t(mt.nnzb * bs));
#pragma omp parallel for schedule(static) num_threads(nt) if (mt.nnzb * bs > (1 << 16))
  for (int64_t q = 0; q < mt.nnzb; ++q) {
    const T* src = vals + int64_t(mt.perm_t[q]) * bs;
    for (int j = 0; j < bk; ++j)
      for (int i = 0; i < bm; ++i) g[q * bs + j * bm + i] = to_f32(src[i * bk + j]);
  }
  return g;
}

}  // namespace

// CSR (block (1, 1)) or, through the element view, any block shape.
template <typename T>
void csr_dds_t(const T* x, int64_t ldx, int64_t m, const T* values, const Meta& mt, const T* bias, int act, T* y,
               T* z, int nt) {
  if (mt.bm == 1 && mt.bk == 1)
    return spmm_act(x, ldx, m, mt.nbc, mt.nbr, mt.row_offsets, mt.col_indices, values, bias, act, y, z, nt);
  if (short_block(mt.bm, mt.bk))
    return spmm_short_any(mt.bm, x, ldx, m, mt.k(), mt.nbr, mt.bk, mt.row_offsets, mt.col_indices, values, bias, act,
                          y, z, nt);
  const Lines& L = expand_rows(mt);
  const float* g = gather_values(values, L.vpos.data(), int64_t(L.idx.size()), nt);
  spmm_act(x, ldx, m, mt.k(), mt.n(), L.offs.data(), L.idx.data(), g, bias, act, y, z, nt);
}

template <typename T>
void csr_dds(const T* dy, int64_t lddy, int64_t m, const T* values, const Meta& mt, T* dx, int nt) {
  const T* nob = nullptr;
  T* noz = nullptr;
  if (mt.bm == 1 && mt.bk == 1) {
    const float* g = gather_values(values, mt.perm_t, mt.nnzb, nt);
    return spmm_act(dy, lddy, m, mt.nbr, mt.nbc, mt.col_offsets, mt.row_indices_t, g, nob, ACT_NONE, dx, noz, nt);
  }
  if (short_block(mt.bk, mt.bm)) {
    const float* g = gather_blocks_t(values, mt, nt);
    return spmm_short_any(mt.bk, dy, lddy, m, mt.n(), mt.nbc, mt.bm, mt.col_offsets, mt.row_indices_t, g, nob,
                          ACT_NONE, dx, noz, nt);
  }
  const Lines& L = expand_cols(mt);
  const float* g = gather_values(values, L.vpos.data(), int64_t(L.idx.size()), nt);
  spmm_act(dy, lddy, m, mt.n(), mt.k(), L.offs.data(), L.idx.data(), g, nob, ACT_NONE, dx, noz, nt);
}

template <typename T>
void csr_sdd(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t m, const Meta& mt, T* dw, int nt) {
  if (mt.bm == 1 && mt.bk == 1)
    return sdd_impl<T>(dy, lddy, x, ldx, m, mt.nbr, mt.nbc, mt.nnzb, mt.row_offsets, mt.col_indices, nullptr, dw,
                       nt);
  const Lines& L = expand_rows(mt);
  sdd_impl<T>(dy, lddy, x, ldx, m, mt.n(), mt.k(), int64_t(L.idx.size()), L.offs.data(), L.idx.data(),
              L.vpos.data(), dw, nt);
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
