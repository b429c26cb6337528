// Host check of the CSR kernels' work partition (csrc/cuda/csr_plan.h, the header the kernels
// use): on skewed sparsity patterns, drives the partition functions the SpMM kernel calls --
// balanced row tiles, pieces, warp ranges, the walk over pieces, owned rows vs. shared
// first/last rows -- block by block and warp by warp, adds the shared rows in warp order as the
// kernel does, and checks that every nonzero is used exactly once, that no
// two warps write the same owned row, and that the result equals a direct CSR product.
// Prints one line per case; exits 1 on the first failure.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "csr_plan.h"

using namespace spd_cuda;

static int failures = 0;
#define EXPECT(cond, ...)                                       \
  do {                                                          \
    if (!(cond)) {                                              \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                 \
      std::printf("\n");                                        \
      ++failures;                                               \
      return;                                                   \
    }                                                           \
  } while (0)

struct Csr {
  int64_t rows, cols;
  std::vector<int32_t> offsets, indices;
  std::vector<double> values;
};

static Csr make_csr(const char* kind, int64_t rows, int64_t cols, std::mt19937& rng) {
  Csr s{rows, cols, {0}, {}, {}};
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t len = 0;
    const std::string k(kind);
    if (k == "uniform10") {
      len = static_cast<int64_t>(cols * 0.1 + 0.5);
    } else if (k == "powerlaw") {  // Zipf-like: a few very long rows, many short or empty ones
      len = static_cast<int64_t>(cols * std::pow(u(rng), 6.0));
    } else if (k == "one_dense") {
      len = r == rows / 2 ? cols : (r % 3 == 0 ? 0 : 2);
    } else if (k == "empty") {
      len = 0;
    } else {  // "full"
      len = cols;
    }
    if (len > cols) len = cols;
    std::vector<int32_t> all(cols);
    for (int64_t c = 0; c < cols; ++c) all[c] = static_cast<int32_t>(c);
    std::shuffle(all.begin(), all.end(), rng);
    all.resize(len);
    std::sort(all.begin(), all.end());
    for (int32_t c : all) {
      s.indices.push_back(c);
      s.values.push_back(u(rng) - 0.5);
    }
    s.offsets.push_back(static_cast<int32_t>(s.indices.size()));
  }
  return s;
}

