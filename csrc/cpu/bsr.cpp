// Block-sparse (BSR, bm and bk multiples of 8) kernels of dds_t, dds and sdd.
//
// dds_t and dds are the same computation on different operands: an output tile of MR rows
// of the dense operand A times W columns of one "line" of blocks,
//   out[m, j] = sum over the line's blocks e, p < steps: A[m, aoff(e) + p] * V_e[p, j],
// held in MR x (W/8) AVX2 registers (6x16: 12 accumulators, per step 2 vector loads of V and
// 6 broadcasts of A). For dds (dx = dy·W) a line is a block column of W walked
// through the CSC metadata and V_e is the stored block itself (its rows run along dx's
// columns), so no transposed copy of the values is made. For dds_t (y = x·Wᵀ) a line is a
// block row and V_e is the block transposed: every block is packed once per call (in parallel,
// by block row) into a float32 buffer of the calling thread, in W-wide column panels the
// micro-kernel reads contiguously.
//
// Work split (dds_t, dds): each thread owns a contiguous range of rows of A (a static split,
// so no two threads load the same rows into their private L2) and walks it in row panels whose
// height is chosen from A's width so that a panel fits in about PANEL_BYTES of L2 (96 to 384
// rows). Inside a panel: line by line, 6-row tile by tile. The line's W-wide sub-tiles run
// innermost when its blocks stay in L1 (LINE_L1_BYTES), so the tile's A segments are read from
// L2 once and from L1 for the other sub-tiles; for longer lines each sub-tile walks the panel
// in turn, keeping its columns of the blocks in L1. At every block the rows of the tile
// PF_TILES ahead are prefetched: shared between the sub-tiles when they run innermost, by the
// first one otherwise.
//
// sdd (dW_s = dyᵀ·x at block s): M is cut into fixed slices (from M alone, not the thread
// count) and the block rows into fixed groups; a task (slice, group) sums its slice into its own
// float32 partial of the group's blocks, chunk by chunk of rows: each x column block a chunk
// needs is packed once per chunk (block-major, contiguous), dy's columns once per block row;
// the partials are then added in slice order. The result is bitwise the same for any thread
// count.
#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels.h"

#if defined(__AVX2__) && defined(__FMA__)

