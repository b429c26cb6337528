// Block-sparse (BSR, bm and bk multiples of 8) kernels of dds_t, dds and sdd.
//
// dds_t and dds are the same computation on different operands: an output tile of MR rows
// of the dense operand A times W columns of one "line" of blocks,
//   out[m, j] = sum over the line's blocks e, p < steps: A[m, aoff(e) + p] * V_e[p, j],
// held in MR x (W/8) AVX2 registers (a 6x16 tile: 12 accumulators, per step 2 vector loads of
// V and 6 broadcasts of A). For dds (dx = dy·W) a line is a block column of W walked through
// the CSC metadata and V_e is the stored block itself (its rows run along dx's columns), so no
// transposed copy of the values is made. For dds_t (y = x·Wᵀ) a line is a block row and V_e is
// the block transposed: every block is packed once per call (in parallel, by block row) into a
// float32 buffer of the calling thread, in W-wide column panels the micro-kernel reads
// contiguously.
//
// sdd (dW_s = dyᵀ·x at block s) keeps an MR x W tile of the block in registers while walking
// the rows m of dy and x. A task is a group of block rows: chunk by chunk of m it copies a
// row's dy columns and each block's x columns into contiguous float32 buffers (about 24 KB
// together, in L1), then runs the tiles over them.
#include <omp.h>

#include <algorithm>
#include <type_traits>

#include "kernels.h"

#if defined(__AVX2__) && defined(__FMA__)