static void check_case(const char* kind, int64_t rows, int64_t cols, int64_t m, int sms, std::mt19937& rng) {
  const Csr s = make_csr(kind, rows, cols, rng);
  const int64_t nnz = static_cast<int64_t>(s.indices.size());
  const SpmmPlan p = plan_spmm(m, rows, nnz, sms);
  EXPECT(p.vec == 1 || p.vec == 2 || p.vec == 4 || p.vec == 8, "vec %d", p.vec);
  EXPECT(p.m_tile == 32 * p.vec && p.m_pad % p.m_tile == 0 && p.m_pad >= m && p.m_pad - m < p.m_tile,
         "m_tile %lld m_pad %lld m %lld", (long long)p.m_tile, (long long)p.m_pad, (long long)m);
  EXPECT(p.row_cost >= 1, "row_cost %lld", (long long)p.row_cost);
  const int64_t d = kTileRows * p.row_cost;
  EXPECT(p.num_tiles * d >= rows * p.row_cost + nnz, "tiles do not cover the cost");

  std::vector<double> x(cols);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  for (auto& v : x) v = u(rng);
  std::vector<double> y(rows, NAN);
  std::vector<int> used(nnz, 0);
  int64_t next_row = 0, max_tile_nnz = 0;

  for (int64_t tile = 0; tile < p.num_tiles; ++tile) {
    const int64_t rb = tile_row_begin(s.offsets.data(), rows, p.row_cost, tile);
    const int64_t re = tile_row_begin(s.offsets.data(), rows, p.row_cost, tile + 1);
    const int count = static_cast<int>(re - rb);
    if (count <= 0) continue;
    EXPECT(rb == next_row, "tile %lld starts at row %lld, expected %lld", (long long)tile, (long long)rb,
           (long long)next_row);
    EXPECT(count <= kTileRows, "tile %lld has %d rows", (long long)tile, count);
    next_row = re;
    max_tile_nnz = std::max<int64_t>(max_tile_nnz, s.offsets[re] - s.offsets[rb]);
    // warp 0's scan
    int s_off[kTileRows + 1], s_pend[kTileRows];
    int acc_p = 0;
    for (int i = 0; i < count; ++i) {
      s_off[i] = s.offsets[rb + i];
      acc_p += pieces_of(s.offsets[rb + i + 1] - s.offsets[rb + i]);
      s_pend[i] = acc_p;
    }
    s_off[count] = s.offsets[re];
    const int total = s_pend[count - 1];
    std::vector<double> zs(count, 0.0);
    std::vector<int> owner(count, -1);
    double part[kSpmmWarps][2];
    int tag[kSpmmWarps][2];
    int covered = 0;
    for (int w = 0; w < kSpmmWarps; ++w) {
      int p0, p1;
      warp_piece_range(total, w, kSpmmWarps, &p0, &p1);
      EXPECT(p0 == covered || p0 == p1, "warp %d starts at piece %d, expected %d", w, p0, covered);
      covered = std::max(covered, p1);
      int first_row, last_row;
      warp_rows(s_pend, p0, p1, &first_row, &last_row);
      tag[w][0] = first_row;
      tag[w][1] = last_row != first_row ? last_row : -1;
      double acc = 0.0;
      auto store_row = [&](int r) {
        const int slot = shared_row_slot(r, first_row, last_row);
        if (slot >= 0) {
          part[w][slot] = acc;
        } else {
          if (owner[r] != -1) ++failures, std::printf("FAIL: row %d owned twice\n", r);
          owner[r] = w;
          zs[r] = acc;
        }
        acc = 0.0;
      };
      PieceWalk walk(first_row);
      for (int q = p0; q < p1; ++q) {
        int32_t j0, j1;
        const int done = walk.step(s_off, s_pend, q, &j0, &j1);
        if (done >= 0) store_row(done);
        const int row = walk.row;
        EXPECT(j1 > j0 && j1 - j0 <= kPiece, "piece %d of row %d: [%d, %d)", q, row, j0, j1);
        for (int32_t j = j0; j < j1; ++j) {
          ++used[j];
          acc += s.values[j] * x[s.indices[j]];
        }
      }
      if (p0 < p1) store_row(walk.row);
      // shared rows are never owned by anyone
      for (int k = 0; k < 2; ++k) {
        if (tag[w][k] >= 0) EXPECT(owner[tag[w][k]] == -1, "row %d both shared and owned", tag[w][k]);
      }
    }
    EXPECT(covered == total, "pieces covered %d of %d", covered, total);
    for (int w = 0; w < kSpmmWarps; ++w) {
      for (int k = 0; k < 2; ++k) {
        if (tag[w][k] >= 0) zs[tag[w][k]] += part[w][k];
      }
    }
    for (int i = 0; i < count; ++i) y[rb + i] = zs[i];
  }
  EXPECT(next_row == rows, "tiles cover rows [0, %lld) of %lld", (long long)next_row, (long long)rows);
  for (int64_t j = 0; j < nnz; ++j) EXPECT(used[j] == 1, "entry %lld used %d times", (long long)j, used[j]);
  for (int64_t r = 0; r < rows; ++r) {
    double ref = 0.0;
    for (int32_t j = s.offsets[r]; j < s.offsets[r + 1]; ++j) ref += s.values[j] * x[s.indices[j]];
    EXPECT(std::fabs(y[r] - ref) <= 1e-9 * (1.0 + std::fabs(ref)), "row %lld: %g vs %g", (long long)r, y[r], ref);
  }
  std::printf("ok %-9s rows=%-5lld cols=%-5lld m=%-5lld sms=%-3d nnz=%-8lld tiles=%-6lld row_cost=%-4lld "
              "vec=%d max_tile_nnz=%lld\n",
              kind, (long long)rows, (long long)cols, (long long)m, sms, (long long)nnz, (long long)p.num_tiles,
              (long long)p.row_cost, p.vec, (long long)max_tile_nnz);
}

int main() {
  std::mt19937 rng(1234);
  const char* kinds[] = {"uniform10", "powerlaw", "one_dense", "empty", "full"};
  const int64_t shapes[][2] = {{0, 7}, {1, 1}, {7, 93}, {67, 93}, {768, 768}, {3072, 768}, {1024, 4096}};
  const int64_t ms[] = {0, 1, 7, 129, 1000, 16384};
  const int sm_counts[] = {1, 108, 132};
  for (const char* kind : kinds) {
    for (const auto& sh : shapes) {
      for (int64_t m : ms) {
        for (int sms : sm_counts) {
          if (sh[0] * sh[1] > 1000000 && (m != 129 || sms != 132)) continue;  // keep the run short
          check_case(kind, sh[0], sh[1], m, sms, rng);
          if (failures) return 1;
        }
      }
    }
  }
  // vec choice
  const int64_t mv[][2] = {{0, 1}, {1, 1}, {32, 1}, {33, 2}, {64, 2}, {65, 4}, {128, 4}, {129, 8}, {100000, 8}};
  for (const auto& t : mv) {
    if (spmm_vec_for(t[0]) != t[1]) {
      std::printf("FAIL spmm_vec_for(%lld) = %d, expected %lld\n", (long long)t[0], spmm_vec_for(t[0]),
                  (long long)t[1]);
      return 1;
    }
  }
  std::printf("all ok\n");
  return failures ? 1 : 0;
}
