// Fused CPU self-attention for BERT-family encoders (fp32, AVX2/FMA, OpenMP), inference only:
//   out[b, i, h, :] = softmax_n(q[b, i, h, :] · k[b, n, h, :] * scale, n in [kstart_b, kend_b)) · v[b, n, h, :]
// Keys outside [kstart_b, kend_b) (right or left key padding) are skipped, not masked.
// q, k, v are read in place through their strides (e.g. three views of one fused QKV linear's
// (B, S, 3·hidden) output: no transpose copy); out is written as (B, S, heads·d) for the output
// projection.
//
// One task = (batch, head, block of query rows). A thread's tasks are contiguous, so it packs
// Kᵀ (16-key panels) and V (contiguous rows: V rows read in place sit 3·hidden floats apart and
// alias to a few L1 sets) once per head it meets. For a tile of up to 6 query rows it computes
// the scores of every unpadded key into an L1 strip (6 × L floats), then max, exp and sum per
// row on that strip (a two-pass softmax: the whole key range of a BERT sequence fits in L1),
// then P·V with the 1/sum applied to the output. No probability matrix or logsumexp is written.
// Each output row is computed by the same sequence of operations whatever its tile, task or
// thread, so results do not depend on the number of threads.
#ifndef SPD_ATTENTION_STANDALONE  // defined by a timing driver that compiles the kernel alone
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "simd.h"

#if defined(__AVX2__) && defined(__FMA__)

#include <omp.h>

namespace spd {
namespace cpu {
namespace {

constexpr int QK_ROWS = 6;   // query rows of a score tile (6 x 16 accumulators)
constexpr int PV_ROWS = 3;   // query rows of an output tile (3 x 32 accumulators)
constexpr int PANEL = 16;    // keys per packed Kᵀ panel
constexpr int QBLOCK = 32;   // query rows per task when there are few (batch, head) pairs
constexpr int MIN_HEAD_TASKS = 16;

struct AttnArgs {
  const float *q, *k, *v;
  int64_t sqb, sqs, sqh, skb, sks, skh, svb, svs, svh;  // batch, token, head strides (d: unit)
  const int32_t *kstart, *kend;                         // (B): the unpadded key range
  float* o;                                             // (B, S, H * D) contiguous
  int64_t B, S, H, D;
  float scale;
};

// Kᵀ of keys [0, L) into panels of 16 keys: kt[(p * D + j) * 16 + c] = k[(16 p + c) * ldk + j],
// zero for keys >= L.
void pack_kt(const float* k, int64_t ldk, int L, int D, float* kt) {
  const int Lp = (L + PANEL - 1) / PANEL * PANEL;
  for (int n0 = 0; n0 < Lp; n0 += 8) {
    float* dst = kt + (n0 / PANEL) * D * PANEL + (n0 % PANEL);
    for (int j0 = 0; j0 < D; j0 += 8) {
      __m256 r[8];
      for (int c = 0; c < 8; ++c) r[c] = n0 + c < L ? _mm256_loadu_ps(k + (n0 + c) * ldk + j0) : _mm256_setzero_ps();
      transpose8(r);
      for (int c = 0; c < 8; ++c) _mm256_storeu_ps(dst + (j0 + c) * PANEL, r[c]);
    }
  }
}

void pack_v(const float* v, int64_t ldv, int L, int D, float* vp) {
  for (int n = 0; n < L; ++n) std::memcpy(vp + int64_t(n) * D, v + n * ldv, sizeof(float) * D);
}

// s[r * lds + n] = q_r · k_n for R query rows (q + r * ldq) and every key of the Lp padded ones.
template <int R>
void qk_tile(const float* q, int64_t ldq, const float* kt, int D, int Lp, float* s, int lds) {
  for (int n0 = 0; n0 < Lp; n0 += PANEL) {
    const float* kp = kt + (n0 / PANEL) * D * PANEL;
    __m256 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int j = 0; j < D; ++j, kp += PANEL) {
      const __m256 b0 = _mm256_loadu_ps(kp), b1 = _mm256_loadu_ps(kp + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 a = _mm256_broadcast_ss(q + r * ldq + j);
        acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(s + r * lds + n0, acc[r][0]);
      _mm256_storeu_ps(s + r * lds + n0 + 8, acc[r][1]);
    }
  }
}

// exp(x) for the softmax's x = (s - max) * scale <= 0: 2^n · p(t), n = round(x / ln 2) found with
// the magic-bias trick (the integer lands in the low mantissa bits, shifted into the exponent),
// t = x - n ln 2 in two steps (Cephes' split of ln 2: n · C1 is exact), p a degree-5 minimax
// polynomial of e^t on [-ln2/2, ln2/2] (XNNPACK's rr2-p5 coefficients, 9e-8 relative), 0 below
// the float32 denormal cut-off. 13 operations, against 17 for exp8 with its clamps (at d = 32 the
// exponentials cost about as much as Q·Kᵀ). A NaN stays NaN.
inline __m256 exp_nonpos8(__m256 x) {
  const __m256 magic = _mm256_set1_ps(0x1.8000FEp23f);  // 1.5 * 2^23 + 127
  __m256 n = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(n), 23));
  n = _mm256_sub_ps(n, magic);
  __m256 t = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  t = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), t);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0x1.0F9F9Cp-7f), t, _mm256_set1_ps(0x1.573A1Ap-5f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0x1.555A80p-3f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0x1.FFFDC6p-2f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0x1.FFFFF6p-1f));
  t = _mm256_mul_ps(t, s);
  const __m256 f = _mm256_fmadd_ps(t, p, s);
  return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-0x1.5D589Ep6f), _CMP_LT_OQ), f);
}