namespace spd {
namespace cpu {
namespace {

constexpr int MR = 6;          // register-tile rows
constexpr int64_t MC = 96;     // rows of x (dy) per task: the panel it reuses across its line
constexpr int PACK_PF = 8;     // sdd: rows prefetched ahead while packing
constexpr int SDD_L1 = 24576;  // sdd: bytes of the two packed chunks together
constexpr int SDD_GROUPS = 2;  // sdd: groups of block rows per thread

thread_local Scratch t_packed;    // dds_t: every block transposed to float32, on the calling thread
thread_local Scratch t_blockacc;  // sdd: float32 sums of one block row (bfloat16 output), per worker
thread_local Scratch t_dchunk;    // sdd: packed chunks of dy and x, per worker

// acc[r][q] = sum_e sum_{p < steps} A[r, off_e + p] * V_e[p * ldv + 8 q]; then store(r, q, acc).
template <int R, int NV, typename TA, typename TV, typename Entry, typename Store>
inline void line_tile(const TA* a, int64_t lda, int64_t e0, int64_t e1, int steps, int64_t ldv,
                      const Entry& entry, const Store& store, int pf_rows) {
  __m256 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NV; ++q) acc[r][q] = _mm256_setzero_ps();
  for (int64_t e = e0; e < e1; ++e) {
    int64_t off;
    const TV* v;
    entry(e, off, v);
    const TA* ap = a + off;
    if (pf_rows > 0) {
      // The next tile's rows of A at this block, one prefetch per cache line: without this
      // the first touch of each A segment is a serial miss (the prefetchers do not follow the
      // jumps between blocks).
      const TA* na = ap + R * lda;
      for (int r = 0; r < pf_rows; ++r)
        for (int p = 0; p < steps; p += 64 / int(sizeof(TA)))
          _mm_prefetch(reinterpret_cast<const char*>(na + r * lda + p), _MM_HINT_T0);
    }
    for (int p = 0; p < steps; ++p) {
      __m256 b[NV];
#pragma GCC unroll 2
      for (int q = 0; q < NV; ++q) b[q] = ld8(v + p * ldv + 8 * q);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256 xa = bc8(ap + r * lda + p);
#pragma GCC unroll 2
        for (int q = 0; q < NV; ++q) acc[r][q] = _mm256_fmadd_ps(xa, b[q], acc[r][q]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NV; ++q) store(r, q, acc[r][q]);
}

template <int NV, typename TA, typename TV, typename Entry, typename Store>
inline void line_tile_rows(int rows, const TA* a, int64_t lda, int64_t e0, int64_t e1, int steps, int64_t ldv,
                           const Entry& entry, const Store& store, int pf_rows) {
  switch (rows) {
    case 6: return line_tile<6, NV, TA, TV>(a, lda, e0, e1, steps, ldv, entry, store, pf_rows);
    case 5: return line_tile<5, NV, TA, TV>(a, lda, e0, e1, steps, ldv, entry, store, pf_rows);
    case 4: return line_tile<4, NV, TA, TV>(a, lda, e0, e1, steps, ldv, entry, store, pf_rows);
    case 3: return line_tile<3, NV, TA, TV>(a, lda, e0, e1, steps, ldv, entry, store, pf_rows);
    case 2: return line_tile<2, NV, TA, TV>(a, lda, e0, e1, steps, ldv, entry, store, pf_rows);
    default: return line_tile<1, NV, TA, TV>(a, lda, e0, e1, steps, ldv, entry, store, pf_rows);
  }
}

// ---------------------------------------------------------------------------------- dds_t
// P[e - e0][sub][j][w] = B_e[sub * W + w][j] for the blocks e0 <= e < e1 of one block row:
// transposed, in W-wide column panels. Each task packs its own row (a few KB, against
// 2 * MC * bm * bk flops per block), so the call needs no barrier between packing and compute.
template <int W, typename T>
inline void pack_row_transposed(const T* values, int64_t e0, int64_t e1, int bm, int bk, float* P) {
  const int64_t bsz = int64_t(bm) * bk;
  for (int64_t e = e0; e < e1; ++e) {
    const T* B = values + e * bsz;
    float* Pe = P + (e - e0) * bsz;
    // 8x8 tiles: rows i0.. of B (output columns) become 8-float pieces of P's rows j0..
    for (int i0 = 0; i0 < bm; i0 += 8) {
      const int sub = i0 / W, w0 = i0 % W;
      for (int j0 = 0; j0 < bk; j0 += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = ld8(B + int64_t(i0 + i) * bk + j0);
        transpose8(r);  // r[j] = B[i0 .. i0+8, j0 + j]
        float* dst = Pe + (int64_t(sub) * bk + j0) * W + w0;
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + j * W, r[j]);
      }
    }
  }
}

template <typename T, int ACT, int NV>
void fwd_impl(const T* x, int64_t ldx, int64_t M, const T* values, const Meta& mt, const T* bias, T* y, T* z,
              int nt) {
  constexpr int W = 8 * NV;
  const int bm = mt.bm, bk = mt.bk;
  const int64_t N = mt.n(), bsz = int64_t(bm) * bk, nbr = mt.nbr;
  const int32_t* ro = mt.row_offsets;
  const int32_t* ci = mt.col_indices;
  const int64_t npan = (M + MC - 1) / MC;
  // Every block transposed once per call, into the calling thread's buffer, shared by the tasks
  // of all panels (packing per task would repeat it M / MC times).
  float* Pall = t_packed.get(size_t(std::max<int64_t>(mt.nnzb, 1)) * bsz);
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt)
  for (int64_t r = 0; r < nbr; ++r) pack_row_transposed<W>(values, ro[r], ro[r + 1], bm, bk, Pall + ro[r] * bsz);
  const bool stream = NV == 2 && stream_output(y, M, N);  // whole 64-byte lines per tile row
  // Tasks panel-major: consecutive tasks share the MC rows of x, kept in L2.
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < npan * nbr; ++t) {
    const int64_t pan = t / nbr, r = t % nbr;
    const int64_t mb = pan * MC, me = std::min(M, mb + MC);
    const int64_t e0 = ro[r], e1 = ro[r + 1];
    const float* P = Pall + e0 * bsz;
    for (int sub = 0; sub < bm / W; ++sub) {
      const int64_t n0 = r * bm + int64_t(sub) * W;
      const float* Psub = P + int64_t(sub) * bk * W;
      auto entry = [&](int64_t e, int64_t& off, const float*& v) {
        off = int64_t(ci[e]) * bk;
        v = Psub + (e - e0) * bsz;
      };
      const T* bn = bias ? bias + n0 : nullptr;
      // a GELU is applied to each 6-row tile right after it is stored (still in L1), outside
      // the register tile; the streamed store then comes from that pass
      constexpr bool two_pass = kActSecondPass<ACT, T>;
      constexpr int TILE_ACT = two_pass ? int(ACT_NONE) : ACT;
      for (int64_t m0 = mb; m0 < me; m0 += MR) {
        const int rows = int(std::min<int64_t>(MR, me - m0));
        alignas(32) float tile[MR][W];
        auto store = [&](int rr, int q, __m256 acc) {
          const int64_t o = (m0 + rr) * N + n0 + 8 * q;
          const T* bq = bn ? bn + 8 * q : nullptr;
          if constexpr (two_pass) {
            if (bq) acc = _mm256_add_ps(acc, ld8(bq));
            if (z) st8(z + o, acc);
            _mm256_store_ps(&tile[rr][8 * q], acc);
          } else if (stream) {
            epilogue8_stream<TILE_ACT>(acc, bq, y + o, z ? z + o : nullptr);
          } else {
            epilogue8<TILE_ACT>(acc, bq, y + o, z ? z + o : nullptr);
          }
        };
        line_tile_rows<NV, T, float>(rows, x + m0 * ldx, ldx, e0, e1, bk, W, entry, store,
                                     sub == 0 ? int(std::min<int64_t>(MR, me - m0 - MR)) : 0);
        if constexpr (two_pass) {
          act_rows<ACT>(&tile[0][0], W, rows, NV);
          for (int rr = 0; rr < rows; ++rr)
            for (int q = 0; q < NV; ++q)
              st8_maybe_stream(y + (m0 + rr) * N + n0 + 8 * q, _mm256_load_ps(&tile[rr][8 * q]), stream);
        }
      }
    }
    if (stream) _mm_sfence();  // the streamed stores are visible before the region's barrier
  }
}

template <typename T, int NV>
void fwd_act(const T* x, int64_t ldx, int64_t M, const T* values, const Meta& mt, const T* bias, int act, T* y,
             T* z, int nt) {
  switch (act) {
    case ACT_RELU: return fwd_impl<T, ACT_RELU, NV>(x, ldx, M, values, mt, bias, y, z, nt);
    case ACT_GELU: return fwd_impl<T, ACT_GELU, NV>(x, ldx, M, values, mt, bias, y, z, nt);
    case ACT_GELU_TANH: return fwd_impl<T, ACT_GELU_TANH, NV>(x, ldx, M, values, mt, bias, y, z, nt);
    default: return fwd_impl<T, ACT_NONE, NV>(x, ldx, M, values, mt, bias, y, z, nt);
  }
}

// ---------------------------------------------------------------------------------- dds
template <typename T, int NV>
void dds_impl(const T* dy, int64_t lddy, int64_t M, const T* values, const Meta& mt, T* dx, int nt) {
  constexpr int W = 8 * NV;
  const int bm = mt.bm, bk = mt.bk;
  const int64_t K = mt.k(), bsz = int64_t(bm) * bk, nbc = mt.nbc;
  const int32_t* co = mt.col_offsets;
  const int32_t* rt = mt.row_indices_t;
  const int32_t* pt = mt.perm_t;
  const int64_t npan = (M + MC - 1) / MC;
  const bool stream = NV == 2 && stream_output(dx, M, K);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < npan * nbc; ++t) {
    const int64_t pan = t / nbc, c = t % nbc;
    const int64_t mb = pan * MC, me = std::min(M, mb + MC);
    const int64_t e0 = co[c], e1 = co[c + 1];
    for (int sub = 0; sub < bk / W; ++sub) {
      const int64_t j0 = c * bk + int64_t(sub) * W;
      const T* vsub = values + int64_t(sub) * W;
      auto entry = [&](int64_t e, int64_t& off, const T*& v) {
        off = int64_t(rt[e]) * bm;
        v = vsub + int64_t(pt[e]) * bsz;
      };
      for (int64_t m0 = mb; m0 < me; m0 += MR) {
        auto store = [&](int rr, int q, __m256 acc) { st8_maybe_stream(dx + (m0 + rr) * K + j0 + 8 * q, acc, stream); };
        line_tile_rows<NV, T, T>(int(std::min<int64_t>(MR, me - m0)), dy + m0 * lddy, lddy, e0, e1, bm, bk,
                                 entry, store, sub == 0 ? int(std::min<int64_t>(MR, me - m0 - MR)) : 0);
      }
    }
    if (stream) _mm_sfence();
  }
}

