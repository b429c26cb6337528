// AVX2/FMA building blocks of the CPU kernels: typed loads/stores (float32, bfloat16 with
// float32 arithmetic), the fused bias + activation epilogue, 8x8 transposes and a grow-only
// scratch buffer. No torch headers here, so the kernels compile (and can be timed) on their own.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)

#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

namespace spd {
namespace cpu {

// Bit layout of c10::BFloat16 (the upper half of a float32).
struct bf16 {
  uint16_t x;
};

inline float to_f32(float v) { return v; }
inline float to_f32(bf16 v) {
  uint32_t u = uint32_t(v.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T>
inline T from_f32(float v);
template <>
inline float from_f32<float>(float v) {
  return v;
}
// Round to nearest even, NaN -> quiet NaN: the same rule as c10::BFloat16(float).
template <>
inline bf16 from_f32<bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if (std::isnan(v)) return bf16{0x7FC0};
  u += ((u >> 16) & 1u) + 0x7FFFu;
  return bf16{uint16_t(u >> 16)};
}

// ------------------------------------------------------------------ 8-wide loads and stores
inline __m256 ld8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 ld8(const bf16* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 bc8(const float* p) { return _mm256_broadcast_ss(p); }
inline __m256 bc8(const bf16* p) { return _mm256_set1_ps(to_f32(*p)); }

inline void st8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void st8(bf16* p, __m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
  __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// In-register transpose of an 8x8 float block: r[i] holds row i on entry, column i on exit.
inline void transpose8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// ------------------------------------------------------------------ activations
// Same definitions as spd_kernels/activations.py: relu, gelu (erf form), gelu_tanh.
enum Act : int { ACT_NONE = 0, ACT_RELU = 1, ACT_GELU = 2, ACT_GELU_TANH = 3 };

// exp for x <= ~88 (Cephes polynomial, ~1 ulp); clamps written (const, x) so NaN passes through.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-87.3365478515625f), x);
  __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  // 2^fx; fx lies in [-126, 128): the exponent field stays normal except at the top, where
  // exp overflows anyway.
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// 1 / d for finite d != 0: the 12-bit estimate and one Newton step (~2 ulp), a few times cheaper
// than a division.
inline __m256 rcp8(__m256 d) {
  __m256 r = _mm256_rcp_ps(d);
  return _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.0f)));  // r (2 - d r)
}

// erf(x) = x P(x^2) / Q(x^2) on x clamped to [-4, 4] (erf(4) rounds to 1 in float32): a rational
// minimax form (the one Eigen and XLA use for float32), |error| < 1e-7 in exact arithmetic. No
// exp and two short independent polynomial chains: about twice the throughput of
// Abramowitz-Stegun 7.1.26 with its exp. Clamps written (const, x) so a NaN passes through.
inline __m256 erf8(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-4.0f), _mm256_min_ps(_mm256_set1_ps(4.0f), x));
  const __m256 x2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_fmadd_ps(x2, _mm256_set1_ps(-2.72614225801306e-10f), _mm256_set1_ps(2.77068142495902e-08f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-2.10102402082508e-06f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-5.69250639462346e-05f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-7.34990630326855e-04f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-2.95459980854025e-03f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-1.60960333262415e-02f));
  __m256 q = _mm256_fmadd_ps(x2, _mm256_set1_ps(-1.45660718464996e-05f), _mm256_set1_ps(-2.13374055278905e-04f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(-1.68282697438203e-03f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(-7.37332916720468e-03f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(-1.42647390514189e-02f));  // q <= -0.0142: never 0
  const __m256 r = _mm256_mul_ps(_mm256_mul_ps(x, p), rcp8(q));
  // from |x| = 3.9 erf rounds to +-1: return it exactly, so that 1 + erf(x) is 0 far left (a GELU
  // of -100 is -0, not -100 times the approximation's error)
  const __m256 big = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps(3.9f), _CMP_GE_OQ);
  const __m256 one = _mm256_or_ps(_mm256_and_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps(1.0f));
  return _mm256_blendv_ps(r, one, big);
}

// tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|) in (0, 1]: no overflow.
inline __m256 tanh8(__m256 u) {
  const __m256 neg0 = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
  __m256 sign = _mm256_and_ps(neg0, u);
  __m256 a = _mm256_xor_ps(sign, u);
  __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), a));
  __m256 v = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
  return _mm256_xor_ps(sign, v);
}

template <int ACT>
inline __m256 act8(__m256 z) {
  if constexpr (ACT == ACT_RELU) {
    return _mm256_max_ps(_mm256_setzero_ps(), z);  // (0, z): a NaN z stays NaN
  } else if constexpr (ACT == ACT_GELU) {
    __m256 h = _mm256_mul_ps(_mm256_set1_ps(0.5f), z);
    __m256 c = erf8(_mm256_mul_ps(z, _mm256_set1_ps(0.70710678118654752f)));
    return _mm256_fmadd_ps(h, c, h);  // 0.5 z (1 + erf(z / sqrt 2))
  } else if constexpr (ACT == ACT_GELU_TANH) {
    __m256 z3 = _mm256_mul_ps(_mm256_mul_ps(z, z), z);
    __m256 inner = _mm256_mul_ps(_mm256_set1_ps(0.79788456080286536f),
                                 _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), z3, z));
    __m256 h = _mm256_mul_ps(_mm256_set1_ps(0.5f), z);
    return _mm256_fmadd_ps(h, tanh8(inner), h);
  } else {
    return z;
  }
}