// One row of scores s[0, L) -> exp((s - max) * scale) in place (zero from L to the next multiple
// of 8); returns 1 / sum. A NaN score makes the sum, and so the output row, NaN.
float softmax_row(float* s, int L, float scale) {
  const int L8 = L & ~7, tail = L - L8;
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(tail), lane));
  __m256 mx = ninf;
  for (int n = 0; n < L8; n += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + n));
  if (tail) mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, _mm256_loadu_ps(s + L8), valid));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float m = _mm_cvtss_f32(m4);
  const __m256 sc = _mm256_set1_ps(scale), nms = _mm256_set1_ps(-m * scale);
  __m256 sum = _mm256_setzero_ps();
  for (int n = 0; n < L8; n += 8) {
    const __m256 p = exp_nonpos8(_mm256_fmadd_ps(_mm256_loadu_ps(s + n), sc, nms));
    _mm256_storeu_ps(s + n, p);
    sum = _mm256_add_ps(sum, p);
  }
  if (tail) {
    __m256 p = exp_nonpos8(_mm256_fmadd_ps(_mm256_loadu_ps(s + L8), sc, nms));
    p = _mm256_and_ps(p, valid);
    _mm256_storeu_ps(s + L8, p);
    sum = _mm256_add_ps(sum, p);
  }
  return 1.0f / hsum(sum);
}

// out_r[c0, c0 + 8 C) = inv_r * Σ_{n < L} p[r * lds + n] · vp[n * D + c0 ...] for R rows.
template <int R, int C>
void pv_tile(const float* p, int lds, const float* vp, int D, int L, int c0, const float* inv, float* out,
             int64_t ldo) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  const float* vr = vp + c0;
  // unrolled: 72 -> 90 GFLOP/s on one core at d = 32 (the loop's own cost shows at 12 FMAs)
  _Pragma("GCC unroll 4") for (int n = 0; n < L; ++n, vr += D) {
    __m256 a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm256_broadcast_ss(p + r * lds + n);
    for (int c = 0; c < C; ++c) {
      const __m256 b = _mm256_loadu_ps(vr + 8 * c);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(a[r], b, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m256 s = _mm256_set1_ps(inv[r]);
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + r * ldo + c0 + 8 * c, _mm256_mul_ps(acc[r][c], s));
  }
}

template <int R>
void pv_rows(const float* p, int lds, const float* vp, int D, int L, const float* inv, float* out, int64_t ldo) {
  int c0 = 0;
  for (; c0 + 32 <= D; c0 += 32) pv_tile<R, 4>(p, lds, vp, D, L, c0, inv, out, ldo);
  switch ((D - c0) / 8) {
    case 3: pv_tile<R, 3>(p, lds, vp, D, L, c0, inv, out, ldo); break;
    case 2: pv_tile<R, 2>(p, lds, vp, D, L, c0, inv, out, ldo); break;
    case 1: pv_tile<R, 1>(p, lds, vp, D, L, c0, inv, out, ldo); break;
    default: break;
  }
}