// ---------------------------------------------------------------------------------- sdd
// G (R x 8NV floats, row stride ldg) += sum_{m < rows} D[m, 0..R) X[m, 0..8NV), on packed
// float32 chunks D (row stride ldd) and X (row stride ldx).
template <int R, int NV>
inline void sdd_tile(const float* D, int64_t ldd, const float* X, int64_t ldx, int64_t rows, float* G, int64_t ldg,
                     bool first) {
  __m256 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NV; ++q) acc[r][q] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(G + r * ldg + 8 * q);
  for (int64_t m = 0; m < rows; ++m, D += ldd, X += ldx) {
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int q = 0; q < NV; ++q) bv[q] = _mm256_loadu_ps(X + 8 * q);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      __m256 av = _mm256_broadcast_ss(D + r);
#pragma GCC unroll 2
      for (int q = 0; q < NV; ++q) acc[r][q] = _mm256_fmadd_ps(av, bv[q], acc[r][q]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NV; ++q) _mm256_storeu_ps(G + r * ldg + 8 * q, acc[r][q]);
}

template <int NV>
inline void sdd_tile_rows(int R, const float* D, int64_t ldd, const float* X, int64_t ldx, int64_t rows, float* G,
                          int64_t ldg, bool first) {
  switch (R) {
    case 6: return sdd_tile<6, NV>(D, ldd, X, ldx, rows, G, ldg, first);
    case 5: return sdd_tile<5, NV>(D, ldd, X, ldx, rows, G, ldg, first);
    case 4: return sdd_tile<4, NV>(D, ldd, X, ldx, rows, G, ldg, first);
    case 3: return sdd_tile<3, NV>(D, ldd, X, ldx, rows, G, ldg, first);
    case 2: return sdd_tile<2, NV>(D, ldd, X, ldx, rows, G, ldg, first);
    default: return sdd_tile<1, NV>(D, ldd, X, ldx, rows, G, ldg, first);
  }
}