namespace spd {
namespace cpu {
namespace {

// Register-tile rows (6 x 16: 12 accumulators; 6 x 8 for 8-wide lines, where 12 x 8 measured
// slower).
template <int NV>
constexpr int kMR = 6;
constexpr int64_t PANEL_BYTES = 256 << 10;  // dds_t / dds: bytes of A per row panel (L2: 512 KB)
constexpr int64_t PANEL_MIN = 96;           // rows per panel at least (the line's blocks reused over them)
constexpr int64_t PANEL_MAX = 384;          // rows per panel at most
constexpr int PF_TILES = 2;                 // dds_t / dds: tiles prefetched ahead
constexpr int64_t LINE_L1_BYTES = 12 << 10;  // dds_t / dds: sub-tiles innermost up to this line size
constexpr int PACK_PF = 8;                  // sdd: rows prefetched ahead while packing
constexpr int64_t SDD_XBYTES = 256 << 10;   // sdd: bytes of packed x per chunk of rows
constexpr int64_t SDD_SLICE = 512;          // sdd: rows per slice of M at least
constexpr int64_t SDD_TASKS = 8;            // sdd: slices x groups of block rows

thread_local Scratch t_packed;    // dds_t: every block transposed to float32, on the calling thread
thread_local Scratch t_partial;   // sdd: float32 partial sums per slice, on the calling thread
thread_local Scratch t_xchunk;    // sdd: packed chunk of x, per worker
thread_local Scratch t_dchunk;    // sdd: packed chunk of dy's block row, per worker
thread_local std::vector<int64_t> t_stamp;  // sdd: chunk each x column block was packed for

// acc[r][q] = sum_e sum_{p < steps} A[r, off_e + p] * V_e[p * ldv + 8 q]; then store(r, q, acc).
// At each block the rows pf_r0, pf_r0 + pf_step, ... < pf_r1 of pfa (a later tile of A) are
// prefetched at the block's offset, one prefetch per cache line.
template <int R, int NV, typename TA, typename TV, typename Entry, typename Store>
inline void line_tile(const TA* a, int64_t lda, int64_t e0, int64_t e1, int steps, int64_t ldv,
                      const Entry& entry, const Store& store, const TA* pfa, int pf_r0, int pf_r1, int pf_step) {
  __m256 acc[R][NV];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NV; ++q) acc[r][q] = _mm256_setzero_ps();
  for (int64_t e = e0; e < e1; ++e) {
    int64_t off;
    const TV* v;
    entry(e, off, v);
    const TA* ap = a + off;
    // the prefetchers do not follow the jumps between blocks: without this the first touch of
    // each A segment is a serial miss
    for (int r = pf_r0; r < pf_r1; r += pf_step)
      for (int p = 0; p < steps; p += 64 / int(sizeof(TA)))
        _mm_prefetch(reinterpret_cast<const char*>(pfa + r * lda + off + p), _MM_HINT_T0);
    for (int p = 0; p < steps; ++p) {
      __m256 b[NV];
#pragma GCC unroll 2
      for (int q = 0; q < NV; ++q) b[q] = ld8(v + p * ldv + 8 * q);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        __m256 xa = bc8(ap + r * lda + p);
#pragma GCC unroll 2
        for (int q = 0; q < NV; ++q) acc[r][q] = _mm256_fmadd_ps(xa, b[q], acc[r][q]);
      }
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NV; ++q) store(r, q, acc[r][q]);
}

template <int NV, int R = kMR<NV>, typename TA, typename TV, typename Entry, typename Store>
inline void line_tile_rows(int rows, const TA* a, int64_t lda, int64_t e0, int64_t e1, int steps, int64_t ldv,
                           const Entry& entry, const Store& store, const TA* pfa, int pf_r0, int pf_r1,
                           int pf_step) {
  if constexpr (R > 1) {
    if (rows < R)
      return line_tile_rows<NV, R - 1, TA, TV>(rows, a, lda, e0, e1, steps, ldv, entry, store, pfa, pf_r0, pf_r1,
                                               pf_step);
  }
  line_tile<R, NV, TA, TV>(a, lda, e0, e1, steps, ldv, entry, store, pfa, pf_r0, pf_r1, pf_step);
}

// The rows [rb, re) of A a thread owns (whole MR-row tiles), and the height of its row panels:
// the panel (rows x width elements of size elt) in about PANEL_BYTES.
struct RowSplit {
  int64_t rb, re, mc;
};
template <int MR>
inline RowSplit row_split(int64_t M, int64_t width, size_t elt) {
  const int T = omp_get_num_threads(), tid = omp_get_thread_num();
  const int64_t tiles = (M + MR - 1) / MR;
  const int64_t rb = std::min(M, tiles * tid / T * MR), re = std::min(M, tiles * (tid + 1) / T * MR);
  int64_t mc = PANEL_BYTES / std::max<int64_t>(1, width * int64_t(elt));
  mc = std::clamp<int64_t>(mc / MR * MR, PANEL_MIN / MR * MR,
                          std::max(PANEL_MIN, PANEL_MAX) / MR * MR);
  return {rb, re, mc};
}

// Float32 bytes of the blocks of an average line (nlines: block rows or block columns).
inline int64_t line_bytes(const Meta& mt, int64_t nlines) {
  return mt.nnzb * int64_t(mt.bm) * mt.bk * 4 / std::max<int64_t>(1, nlines);
}

// ---------------------------------------------------------------------------------- dds_t
// P[e - e0][sub][j][w] = B_e[sub * W + w][j] for the blocks e0 <= e < e1 of one block row:
// transposed, in W-wide column panels.
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
  constexpr int W = 8 * NV, MR = kMR<NV>;
  const int bm = mt.bm, bk = mt.bk, nsub = bm / W;
  const int64_t N = mt.n(), K = mt.k(), bsz = int64_t(bm) * bk, nbr = mt.nbr;
  const int32_t* ro = mt.row_offsets;
  const int32_t* ci = mt.col_indices;
  const int pfd = int(PF_TILES);
  const bool sub_outer = line_bytes(mt, nbr) > LINE_L1_BYTES;
  // Every block transposed once per call, into the calling thread's buffer, shared by all panels.
  float* Pall = t_packed.get(size_t(std::max<int64_t>(mt.nnzb, 1)) * bsz);
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt)
  for (int64_t r = 0; r < nbr; ++r) pack_row_transposed<W>(values, ro[r], ro[r + 1], bm, bk, Pall + ro[r] * bsz);
  const bool stream = NV == 2 && stream_output(y, M, N);  // whole 64-byte lines per tile row
  // a GELU is applied to each tile right after it is stored (still in L1), outside the register
  // tile; the streamed store then comes from that pass
  constexpr bool two_pass = kActSecondPass<ACT, T>;
  constexpr int TILE_ACT = two_pass ? int(ACT_NONE) : ACT;
#pragma omp parallel num_threads(nt)
  {
    const RowSplit rs = row_split<MR>(M, K, sizeof(T));
    for (int64_t mb = rs.rb; mb < rs.re; mb += rs.mc) {
      const int64_t me = std::min(rs.re, mb + rs.mc);
      // a line's tiles: sub-tiles innermost when the line's packed blocks stay in L1 across
      // them, else sub-tile by sub-tile (each then keeps its W columns of the blocks in L1)
      auto walk_line = [&](const auto& tile_at) {
        if (sub_outer) {
          for (int sub = 0; sub < nsub; ++sub)
            for (int64_t m0 = mb; m0 < me; m0 += MR) tile_at(m0, sub);
        } else {
          for (int64_t m0 = mb; m0 < me; m0 += MR)
            for (int sub = 0; sub < nsub; ++sub) tile_at(m0, sub);
        }
      };
      for (int64_t r = 0; r < nbr; ++r) {
        const int64_t e0 = ro[r], e1 = ro[r + 1];
        const float* P = Pall + e0 * bsz;
        auto tile_at = [&](int64_t m0, int sub) {
          const int rows = int(std::min<int64_t>(MR, me - m0));
          const int pf_rows = int(std::clamp<int64_t>(me - m0 - pfd * MR, 0, MR));
          const T* pfa = x + std::min(m0 + pfd * MR, M - 1) * ldx;
          {
            const int64_t n0 = r * bm + int64_t(sub) * W;
            const float* Psub = P + int64_t(sub) * bk * W;
            auto entry = [&](int64_t e, int64_t& off, const float*& v) {
              off = int64_t(ci[e]) * bk;
              v = Psub + (e - e0) * bsz;
            };
            const T* bn = bias ? bias + n0 : nullptr;
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
            line_tile_rows<NV, MR, T, float>(rows, x + m0 * ldx, ldx, e0, e1, bk, W, entry, store, pfa,
                                             sub_outer ? 0 : sub, sub_outer && sub > 0 ? 0 : pf_rows,
                                             sub_outer ? 1 : nsub);
            if constexpr (two_pass) {
              act_rows<ACT>(&tile[0][0], W, rows, NV);
              for (int rr = 0; rr < rows; ++rr)
                for (int q = 0; q < NV; ++q)
                  st8_maybe_stream(y + (m0 + rr) * N + n0 + 8 * q, _mm256_load_ps(&tile[rr][8 * q]), stream);
            }
          }
        };
        walk_line(tile_at);
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
  constexpr int W = 8 * NV, MR = kMR<NV>;
  const int bm = mt.bm, bk = mt.bk, nsub = bk / W;
  const int64_t N = mt.n(), K = mt.k(), bsz = int64_t(bm) * bk, nbc = mt.nbc;
  const int32_t* co = mt.col_offsets;
  const int32_t* rt = mt.row_indices_t;
  const int32_t* pt = mt.perm_t;
  const int pfd = int(PF_TILES);
  const bool sub_outer = line_bytes(mt, nbc) > LINE_L1_BYTES;
  const bool stream = NV == 2 && stream_output(dx, M, K);
#pragma omp parallel num_threads(nt)
  {
    const RowSplit rs = row_split<MR>(M, N, sizeof(T));
    for (int64_t mb = rs.rb; mb < rs.re; mb += rs.mc) {
      const int64_t me = std::min(rs.re, mb + rs.mc);
      // a line's tiles: sub-tiles innermost when the line's packed blocks stay in L1 across
      // them, else sub-tile by sub-tile (each then keeps its W columns of the blocks in L1)
      auto walk_line = [&](const auto& tile_at) {
        if (sub_outer) {
          for (int sub = 0; sub < nsub; ++sub)
            for (int64_t m0 = mb; m0 < me; m0 += MR) tile_at(m0, sub);
        } else {
          for (int64_t m0 = mb; m0 < me; m0 += MR)
            for (int sub = 0; sub < nsub; ++sub) tile_at(m0, sub);
        }
      };
      for (int64_t c = 0; c < nbc; ++c) {
        const int64_t e0 = co[c], e1 = co[c + 1];
        auto tile_at = [&](int64_t m0, int sub) {
          const int rows = int(std::min<int64_t>(MR, me - m0));
          const int pf_rows = int(std::clamp<int64_t>(me - m0 - pfd * MR, 0, MR));
          const T* pfa = dy + std::min(m0 + pfd * MR, M - 1) * lddy;
          {
            const int64_t j0 = c * bk + int64_t(sub) * W;
            const T* vsub = values + int64_t(sub) * W;
            auto entry = [&](int64_t e, int64_t& off, const T*& v) {
              off = int64_t(rt[e]) * bm;
              v = vsub + int64_t(pt[e]) * bsz;
            };
            auto store = [&](int rr, int q, __m256 acc) {
              st8_maybe_stream(dx + (m0 + rr) * K + j0 + 8 * q, acc, stream);
            };
            line_tile_rows<NV, MR, T, T>(rows, dy + m0 * lddy, lddy, e0, e1, bm, bk, entry, store, pfa,
                                         sub_outer ? 0 : sub, sub_outer && sub > 0 ? 0 : pf_rows,
                                             sub_outer ? 1 : nsub);
          }
        };
        walk_line(tile_at);
      }
    }
    if (stream) _mm_sfence();
  }
}

// ---------------------------------------------------------------------------------- sdd
// G_q (R x 8 floats, row stride ldg) += sum_{m < rows} D[m, 0..R) X_q[m, 0..8) for q < NV, on
// packed float32 chunks D (row stride ldd) and X_q (row stride ldx). X_q / G_q are either the
// two 8-wide halves of one block's 16 columns or (8-wide blocks) two blocks of one block row.
template <int R, int NV>
inline void sdd_tile(const float* D, int64_t ldd, const float* const* X, int64_t ldx, int64_t rows,
                     float* const* G, int64_t ldg, bool first) {
  __m256 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NV; ++q) acc[r][q] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(G[q] + r * ldg);
  const float* Xp[NV];
  for (int q = 0; q < NV; ++q) Xp[q] = X[q];
  for (int64_t m = 0; m < rows; ++m, D += ldd) {
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int q = 0; q < NV; ++q) bv[q] = _mm256_loadu_ps(Xp[q] + m * ldx);
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
    for (int q = 0; q < NV; ++q) _mm256_storeu_ps(G[q] + r * ldg, acc[r][q]);
}

template <int NV>
inline void sdd_tile_rows(int R, const float* D, int64_t ldd, const float* const* X, int64_t ldx, int64_t rows,
                          float* const* G, int64_t ldg, bool first) {
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

// One block's (or, 8-wide, a pair of blocks') MR x W tiles over a packed chunk.
template <int NV>
inline void sdd_block_tiles(int bm, int bk, const float* Dc, const float* Xa, const float* Xb, int64_t rows,
                            float* Ga, float* Gb, bool first) {
  constexpr int MR = 6;  // 4-row tiles (no short tail at bm = 8, 16, 32) measured slower
  for (int i0 = 0; i0 < bm; i0 += MR) {
    const int R = std::min(MR, bm - i0);
    if (Xb) {  // two 8-wide blocks of one block row side by side (NV == 2 register tile)
      const float* X[2] = {Xa, Xb};
      float* G[2] = {Ga + int64_t(i0) * bk, Gb + int64_t(i0) * bk};
      sdd_tile_rows<2>(R, Dc + i0, bm, X, bk, rows, G, bk, first);
      continue;
    }
    for (int j0 = 0; j0 < bk; j0 += 8 * NV) {
      const float* X[2] = {Xa + j0, Xa + j0 + 8};
      float* G[2] = {Ga + int64_t(i0) * bk + j0, Ga + int64_t(i0) * bk + j0 + 8};
      sdd_tile_rows<NV>(R, Dc + i0, bm, X, bk, rows, G, bk, first);
    }
  }
}

template <typename T, int NV>
void sdd_impl(const T* dy, int64_t lddy, const T* x, int64_t ldx, int64_t M, const Meta& mt, T* dw, int nt) {
  const int bm = mt.bm, bk = mt.bk;
  const int64_t bsz = int64_t(bm) * bk, nbr = mt.nbr, nbc = mt.nbc, nnzb = mt.nnzb, K = mt.k();
  const int32_t* ro = mt.row_offsets;
  const int32_t* ci = mt.col_indices;
  if (nnzb == 0) return;
  // Fixed slices of M and groups of block rows: from M and the pattern only, so every block's
  // sum (chunks in order within a slice, then slices in order) is the same for any thread count.
  const int64_t S = std::clamp<int64_t>(M / SDD_SLICE, 1, SDD_TASKS);
  const int64_t G = std::clamp<int64_t>(SDD_TASKS / S, 1, nbr);
  int64_t sb[SDD_TASKS + 1], gb[SDD_TASKS + 1];
  for (int64_t s = 0; s < S; ++s) sb[s] = M * s / S / 8 * 8;
  sb[S] = M;
  gb[0] = 0;
  for (int64_t g = 1, r = 0; g < G; ++g) {
    while (r < nbr && ro[r] < g * nnzb / G) ++r;
    gb[g] = r;
  }
  gb[G] = nbr;
  // rows per chunk: the chunk's packed x (all its column blocks) in about SDD_XBYTES
  const int64_t mch = std::clamp<int64_t>(SDD_XBYTES / (4 * K) / 8 * 8, 16, 512);
  // slice s sums into part(s): float32 slice 0 straight into dw, every other slice (and all of
  // them for bfloat16) into the calling thread's buffer
  constexpr bool f32 = std::is_same_v<T, float>;
  const int64_t nbuf = f32 ? S - 1 : S;
  float* buf = nbuf > 0 ? t_partial.get(size_t(nbuf * nnzb * bsz)) : nullptr;
  auto part = [&](int64_t s) -> float* {
    if constexpr (f32) {
      if (s == 0) return reinterpret_cast<float*>(dw);
      return buf + (s - 1) * nnzb * bsz;
    } else {
      return buf + s * nnzb * bsz;
    }
  };
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t u = 0; u < S * G; ++u) {
    const int64_t s = u / G, g = u % G;
    const int64_t eb = ro[gb[g]], ee = ro[gb[g + 1]];
    if (eb == ee) continue;
    float* acc = part(s);
    const int64_t m_lo = sb[s], m_hi = sb[s + 1];
    if (m_hi == m_lo) {
      std::fill(acc + eb * bsz, acc + ee * bsz, 0.0f);
      continue;
    }
    float* Xc = t_xchunk.get(size_t(mch) * K);
    float* Dc = t_dchunk.get(size_t(mch) * bm);
    std::vector<int64_t>& stamp = t_stamp;
    stamp.assign(size_t(nbc), -1);
    for (int64_t c0 = m_lo; c0 < m_hi; c0 += mch) {
      const int64_t rows = std::min(mch, m_hi - c0);
      const bool first = c0 == m_lo;
      auto xblock = [&](int64_t col) {  // x's column block col of this chunk, packed on first use
        float* Xb = Xc + col * mch * bk;
        if (stamp[size_t(col)] != c0) {
          pack_rows(x + c0 * ldx + col * bk, ldx, rows, bk, Xb);
          stamp[size_t(col)] = c0;
        }
        return static_cast<const float*>(Xb);
      };
      for (int64_t r = gb[g]; r < gb[g + 1]; ++r) {
        const int64_t e0 = ro[r], e1 = ro[r + 1];
        if (e0 == e1) continue;
        pack_rows(dy + c0 * lddy + r * bm, lddy, rows, bm, Dc);
        int64_t e = e0;
        if constexpr (NV == 1) {
          if (bk == 8)  // 8-wide blocks two at a time: a 6 x 16 register tile over a pair
            for (; e + 2 <= e1; e += 2)
              sdd_block_tiles<2>(bm, bk, Dc, xblock(ci[e]), xblock(ci[e + 1]), rows, acc + e * bsz,
                                 acc + (e + 1) * bsz, first);
        }
        for (; e < e1; ++e)
          sdd_block_tiles<NV>(bm, bk, Dc, xblock(ci[e]), nullptr, rows, acc + e * bsz, nullptr, first);
      }
    }
  }
  // dw = part(0) + part(1) + ... in slice order, in parallel over the blocks
  if (S == 1 && f32) return;
  const int64_t n = nnzb * bsz;
  const int64_t nchunk = (n + 4095) / 4096;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t ch = 0; ch < nchunk; ++ch) {
    const int64_t i1 = std::min(n, (ch + 1) * 4096);  // n is a multiple of 64 (bm, bk multiples of 8)
    for (int64_t i = ch * 4096; i < i1; i += 8) {
      __m256 v = _mm256_loadu_ps(part(0) + i);
      for (int64_t s = 1; s < S; ++s) v = _mm256_add_ps(v, _mm256_loadu_ps(part(s) + i));
      st8(dw + i, v);
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