void qk_rows(int R, const float* q, int64_t ldq, const float* kt, int D, int Lp, float* s, int lds) {
  switch (R) {
    case 6: return qk_tile<6>(q, ldq, kt, D, Lp, s, lds);
    case 5: return qk_tile<5>(q, ldq, kt, D, Lp, s, lds);
    case 4: return qk_tile<4>(q, ldq, kt, D, Lp, s, lds);
    case 3: return qk_tile<3>(q, ldq, kt, D, Lp, s, lds);
    case 2: return qk_tile<2>(q, ldq, kt, D, Lp, s, lds);
    default: return qk_tile<1>(q, ldq, kt, D, Lp, s, lds);
  }
}

void pv_any(int R, const float* p, int lds, const float* vp, int D, int L, const float* inv, float* out,
            int64_t ldo) {
  switch (R) {
    case 3: return pv_rows<3>(p, lds, vp, D, L, inv, out, ldo);
    case 2: return pv_rows<2>(p, lds, vp, D, L, inv, out, ldo);
    default: return pv_rows<1>(p, lds, vp, D, L, inv, out, ldo);
  }
}

struct Buffers {
  Scratch kt, vp, s;
};

// Query rows [i0, i1) of head h of sequence b; Kᵀ and V of that head already packed.
void attend_rows(const AttnArgs& a, int64_t b, int64_t h, int64_t i0, int64_t i1, const float* kt,
                 const float* vp, float* s) {
  const int D = int(a.D);
  const int L = a.kend[b] - a.kstart[b];
  const int Lp = (L + PANEL - 1) / PANEL * PANEL;
  const int lds = Lp;
  const int64_t ldo = a.H * a.D;
  float* out = a.o + b * a.S * ldo + h * a.D;
  if (L == 0) {  // no key to attend to: zeros, as scaled_dot_product_attention gives
    for (int64_t i = i0; i < i1; ++i) std::memset(out + i * ldo, 0, sizeof(float) * D);
    return;
  }
  const float* q = a.q + b * a.sqb + h * a.sqh;
  float inv[QK_ROWS];
  for (int64_t i = i0; i < i1; i += QK_ROWS) {
    const int R = int(std::min<int64_t>(QK_ROWS, i1 - i));
    qk_rows(R, q + i * a.sqs, a.sqs, kt, D, Lp, s, lds);
    for (int r = 0; r < R; ++r) inv[r] = softmax_row(s + r * lds, L, a.scale);
    for (int r0 = 0; r0 < R; r0 += PV_ROWS) {
      const int R2 = std::min(PV_ROWS, R - r0);
      pv_any(R2, s + r0 * lds, lds, vp, D, L, inv + r0, out + (i + r0) * ldo, ldo);
    }
  }
}

void attention_f32(const AttnArgs& a, int nthreads) {
  // Tasks do not depend on the thread count: (b, h) pairs, split into query blocks when few.
  const int64_t nqb = a.B * a.H >= MIN_HEAD_TASKS ? 1 : (a.S + QBLOCK - 1) / QBLOCK;
  const int64_t qb = (a.S + nqb - 1) / nqb;
  const int64_t ntasks = a.B * a.H * nqb;
  // Contiguous ranges of tasks of about equal cost (query rows x (keys + packing)).
  std::vector<double> cum(ntasks + 1, 0.0);
  for (int64_t t = 0; t < ntasks; ++t) {
    const int64_t b = t / (a.H * nqb), blk = t % nqb;
    const int64_t rows = std::min(a.S, (blk + 1) * qb) - std::min(a.S, blk * qb);
    cum[t + 1] = cum[t] + double(rows) * double(a.kend[b] - a.kstart[b] + 8) + 1.0;
  }
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(nthreads, ntasks)));
  std::vector<int64_t> bounds(nt + 1, ntasks);
  bounds[0] = 0;
  for (int w = 1; w < nt; ++w)
    bounds[w] = std::lower_bound(cum.begin(), cum.end(), cum[ntasks] * w / nt) - cum.begin();