// Scalar form of act8 (tails): same arithmetic lane by lane.
template <int ACT>
inline float act1(float z) {
  alignas(32) float buf[8];
  _mm256_store_ps(buf, act8<ACT>(_mm256_set1_ps(z)));
  return buf[0];
}

// The forward epilogue on 8 consecutive outputs of one row: z = acc + bias; y = act(z).
template <int ACT, typename T>
inline void epilogue8(__m256 acc, const T* bias, T* y, T* z) {
  if (bias) acc = _mm256_add_ps(acc, ld8(bias));
  if (z) st8(z, acc);
  st8(y, act8<ACT>(acc));
}

// The activation as a second pass over outputs still in L1: y[r * ldy + 8q .. +8) = act(...) for
// r < rows, q < nvec, four vectors at a time (independent chains). Applied inside a 6x16 register
// tile the activation's temporaries spill the twelve accumulators, which made a fused GELU cost
// more than a separate pass over memory. float32 only (bfloat16 would round before the activation).
template <int ACT>
inline void act_rows(float* y, int64_t ldy, int64_t rows, int nvec) {
  const int64_t n = rows * nvec;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    float* p[4];
    __m256 v[4];
    for (int u = 0; u < 4; ++u) {
      p[u] = y + ((i + u) / nvec) * ldy + 8 * ((i + u) % nvec);
      v[u] = _mm256_loadu_ps(p[u]);
    }
    for (int u = 0; u < 4; ++u) v[u] = act8<ACT>(v[u]);
    for (int u = 0; u < 4; ++u) _mm256_storeu_ps(p[u], v[u]);
  }
  for (; i < n; ++i) {
    float* q = y + (i / nvec) * ldy + 8 * (i % nvec);
    _mm256_storeu_ps(q, act8<ACT>(_mm256_loadu_ps(q)));
  }
}

// Whether a float32 forward applies ACT in a second pass (act_rows) instead of in its tile.
template <int ACT, typename T>
constexpr bool kActSecondPass = (ACT == ACT_GELU || ACT == ACT_GELU_TANH) && std::is_same_v<T, float>;

// Outputs from this size go to memory anyway: the block-sparse dds_t and dds stream them
// (non-temporal stores: no read of each line before it is written, a third of the traffic at high
// sparsity, where these kernels are bound by it). float32 with 32-byte aligned rows only.
constexpr int64_t STREAM_BYTES = 4 << 20;

template <typename T>
inline bool stream_output(const T* out, int64_t rows, int64_t cols) {
  return std::is_same_v<T, float> && rows * cols * int64_t(sizeof(T)) >= STREAM_BYTES && cols % 8 == 0 &&
         reinterpret_cast<uintptr_t>(out) % 32 == 0;
}

// 8 floats to out, streamed or not (float32; other types store normally).
template <typename T>
inline void st8_maybe_stream(T* out, __m256 v, bool stream) {
  if constexpr (std::is_same_v<T, float>) {
    if (stream) return _mm256_stream_ps(out, v);
  }
  st8(out, v);
}

// The same with a streaming (non-temporal) store of y, for outputs too large to stay in cache:
// no read-for-ownership of each line. float32 (y 32-byte aligned); other types store normally.
// The writer issues _mm_sfence() before its results are read.
template <int ACT, typename T>
inline void epilogue8_stream(__m256 acc, const T* bias, T* y, T* z) {
  if constexpr (std::is_same_v<T, float>) {
    if (bias) acc = _mm256_add_ps(acc, ld8(bias));
    if (z) st8(z, acc);
    _mm256_stream_ps(y, act8<ACT>(acc));
  } else {
    epilogue8<ACT>(acc, bias, y, z);
  }
}

template <int ACT, typename T>
inline void epilogue1(float acc, const T* bias, T* y, T* z) {
  if (bias) acc += to_f32(*bias);
  if (z) *z = from_f32<T>(acc);
  *y = from_f32<T>(act1<ACT>(acc));
}

// ------------------------------------------------------------------ scratch
// A grow-only, 64-byte aligned float buffer. Kept thread_local by its users, so steady-state
// calls allocate nothing but their outputs.
struct Scratch {
  float* ptr = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(ptr); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(ptr);
      size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
      ptr = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
      if (!ptr) {
        cap = 0;
        throw std::bad_alloc();
      }
      cap = n;
    }
    return ptr;
  }
};

}  // namespace cpu
}  // namespace spd

#endif  // __AVX2__ && __FMA__
