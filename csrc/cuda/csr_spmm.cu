// CSR SpMM with a fused bias + activation epilogue: out (M, R) = act(in (M, C) · Sᵀ + bias).
// The forward product (S = W) and the input gradient (S = Wᵀ through W's CSC metadata) are
// the same kernel. Torch-free.
//
// Scheme (Sputnik's SpMM, turned so that the output stays row-major):
//  * The dense input arrives transposed, in_t (C, m_pad): a sparse entry (r, c) then needs the
//    run in_t[c, m0 : m0 + TM], which lane l reads as one vector of V tokens
//    (TM = 32 * V, V * sizeof(T) bytes, up to 16 B per load), coalesced over the warp.
//  * grid.x = balanced row tiles (csr_plan.h): <= 32 consecutive rows and about D nonzeros
//    each, found in-kernel by binary search, so rows of very different lengths cost about the
//    same per block without any host-side sort; grid.y strides over token tiles.
//  * In a tile, rows are cut into pieces of <= 32 nonzeros; each warp takes an equal
//    contiguous range of pieces. Per piece the warp loads 32 (index, value) pairs at once and
//    broadcasts them with shuffles; float32 accumulators live in registers.
//  * A warp writes the rows it owns alone straight into the shared tile zs[row][token]; the
//    first and last row of its range may be shared with its neighbours, so those go to a
//    per-warp slot and are added in warp order afterwards: deterministic, no atomics.
//  * Epilogue: + bias, pre-activation (optional), activation, and coalesced writes of row
//    segments of the output (consecutive rows of S are consecutive output columns).
#include <algorithm>
#include <atomic>

#include "csr_common.cuh"
#include "csr_launch.h"

namespace spd_cuda {
namespace {

struct SpmmKernelArgs {
  SpmmArgs a;
  int64_t ld_t;
  int64_t m_tiles;
  int64_t row_cost;
};

template <int V>
constexpr int zs_stride() {
  return 32 * V + 1;  // odd: the epilogue walks rows at a fixed token without bank conflicts
}

template <int V>
constexpr size_t spmm_smem_bytes() {
  return sizeof(float) * (static_cast<size_t>(kTileRows) * zs_stride<V>() + kSpmmWarps * 2 * 32 * V);
}

template <typename T, int V>
__global__ void __launch_bounds__(kSpmmWarps * 32) csr_spmm_kernel(const SpmmKernelArgs ka) {
  constexpr int TM = 32 * V;
  constexpr int ZS = zs_stride<V>();
  const SpmmArgs& a = ka.a;

  extern __shared__ float smem[];
  float* zs = smem;                           // [kTileRows][ZS]: column v*32 + lane = token lane*V + v
  float* part = smem + kTileRows * ZS;        // [kSpmmWarps][2][TM]: partial first/last rows
  __shared__ int32_t s_off[kTileRows + 1];    // offsets of the tile's rows
  __shared__ int s_pend[kTileRows];           // inclusive prefix count of pieces per row
  __shared__ int s_tag[kSpmmWarps][2];        // tile-local row of each part slot, -1 if unused

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t tile = blockIdx.x;
  const int64_t rb = tile_row_begin(a.offsets, a.rows, ka.row_cost, tile);
  const int64_t re = tile_row_begin(a.offsets, a.rows, ka.row_cost, tile + 1);
  const int count = static_cast<int>(re - rb);
  if (count <= 0) return;  // a tile inside one long row: its rows belong to an earlier tile

  if (warp == 0) {
    int np = 0;
    if (lane < count) {
      const int32_t lo = a.offsets[rb + lane];
      const int32_t hi = a.offsets[rb + lane + 1];
      s_off[lane] = lo;
      if (lane == count - 1) s_off[count] = hi;
      np = pieces_of(hi - lo);
    }
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int y = __shfl_up_sync(kFullMask, np, d);
      if (lane >= d) np += y;
    }
    if (lane < count) s_pend[lane] = np;
  }
  __syncthreads();

  const int total = s_pend[count - 1];
  int p0, p1;
  warp_piece_range(total, warp, kSpmmWarps, &p0, &p1);
  int first_row, last_row;
  warp_rows(s_pend, p0, p1, &first_row, &last_row);
  if (lane == 0) {
    s_tag[warp][0] = first_row;
    s_tag[warp][1] = last_row != first_row ? last_row : -1;
  }

  const T* __restrict__ in_t = static_cast<const T*>(a.in_t);
  const T* __restrict__ vals = static_cast<const T*>(a.values);
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
  T* __restrict__ out = static_cast<T*>(a.out);
  T* __restrict__ pre = static_cast<T*>(a.preact);
  const int act = static_cast<int>(a.activation);

  for (int64_t mt = blockIdx.y; mt < ka.m_tiles; mt += gridDim.y) {
    for (int i = threadIdx.x; i < count * ZS; i += blockDim.x) zs[i] = 0.f;
    __syncthreads();  // also publishes s_tag on the first pass

    const int64_t m_base = mt * TM;
    const T* in_lane = in_t + m_base + lane * V;
    float acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = 0.f;

    // Writes the accumulators of tile-local row r (warp-uniform) and clears them.
    auto store_row = [&](int r) {
      const int slot = shared_row_slot(r, first_row, last_row);
      float* dst = slot >= 0 ? part + (warp * 2 + slot) * TM : zs + r * ZS;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        dst[i * 32 + lane] = acc[i];
        acc[i] = 0.f;
      }
    };

