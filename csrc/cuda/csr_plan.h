// Work partition of the CSR kernels: plain C++ (no CUDA, no torch), shared by the kernels,
// their host launchers and a host-side checker, so the index math is tested without a GPU.
//
// SpMM tiles. A tile is a run of consecutive sparse rows (consecutive output columns, so the
// epilogue writes contiguous row segments of the output). Tile boundaries balance work, not
// rows: row r costs `row_cost + len(r)` (a row's fixed cost plus its nonzeros), so with the
// prefix cost C(r) = r*row_cost + offsets[r] tile t holds the rows with
// t*D <= C(r) < (t+1)*D, D = kTileRows*row_cost. Hence at most kTileRows rows per tile and
// about D nonzeros per tile however skewed the row lengths are; a row longer than D makes a
// tile of its own (the tiles whose cost range lies inside it are empty and exit at once).
// Each block finds its rows by two binary searches over `offsets`: no host-side preprocessing,
// no sort, no extra launch. Inside a tile the rows are cut into pieces of <= kPiece nonzeros
// and every warp takes an equal contiguous range of pieces, so one long row is shared by
// several warps.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SPD_HD __host__ __device__ __forceinline__
#else
#define SPD_HD inline
#endif

namespace spd_cuda {

constexpr int kTileRows = 32;  // rows per tile at most: one lane per row in the piece scan
constexpr int kPiece = 32;     // nonzeros per piece: one warp-wide load of indices and values
constexpr int kSpmmWarps = 8;  // warps per SpMM block
constexpr int kMaxVec = 8;     // tokens per lane in the SpMM inner loop (TM = 32 * vec)

// Prefix cost of the first r rows.
SPD_HD int64_t tile_cost(const int32_t* offsets, int64_t r, int64_t row_cost) {
  return r * row_cost + static_cast<int64_t>(offsets[r]);
}

// First row of tile t: the smallest r in [0, rows] with C(r) >= t*D, or `rows` if none.
SPD_HD int64_t tile_row_begin(const int32_t* offsets, int64_t rows, int64_t row_cost, int64_t t) {
  const int64_t target = t * kTileRows * row_cost;
  if (tile_cost(offsets, rows, row_cost) < target) return rows;
  int64_t lo = 0, hi = rows;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (tile_cost(offsets, mid, row_cost) >= target) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

SPD_HD int pieces_of(int32_t row_len) { return (row_len + kPiece - 1) / kPiece; }

// Warp w of num_warps takes pieces [*p0, *p1) of a tile holding `total` pieces.
SPD_HD void warp_piece_range(int total, int w, int num_warps, int* p0, int* p1) {
  const int per = (total + num_warps - 1) / num_warps;
  const int a = w * per < total ? w * per : total;
  *p0 = a;
  *p1 = a + per < total ? a + per : total;
}

// Nonzeros [*j0, *j1) of piece q of a row stored at [row_begin, row_end).
SPD_HD void piece_entries(int32_t row_begin, int32_t row_end, int q, int32_t* j0, int32_t* j1) {
  const int32_t a = row_begin + q * kPiece;
  *j0 = a;
  *j1 = a + kPiece < row_end ? a + kPiece : row_end;
}

// Tile-local rows holding the first and the last piece of the range [p0, p1), given `pend`,
// the inclusive prefix count of pieces per row of the tile; -1, -1 for an empty range. Those
// two rows may be shared with the neighbouring warps; the rows between are the warp's alone.
SPD_HD void warp_rows(const int* pend, int p0, int p1, int* first_row, int* last_row) {
  if (p0 >= p1) {
    *first_row = *last_row = -1;
    return;
  }
  int r = 0;
  while (pend[r] <= p0) ++r;
  *first_row = r;
  while (pend[r] <= p1 - 1) ++r;
  *last_row = r;
}

// Where a warp stores the sum of tile-local row r: 0 (its slot for the first row), 1 (its slot
// for the last row, when that differs from the first) or -1 (the row is the warp's alone).
SPD_HD int shared_row_slot(int r, int first_row, int last_row) {
  return r == first_row ? 0 : (r == last_row ? 1 : -1);
}

// A warp's walk over its pieces p0, p0 + 1, ... < p1, starting in its first row; `off` holds
// the tile's row offsets (count + 1 entries), `pend` as in warp_rows.
struct PieceWalk {
  int row;  // tile-local row of the current piece
  SPD_HD explicit PieceWalk(int first_row) : row(first_row < 0 ? 0 : first_row) {}
  // Piece q's nonzeros [*j0, *j1); returns the row the walk just left (its sum is complete and
  // goes to store) or -1 while q is still in the same row.
  SPD_HD int step(const int32_t* off, const int* pend, int q, int32_t* j0, int32_t* j1) {
    const int before = row;
    while (pend[row] <= q) ++row;
    const int first_piece = row == 0 ? 0 : pend[row - 1];
    piece_entries(off[row], off[row + 1], q - first_piece, j0, j1);
    return row != before ? before : -1;
  }
};

// Lanes per token group: tokens per block TM = 32 * vec, vec in {1, 2, 4, 8}.
inline int spmm_vec_for(int64_t m) {
  int v = 1;
  while (v < kMaxVec && 32 * v < m) v *= 2;
  return v;
}

struct SpmmPlan {
  int vec;             // tokens per lane
  int64_t m_tile;      // tokens per block (32 * vec)
  int64_t m_pad;       // leading dimension of the transposed input: M rounded up to m_tile
  int64_t m_tiles;     // token tiles
  int64_t row_cost;    // fixed cost of a row, in nonzeros; D = kTileRows * row_cost
  int64_t num_tiles;   // row tiles (grid.x); some may be empty
};

// Sizes only (no device data): the launch never waits for the device.
inline SpmmPlan plan_spmm(int64_t m, int64_t rows, int64_t nnz, int sm_count) {
  SpmmPlan p{};
  p.vec = spmm_vec_for(m);
  p.m_tile = 32 * p.vec;
  p.m_tiles = (m + p.m_tile - 1) / p.m_tile;
  p.m_pad = p.m_tiles * p.m_tile;
  // About four blocks per SM in all, and 256..4096 nonzeros per tile.
  const int64_t target_blocks = 4 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  const int64_t m_tiles = p.m_tiles > 0 ? p.m_tiles : 1;
  int64_t want_tiles = (target_blocks + m_tiles - 1) / m_tiles;
  if (want_tiles < 1) want_tiles = 1;
  int64_t per_tile = nnz / want_tiles;
  if (per_tile < 256) per_tile = 256;
  if (per_tile > 4096) per_tile = 4096;
  p.row_cost = per_tile / kTileRows;
  if (p.row_cost < 1) p.row_cost = 1;
  const int64_t d = kTileRows * p.row_cost;
  const int64_t total = rows * p.row_cost + nnz;
  p.num_tiles = (total + d - 1) / d;
  return p;
}

// SDDMM: one thread per nonzero, streaming both transposed operands along M in 32-byte runs.
inline int64_t sddmm_vec_for(int element_size) { return 32 / element_size; }

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

}  // namespace spd_cuda
