// Column-vector blocks (bm, 1), bm a multiple of 8 (8x1, 16x1, 24x1, 32x1): bm consecutive output
// features share one input column, so one loaded input value feeds bm outputs and the bm weights
// of a block are one or two contiguous vectors. Other small blocks (4x4, 2x1, 8x2, ...) take the
// CSR kernels on their element view (csr.cpp).
//   dds_t: 12 rows of x packed transposed (16 floats a column: a block's 12 broadcasts read one
//          cache line), then for every block row a 6x16 (or 12x8) register tile of y: for each
//          stored block, x[m, k] broadcast for the tile's rows, the block's weights loaded as
//          vectors. y is written row-major (no transpose).
//   dds:   dx[m, k] = sum over the blocks of column k of dot(dy[m, nb*bm .. +bm), w_block): 8 rows
//          of dy repacked in 8-column chunks (one base address per chunk), an 8x8 tile of dx,
//          8 vector accumulators per column reduced lane-wise (hadd tree) and the 8 columns
//          transposed into rows; the weights gathered once per call into CSC order.
//   sdd:   x and dy packed transposed 64 rows of m at a time (as the CSR sdd); a block's 64-long
//          column of x sits in 8 registers and is dotted with the bm rows of dy of its block row
//          (in L1 while that row's blocks run), eight dot products reduced in one hadd tree.
//          m in fixed slices summed in order: the same bits for any thread count.
#include <omp.h>

#include <algorithm>
#include <type_traits>

#include "kernels.h"

#if defined(__AVX2__) && defined(__FMA__)