// dst[m, 0..w) = float(src[m0 + m, 0..w)): a column panel copied into contiguous rows. Walking the
// panel in place would fetch one line per row at a stride of ld, which for ld = 768 floats
// maps every row onto 4 of the 64 L1 sets.
// The rows lie ld apart, in different pages for ld >= 1024, where the hardware prefetchers
// stop; so they are prefetched in software, PACK_PF rows ahead.
template <typename T>
inline void pack_rows(const T* src, int64_t ld, int64_t rows, int w, float* dst) {
  constexpr int per_line = 64 / int(sizeof(T));
  for (int64_t m = 0; m < rows; ++m, src += ld, dst += w) {
    if (PACK_PF > 0 && m + PACK_PF < rows)
      for (int j = 0; j < w; j += per_line)
        _mm_prefetch(reinterpret_cast<const char*>(src + PACK_PF * ld + j), _MM_HINT_T0);
    for (int j = 0; j < w; j += 8) _mm256_storeu_ps(dst + j, ld8(src + j));
  }
}

template <typename T, int NV>
void sdd_impl(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t M, const Meta& mt, T* dw, int nt) {
  constexpr int W = 8 * NV;
  const int bm = mt.bm, bk = mt.bk;
  const int64_t bsz = int64_t(bm) * bk;
  const int32_t* ro = mt.row_offsets;
  const int32_t* ci = mt.col_indices;
  // rows per chunk of the m reduction: both packed panels together in about 24 KB of L1
  const int64_t mch = std::max<int64_t>(8, (SDD_L1 / (4 * (bm + bk))) / 8 * 8);
  // A task is a group of block rows with about nnzb / G blocks, walking m chunk by chunk over
  // all its rows: the chunk's rows of x stay in cache across the group, so x is streamed
  // G times instead of once per block row. Grouping does not change any block's order of
  // summation (m ascending), so G may follow the thread count.
  constexpr int64_t GMAX = 64;
  const int64_t G = std::max<int64_t>(1, std::min<int64_t>({mt.nbr, int64_t(SDD_GROUPS) * nt, GMAX}));
  int64_t gb[GMAX + 1];
  gb[0] = 0;
  for (int64_t g = 1, r = 0; g < G; ++g) {
    while (r < mt.nbr && ro[r] < g * mt.nnzb / G) ++r;
    gb[g] = r;
  }
  gb[G] = mt.nbr;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t eb = ro[gb[g]], ee = ro[gb[g + 1]];
    if (eb == ee) continue;
    float* Dc = t_dchunk.get(size_t(mch) * (bm + bk));
    float* Xc = Dc + mch * bm;
    float* acc;  // float32 sums of the group's blocks
    if constexpr (std::is_same_v<T, float>)
      acc = dw + eb * bsz;
    else
      acc = t_blockacc.get(size_t(ee - eb) * bsz);
    if (M == 0) std::fill(acc, acc + (ee - eb) * bsz, 0.0f);
    for (int64_t m0 = 0; m0 < M; m0 += mch) {
      const int64_t rows = std::min(mch, M - m0);
      for (int64_t r = gb[g]; r < gb[g + 1]; ++r) {
        const int64_t e0 = ro[r], e1 = ro[r + 1];
        if (e0 == e1) continue;
        pack_rows(dy + m0 * lddy + r * bm, lddy, rows, bm, Dc);
        for (int64_t e = e0; e < e1; ++e) {
          pack_rows(x + m0 * ldx + int64_t(ci[e]) * bk, ldx, rows, bk, Xc);
          float* Gb = acc + (e - eb) * bsz;
          for (int i0 = 0; i0 < bm; i0 += MR)
            for (int j0 = 0; j0 < bk; j0 += W)
              sdd_tile_rows<NV>(std::min(MR, bm - i0), Dc + i0, bm, Xc + j0, bk, rows, Gb + int64_t(i0) * bk + j0,
                                bk, m0 == 0);
        }
      }
    }
    if constexpr (!std::is_same_v<T, float>) {
      T* out = dw + eb * bsz;
      const int64_t n = (ee - eb) * bsz;
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) st8(out + i, _mm256_loadu_ps(acc + i));
      for (; i < n; ++i) out[i] = from_f32<T>(acc[i]);
    }
  }
}

}  // namespace