#pragma omp parallel num_threads(nt)
  {
    const int w = omp_get_thread_num();
    thread_local Buffers buf;
    int64_t packed = -1;  // b * H + h of the head whose Kᵀ and V sit in buf
    const int64_t t0 = std::min(bounds[w], ntasks), t1 = std::max(t0, std::min(bounds[w + 1], ntasks));
    const int64_t Sp = (a.S + PANEL - 1) / PANEL * PANEL;
    float* kt = buf.kt.get(size_t(Sp * a.D));
    float* vp = buf.vp.get(size_t(a.S * a.D + 8));
    float* s = buf.s.get(size_t(QK_ROWS * Sp + 8));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bh = t / nqb, blk = t % nqb, b = bh / a.H, h = bh % a.H;
      const int L = a.kend[b] - a.kstart[b];
      if (bh != packed && L > 0) {
        pack_kt(a.k + b * a.skb + int64_t(a.kstart[b]) * a.sks + h * a.skh, a.sks, L, int(a.D), kt);
        pack_v(a.v + b * a.svb + int64_t(a.kstart[b]) * a.svs + h * a.svh, a.svs, L, int(a.D), vp);
        packed = bh;
      }
      attend_rows(a, b, h, std::min(a.S, blk * qb), std::min(a.S, (blk + 1) * qb), kt, vp, s);
    }
  }
}

}  // namespace
}  // namespace cpu
}  // namespace spd

#ifndef SPD_ATTENTION_STANDALONE
namespace spd {
namespace {

bool attn_cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

void check_qkv(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be 4-D (batch, seq, heads, head_dim), got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.sizes() == q.sizes(), name, " must have the shape of q ", q.sizes(), ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.size(3) <= 1 || t.stride(3) == 1, name, " must have unit stride along head_dim, got strides ",
                    t.strides());
}

void check_range_arg(const at::Tensor& t, const char* name, int64_t B) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == B && t.is_contiguous(), name,
                    " must be a contiguous (batch,) = (", B, ",) tensor, got shape ", t.sizes());
}

// q, k, v: (B, S, H, D) float32, unit stride along D, any other strides. key_start, key_end:
// (B,) int32, 0 <= start <= end <= S. Returns (B, S, H * D).
at::Tensor attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_start,
                         const at::Tensor& key_end, double scale) {
  check_qkv(q, "q", q);
  check_qkv(k, "k", q);
  check_qkv(v, "v", q);
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2), D = q.size(3);
  TORCH_CHECK_VALUE(D % 8 == 0 && D > 0, "head_dim must be a positive multiple of 8, got ", D);
  TORCH_CHECK_VALUE(S < (int64_t(1) << 24), "sequence length ", S, " is too long for the cpu attention kernel");
  check_range_arg(key_start, "key_start", B);
  check_range_arg(key_end, "key_end", B);
  TORCH_CHECK_VALUE(std::isfinite(scale), "scale must be finite, got ", scale);
  const int32_t* ks = key_start.data_ptr<int32_t>();
  const int32_t* ke = key_end.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK_VALUE(0 <= ks[b] && ks[b] <= ke[b] && ke[b] <= S, "key range of sequence ", b, " is [", ks[b],
                      ", ", ke[b], "), outside [0, ", S, "]");
  TORCH_CHECK(attn_cpu_has_avx2_fma(), "the cpu attention kernel needs a CPU with AVX2 and FMA");
  at::Tensor out = at::empty({B, S, H * D}, q.options());
  if (B == 0 || S == 0 || H == 0) return out;
  cpu::AttnArgs a{q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                  q.stride(0), q.stride(1), q.stride(2),
                  k.stride(0), k.stride(1), k.stride(2),
                  v.stride(0), v.stride(1), v.stride(2),
                  ks, ke, out.data_ptr<float>(), B, S, H, D, float(scale)};
  cpu::attention_f32(a, at::in_parallel_region() ? 1 : at::get_num_threads());
  return out;
}

}  // namespace
}  // namespace spd

TORCH_LIBRARY_IMPL(spd_kernels_C, CPU, m) { m.impl("cpu_attention", &spd::attention_cpu); }
#endif  // SPD_ATTENTION_STANDALONE

#endif  // __AVX2__ && __FMA__