namespace spd {
namespace cpu {
namespace {

constexpr int MP = 64;           // sdd: rows of m per packed panel
constexpr int SDD_SLICES = 4;    // sdd: fixed slices of the m reduction
constexpr int XP = 16;           // dds_t: a 12-row tile of x packed transposed, 16 floats a column

thread_local Scratch t_xt, t_dt;  // sdd, per worker: packed panels of x and dy
thread_local Scratch t_part;      // sdd, on the calling thread: float32 sums of the m slices
thread_local Scratch t_wt;        // dds, on the calling thread: the weights in CSC order

// Ap[c * P + i] = a[m0 + i, c] for c < cols, i < rows; zero for rows <= i < P.
template <int P, typename T>
inline void pack_panel_t(const T* a, int64_t lda, int64_t m0, int64_t rows, int64_t cols, float* Ap) {
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
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
  for (; c < cols; ++c)
    for (int i = 0; i < P; ++i) Ap[c * P + i] = i < rows ? to_f32(a[(m0 + i) * lda + c]) : 0.0f;
}

// Lane r of the result = the sum of the 8 lanes of a[r] (fixed order).
inline __m256 reduce8(const __m256 a[8]) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// ---------------------------------------------------------------------------------- dds_t
// acc[r][c] = sum over the blocks e of one block row of x[r, ci[e]] * w_e[8c .. 8c+8), r < R
// (r < rows when TAIL); xt: the tile's rows packed transposed (xt[k * 16 + r] = x[r, k]), so the
// R broadcasts of a block read one cache line at constant offsets; w points at the first weight
// of the tile's columns in block 0.
template <int R, int C, bool TAIL, typename T>
inline void fwd_tile(__m256 (&acc)[R][C], const float* xt, int rows, const T* w, int bm, int64_t e0, int64_t e1,
                     const int32_t* ci) {
  // local accumulators, copied out once: with acc itself in the loop GCC kept it in memory and
  // stored every accumulator after each FMA (one store per FMA bounds the loop)
  __m256 a[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) a[r][c] = _mm256_setzero_ps();
  for (int64_t e = e0; e < e1; ++e) {
    const float* xk = xt + int64_t(ci[e]) * XP;
    const T* we = w + e * bm;
    __m256 wv[C];
    for (int c = 0; c < C; ++c) wv[c] = ld8(we + 8 * c);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      if (!TAIL || r < rows) {
        const __m256 xb = _mm256_broadcast_ss(xk + r);
#pragma GCC unroll 2
        for (int c = 0; c < C; ++c) a[r][c] = _mm256_fmadd_ps(xb, wv[c], a[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = a[r][c];
}

template <int R, int C, bool TAIL, int ACT, typename T>
inline void fwd_store(__m256 (&acc)[R][C], int rows, const T* bias, T* y, T* z, int64_t ldy) {
  constexpr bool second = kActSecondPass<ACT, T>;
  for (int r = 0; r < R; ++r) {
    if (TAIL && r >= rows) break;
    for (int c = 0; c < C; ++c) {
      const T* b = bias ? bias + 8 * c : nullptr;
      T* zz = z ? z + r * ldy + 8 * c : nullptr;
      if constexpr (second)
        epilogue8<ACT_NONE>(acc[r][c], b, y + r * ldy + 8 * c, zz);
      else
        epilogue8<ACT>(acc[r][c], b, y + r * ldy + 8 * c, zz);
    }
  }
  if constexpr (second) act_rows<ACT>(reinterpret_cast<float*>(y), ldy, TAIL ? rows : R, C);
}

// One R-row tile (rows < R when TAIL) of output columns [col, col + 8C) of a block row.
template <int R, int C, bool TAIL, int ACT, typename T>
inline void fwd_one(const float* xt, int rows, const T* values, int bm, int64_t e0, int64_t e1, const int32_t* ci,
                    int64_t col, const T* bias, T* y, T* z, int64_t N) {
  __m256 acc[R][C];
  fwd_tile<R, C, TAIL>(acc, xt, rows, values + (col % bm), bm, e0, e1, ci);
  fwd_store<R, C, TAIL, ACT>(acc, rows, bias ? bias + col : nullptr, y + col, z ? z + col : nullptr, N);
}

// Rows [m, m + rows) (rows <= 12) of every output column of block rows [nb0, nb1): the 12 rows of x
// stay in L1 while the block rows' weights stream through (16 columns as two 6-row tiles, 8 as
// one 12-row tile).
template <bool TAIL, int ACT, typename T>
inline void fwd_rows(const T* x, int64_t ldx, int64_t K, int64_t m, int rows, const T* values, int bm, int64_t nb0,
                     int64_t nb1, const int32_t* ro, const int32_t* ci, const T* bias, T* y, T* z, int64_t N) {
  float* xt = t_xt.get(size_t(K) * XP);
  pack_panel_t<XP>(x, ldx, m, rows, K, xt);
  T* ym = y + m * N;
  T* zm = z ? z + m * N : nullptr;
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const int64_t e0 = ro[nb], e1 = ro[nb + 1];
    int c = 0;
    for (; c + 16 <= bm; c += 16) {
      const int64_t col = nb * bm + c;
      if (!TAIL) {
        fwd_one<6, 2, false, ACT>(xt, 6, values, bm, e0, e1, ci, col, bias, ym, zm, N);
        fwd_one<6, 2, false, ACT>(xt + 6, 6, values, bm, e0, e1, ci, col, bias, ym + 6 * N, zm ? zm + 6 * N : nullptr,
                                  N);
      } else {
        for (int r = 0; r < rows; r += 6)
          fwd_one<6, 2, true, ACT>(xt + r, std::min(6, rows - r), values, bm, e0, e1, ci, col, bias, ym + r * N,
                                   zm ? zm + r * N : nullptr, N);
      }
    }
    if (c < bm) fwd_one<12, 1, TAIL, ACT>(xt, rows, values, bm, e0, e1, ci, nb * bm + c, bias, ym, zm, N);
  }
}

template <typename T, int ACT>
void vec_dds_t(const T* x, int64_t ldx, int64_t M, const T* values, const Meta& mt, const T* bias, T* y, T* z,
               int nt) {
  const int bm = mt.bm;
  const int64_t N = mt.n(), K = mt.k(), nbr = mt.nbr;
  // A task is MR rows (a multiple of 12) and a group of block rows; enough tasks for the threads.
  constexpr int64_t MR = 48;
  const int64_t npan = (M + MR - 1) / MR;
  const int64_t ngr = std::min<int64_t>(nbr, std::max<int64_t>(1, (4 * int64_t(nt) + npan - 1) / npan));
  const int32_t* ro = mt.row_offsets;
  const int32_t* ci = mt.col_indices;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < npan * ngr; ++t) {
    const int64_t pan = t / ngr, g = t % ngr;
    const int64_t m1 = std::min(M, pan * MR + MR);
    const int64_t nb0 = g * nbr / ngr, nb1 = (g + 1) * nbr / ngr;
    for (int64_t m = pan * MR; m < m1; m += 12) {
      if (m + 12 <= m1)
        fwd_rows<false, ACT>(x, ldx, K, m, 12, values, bm, nb0, nb1, ro, ci, bias, y, z, N);
      else
        fwd_rows<true, ACT>(x, ldx, K, m, int(m1 - m), values, bm, nb0, nb1, ro, ci, bias, y, z, N);
    }
  }
}

// ---------------------------------------------------------------------------------- dds
// dx[m0 + r, k0 + j] for r < rows, j < cols: column k of W holds the blocks of CSC entries
// q in [col_offsets[k], col_offsets[k + 1]) (block row row_indices_t[q], weights wt[q * bm ..]).
// dp: the 8 rows of dy in 8-column chunks, dp[(n / 8) * 64 + r * 8 + n % 8] = dy[m0 + r, n], so
// the 8 rows of one chunk are one base address and constant offsets (zero rows past the tail).
inline void bwd_tile(const float* dp, int rows, int64_t k0, int cols, const float* wt, int bm, const Meta& mt,
                     float (&out)[8][8]) {
  __m256 s[8];
  for (int j = 0; j < 8; ++j) {
    if (j >= cols) {
      s[j] = _mm256_setzero_ps();
      continue;
    }
    __m256 acc[8];
    for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
    const int64_t q0 = mt.col_offsets[k0 + j], q1 = mt.col_offsets[k0 + j + 1];
    for (int64_t q = q0; q < q1; ++q) {
      const float* w = wt + q * bm;
      const float* d = dp + int64_t(mt.row_indices_t[q]) * bm * 8;
      for (int c = 0; c < bm; c += 8) {
        const __m256 wv = _mm256_loadu_ps(w + c);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(_mm256_load_ps(d + c * 8 + r * 8), wv, acc[r]);
      }
    }
    s[j] = reduce8(acc);  // lane r: dx[m0 + r, k0 + j]
  }
  transpose8(s);  // s[r] = dx[m0 + r, k0 .. k0 + 8)
  for (int r = 0; r < 8; ++r) _mm256_store_ps(out[r], s[r]);
  (void)rows;
}

template <typename T>
void vec_dds(const T* dy, int64_t lddy, int64_t M, const T* values, const Meta& mt, T* dx, int nt) {
  const int bm = mt.bm;
  const int64_t K = mt.k(), N = mt.n();
  constexpr int64_t RT = 64;  // rows per task (8 tiles of 8); columns in groups of 64
  const int64_t nrt = (M + RT - 1) / RT, nct = (K + 63) / 64;
  // the weights in CSC order, float32: read in sequence by the column walk (one gather per call)
  float* wt = t_wt.get(size_t(mt.nnzb) * bm);
#pragma omp parallel for schedule(static) num_threads(nt) if (mt.nnzb * bm > (1 << 16))
  for (int64_t q = 0; q < mt.nnzb; ++q)
    for (int i = 0; i < bm; ++i) wt[q * bm + i] = to_f32(values[int64_t(mt.perm_t[q]) * bm + i]);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < nrt * nct; ++t) {
    const int64_t mr = t / nct, kc = t % nct;
    const int64_t k1 = std::min(K, kc * 64 + 64);
    float* dp = t_dt.get(size_t(N) * 8);
    for (int64_t m0 = mr * RT; m0 < std::min(M, mr * RT + RT); m0 += 8) {
      const int rows = int(std::min<int64_t>(8, M - m0));
      for (int64_t n = 0; n < N; n += 8)
        for (int r = 0; r < 8; ++r)
          _mm256_store_ps(dp + n * 8 + r * 8, r < rows ? ld8(dy + (m0 + r) * lddy + n) : _mm256_setzero_ps());
      for (int64_t k0 = kc * 64; k0 < k1; k0 += 8) {
        const int cols = int(std::min<int64_t>(8, k1 - k0));
        alignas(32) float out[8][8];
        bwd_tile(dp, rows, k0, cols, wt, bm, mt, out);
        for (int r = 0; r < rows; ++r) {
          T* o = dx + (m0 + r) * K + k0;
          if (cols == 8) {
            st8(o, _mm256_load_ps(out[r]));
          } else {
            for (int j = 0; j < cols; ++j) o[j] = from_f32<T>(out[r][j]);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------- sdd
template <typename T>
void vec_sdd(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t M, const Meta& mt, T* dw, int nt) {
  const int bm = mt.bm;
  const int64_t N = mt.n(), K = mt.k(), nbr = mt.nbr, nv = mt.nnzb * bm;
  const int32_t* ro = mt.row_offsets;
  const int32_t* ci = mt.col_indices;
  const int64_t npan = (M + MP - 1) / MP;
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(SDD_SLICES, npan));
  float* part = t_part.get(size_t(S) * nv);
  if (M == 0) std::fill(part, part + nv, 0.0f);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t s = 0; s < S; ++s) {
      float* xt = t_xt.get(size_t(K) * MP);
      float* dt = t_dt.get(size_t(N) * MP);
      float* out = part + s * nv;
      const int64_t p0 = s * npan / S, p1 = (s + 1) * npan / S;
      for (int64_t pan = p0; pan < p1; ++pan) {
        const int64_t m0 = pan * MP, rows = std::min<int64_t>(MP, M - m0);
        pack_panel_t<MP>(x, ldx, m0, rows, K, xt);
        pack_panel_t<MP>(dy, lddy, m0, rows, N, dt);
        const bool first = pan == p0;
        for (int64_t nb = 0; nb < nbr; ++nb) {
          for (int64_t e = ro[nb]; e < ro[nb + 1]; ++e) {
            const float* xr = xt + int64_t(ci[e]) * MP;
            for (int i0 = 0; i0 < bm; i0 += 8) {
              const float* d = dt + (nb * bm + i0) * MP;
              __m256 acc[8];
              for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
              for (int h = 0; h < MP; h += 32) {
                __m256 xv[4];
                for (int v = 0; v < 4; ++v) xv[v] = _mm256_load_ps(xr + h + 8 * v);
#pragma GCC unroll 8
                for (int i = 0; i < 8; ++i)
                  for (int v = 0; v < 4; ++v)
                    acc[i] = _mm256_fmadd_ps(_mm256_load_ps(d + i * MP + h + 8 * v), xv[v], acc[i]);
              }
              float* o = out + e * bm + i0;
              const __m256 r = reduce8(acc);
              _mm256_storeu_ps(o, first ? r : _mm256_add_ps(_mm256_loadu_ps(o), r));
            }
          }
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t v = 0; v < nv; ++v) {
      float a = part[v];
      for (int64_t s = 1; s < S; ++s) a += part[s * nv + v];
      dw[v] = from_f32<T>(a);
    }
  }
}

inline bool vec_fast(const Meta& mt) { return mt.bk == 1 && mt.bm % 8 == 0; }

}  // namespace

template <typename T>
void vblock_dds_t(const T* x, int64_t ldx, int64_t m, const T* values, const Meta& mt, const T* bias, int act, T* y,
                  T* z, int nt) {
  if (!vec_fast(mt)) return csr_dds_t(x, ldx, m, values, mt, bias, act, y, z, nt);
  switch (act) {
    case ACT_RELU: return vec_dds_t<T, ACT_RELU>(x, ldx, m, values, mt, bias, y, z, nt);
    case ACT_GELU: return vec_dds_t<T, ACT_GELU>(x, ldx, m, values, mt, bias, y, z, nt);
    case ACT_GELU_TANH: return vec_dds_t<T, ACT_GELU_TANH>(x, ldx, m, values, mt, bias, y, z, nt);
    default: return vec_dds_t<T, ACT_NONE>(x, ldx, m, values, mt, bias, y, z, nt);
  }
}

template <typename T>
void vblock_dds(const T* dy, int64_t lddy, int64_t m, const T* values, const Meta& mt, T* dx, int nt) {
  if (!vec_fast(mt)) return csr_dds(dy, lddy, m, values, mt, dx, nt);
  vec_dds(dy, lddy, m, values, mt, dx, nt);
}

template <typename T>
void vblock_sdd(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t m, const Meta& mt, T* dw, int nt) {
  if (!vec_fast(mt)) return csr_sdd(dy, lddy, x, ldx, m, mt, dw, nt);
  vec_sdd(dy, lddy, x, ldx, m, mt, dw, nt);
}

#define SPD_INSTANTIATE(T)                                                                                     \
  template void vblock_dds_t<T>(const T*, int64_t, int64_t, const T*, const Meta&, const T*, int, T*, T*, int); \
  template void vblock_dds<T>(const T*, int64_t, int64_t, const T*, const Meta&, T*, int);                      \
  template void vblock_sdd<T>(const T*, int64_t, const T*, int64_t, int64_t, const Meta&, T*, int);
SPD_INSTANTIATE(float)
SPD_INSTANTIATE(bf16)
#undef SPD_INSTANTIATE

}  // namespace cpu
}  // namespace spd

#endif  // __AVX2__ && __FMA__