template <typename T>
void bsr_dds_t(const T* x, int64_t ldx, int64_t m, const T* values, const Meta& mt, const T* bias, int act, T* y,
               T* z, int nt) {
  if (mt.bm % 16 == 0)
    fwd_act<T, 2>(x, ldx, m, values, mt, bias, act, y, z, nt);
  else
    fwd_act<T, 1>(x, ldx, m, values, mt, bias, act, y, z, nt);
}

template <typename T>
void bsr_dds(const T* dy, int64_t lddy, int64_t m, const T* values, const Meta& mt, T* dx, int nt) {
  if (mt.bk % 16 == 0)
    dds_impl<T, 2>(dy, lddy, m, values, mt, dx, nt);
  else
    dds_impl<T, 1>(dy, lddy, m, values, mt, dx, nt);
}

template <typename T>
void bsr_sdd(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t m, const Meta& mt, T* dw, int nt) {
  if (mt.bk % 16 == 0)
    sdd_impl<T, 2>(dy, lddy, x, ldx, m, mt, dw, nt);
  else
    sdd_impl<T, 1>(dy, lddy, x, ldx, m, mt, dw, nt);
}

#define SPD_INSTANTIATE(T)                                                                                  \
  template void bsr_dds_t<T>(const T*, int64_t, int64_t, const T*, const Meta&, const T*, int, T*, T*, int); \
  template void bsr_dds<T>(const T*, int64_t, int64_t, const T*, const Meta&, T*, int);                      \
  template void bsr_sdd<T>(const T*, int64_t, const T*, int64_t, int64_t, const Meta&, T*, int);
SPD_INSTANTIATE(float)
SPD_INSTANTIATE(bf16)
#undef SPD_INSTANTIATE

}  // namespace cpu
}  // namespace spd

#endif  // __AVX2__ && __FMA__