    PieceWalk walk(first_row);
    for (int q = p0; q < p1; ++q) {
      int32_t j0, j1;
      const int done = walk.step(s_off, s_pend, q, &j0, &j1);
      if (done >= 0) store_row(done);
      const int n = j1 - j0;
      int32_t col = 0;
      float val = 0.f;
      if (lane < n) {
        const int32_t j = j0 + lane;
        col = __ldg(a.indices + j);
        const int64_t vj = a.perm != nullptr ? static_cast<int64_t>(__ldg(a.perm + j)) : static_cast<int64_t>(j);
        val = to_float(vals[vj * a.values_stride]);
      }
      int u = 0;
      // Four independent vector loads in flight before their FMAs.
      for (; u + 4 <= n; u += 4) {
        float x[4][V];
        float w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int64_t c = __shfl_sync(kFullMask, col, u + k);
          w[k] = __shfl_sync(kFullMask, val, u + k);
          load_vec<T, V>(in_lane + c * ka.ld_t, x[k]);
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
#pragma unroll
          for (int i = 0; i < V; ++i) acc[i] = fmaf(w[k], x[k][i], acc[i]);
        }
      }
      for (; u < n; ++u) {
        float x[V];
        const int64_t c = __shfl_sync(kFullMask, col, u);
        const float w = __shfl_sync(kFullMask, val, u);
        load_vec<T, V>(in_lane + c * ka.ld_t, x);
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = fmaf(w, x[i], acc[i]);
      }
    }
    if (p0 < p1) store_row(walk.row);
    __syncthreads();

    // Shared rows: add the partial slots in warp order (fixed order = reproducible sums).
    for (int t = threadIdx.x; t < TM; t += blockDim.x) {
#pragma unroll
      for (int w = 0; w < kSpmmWarps; ++w) {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const int r = s_tag[w][s];
          if (r >= 0) zs[r * ZS + t] += part[(w * 2 + s) * TM + t];
        }
      }
    }
    __syncthreads();

    // Epilogue: consecutive threads take consecutive rows of S = consecutive output columns.
    const int64_t m_left = a.m - m_base;
    const int valid = m_left < TM ? static_cast<int>(m_left) : TM;
    for (int idx = threadIdx.x; idx < count * valid; idx += blockDim.x) {
      const int mm = idx / count;
      const int r = idx - mm * count;
      float z = zs[r * ZS + (mm % V) * 32 + mm / V];
      const int64_t n = rb + r;
      const int64_t m = m_base + mm;
      if (bias != nullptr) z += to_float(bias[n * a.bias_stride]);
      if (pre != nullptr) pre[m * a.ld_preact + n] = from_float<T>(z);
      out[m * a.ld_out + n] = from_float<T>(activate(z, act));
    }
    __syncthreads();  // zs is cleared for the next token tile
  }
}

template <typename T, int V>
void launch_v(const SpmmPlan& plan, const SpmmArgs& args, cudaStream_t stream) {
  const SpmmKernelArgs ka{args, plan.m_pad, plan.m_tiles, plan.row_cost};
  const size_t smem = spmm_smem_bytes<V>();
  if (smem > 48 * 1024) {
    // Opt in to more than the default 48 KiB of dynamic shared memory (a host-side attribute;
    // no synchronisation). An error here surfaces in the caller's launch check.
    cudaFuncSetAttribute(csr_spmm_kernel<T, V>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(smem));
  }
  const dim3 grid(static_cast<unsigned>(plan.num_tiles),
                  static_cast<unsigned>(std::min<int64_t>(plan.m_tiles, 65535)));
  csr_spmm_kernel<T, V><<<grid, kSpmmWarps * 32, smem, stream>>>(ka);
}

template <typename T>
void launch_t(const SpmmPlan& plan, const SpmmArgs& args, cudaStream_t stream) {
  switch (plan.vec) {
    case 1:
      launch_v<T, 1>(plan, args, stream);
      break;
    case 2:
      launch_v<T, 2>(plan, args, stream);
      break;
    case 4:
      launch_v<T, 4>(plan, args, stream);
      break;
    default:
      launch_v<T, 8>(plan, args, stream);
      break;
  }
}

}  // namespace

void launch_csr_spmm(DType dtype, const SpmmPlan& plan, const SpmmArgs& args, cudaStream_t stream) {
  if (args.m <= 0 || args.rows <= 0 || plan.num_tiles <= 0 || plan.m_tiles <= 0) return;
  switch (dtype) {
    case DType::kFloat32:
      launch_t<float>(plan, args, stream);
      break;
    case DType::kFloat16:
      launch_t<__half>(plan, args, stream);
      break;
    case DType::kBFloat16:
      launch_t<__nv_bfloat16>(plan, args, stream);
      break;
  }
}

int current_sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return 1;
  if (dev < kMaxDevices) {
    const int cached = cache[dev].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
    cudaGetLastError();  // a failed query must not be reported as a failed kernel launch
    return 1;
  }
  if (dev < kMaxDevices) cache[dev].store(sms, std::memory_order_relaxed);
  return sms;
}

}  // namespace spd_cuda
