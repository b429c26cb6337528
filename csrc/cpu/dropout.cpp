// Dropout for CPU training: spd_kernels_C::cpu_dropout draws the keep mask from a counter-based
// generator (Philox4x32-10, Salmon et al. 2011) and writes the scaled output and a bit mask in
// one pass; cpu_dropout_backward applies the bit mask to the output gradient.
//
// The mask is a pure function of (seed, offset, element index): element e keeps when the 16-bit
// word u(e) >= round(p * 2^16), where, with c = e / 64, k = (e % 64) / 8, l = e % 8,
//   u(e) = bits [16 (k % 2), 16 (k % 2) + 16) of word k / 2 of
//          Philox4x32-10(counter = (8 c + l, 0, offset_lo, offset_hi), key = (seed_lo, seed_hi)).
// So eight Philox blocks computed side by side in the lanes of AVX2 registers give 64 elements'
// words without any shuffle, and the result does not depend on the thread count. Sixteen bits a
// decision put p on a 2^-16 grid (keep-rate error <= 7.7e-6), half the generator work of 32.
// Bit mask: byte b holds elements 8 b .. 8 b + 7, bit j = element 8 b + j.
//
// cpu_dropout_seed draws (seed, offset) from torch's CPU generator, one pair a call.
// Registered from this file (a library fragment), so no other source needs to change.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <tuple>

#if defined(__AVX2__) && defined(__FMA__)
#include "simd.h"
#define SPD_DROPOUT_AVX2 1
#endif

namespace spd {
namespace {

constexpr uint32_t PHILOX_M0 = 0xD2511F53u, PHILOX_M1 = 0xCD9E8D57u;
constexpr uint32_t PHILOX_W0 = 0x9E3779B9u, PHILOX_W1 = 0xBB67AE85u;
constexpr int64_t CHUNK = 64;  // elements per 8 Philox blocks

struct Key {
  uint32_t seed_lo, seed_hi, off_lo, off_hi;
};

inline void philox_scalar(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t(PHILOX_M0) * c[0], p1 = uint64_t(PHILOX_M1) * c[2];
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0), hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c[0] = hi1 ^ c[1] ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c[3] ^ k1;
    c[3] = lo0;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
}

// The 64 words u(64 c + i), i < 64, of chunk c.
inline void chunk_words_scalar(int64_t c, const Key& key, uint16_t u[CHUNK]) {
  for (int l = 0; l < 8; ++l) {
    const uint64_t block = uint64_t(c) * 8 + l;
    uint32_t x[4] = {uint32_t(block), uint32_t(block >> 32), key.off_lo, key.off_hi};
    philox_scalar(x, key.seed_lo, key.seed_hi);
    for (int k = 0; k < 8; ++k) u[8 * k + l] = uint16_t(x[k / 2] >> (16 * (k % 2)));
  }
}

#ifdef SPD_DROPOUT_AVX2
// 32x32 -> 64 products of the eight lanes of a with m: (hi, lo) halves.
inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Philox4x32-10 of the blocks 8 c + l, l = lane: x[w] holds word w of every block.
inline void philox8(int64_t c, const Key& key, __m256i x[4]) {
  const uint64_t b0 = uint64_t(c) * 8;
  x[0] = _mm256_add_epi32(_mm256_set1_epi32(int(uint32_t(b0))), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  x[1] = _mm256_set1_epi32(int(uint32_t(b0 >> 32)));  // b0 is a multiple of 8: no carry into it
  x[2] = _mm256_set1_epi32(int(key.off_lo));
  x[3] = _mm256_set1_epi32(int(key.off_hi));
  const __m256i m0 = _mm256_set1_epi32(int(PHILOX_M0)), m1 = _mm256_set1_epi32(int(PHILOX_M1));
  uint32_t k0 = key.seed_lo, k1 = key.seed_hi;
  for (int r = 0; r < 10; ++r) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(x[0], m0, hi0, lo0);
    mulhilo8(x[2], m1, hi1, lo1);
    x[0] = _mm256_xor_si256(_mm256_xor_si256(hi1, x[1]), _mm256_set1_epi32(int(k0)));
    x[1] = lo1;
    x[2] = _mm256_xor_si256(_mm256_xor_si256(hi0, x[3]), _mm256_set1_epi32(int(k1)));
    x[3] = lo0;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
}

// Lane masks (all ones = keep) of the eight rows k of one chunk; t = drop threshold.
inline void keep_masks(const __m256i x[4], __m256i t_minus_1, __m256 keep[8]) {
  const __m256i low16 = _mm256_set1_epi32(0xFFFF);
  for (int k = 0; k < 8; ++k) {
    const __m256i w = x[k / 2];
    const __m256i u = (k % 2) ? _mm256_srli_epi32(w, 16) : _mm256_and_si256(w, low16);
    keep[k] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(u, t_minus_1));  // u, t < 2^17: signed is fine
  }
}
#endif

template <typename T>
inline float load1(const T* p) {
  return float(*p);
}
template <typename T>
inline T store1(float v) {
  return T(v);
}
#ifdef SPD_DROPOUT_AVX2
using cpu::bf16;
template <>
inline float load1<bf16>(const bf16* p) {
  return cpu::to_f32(*p);
}
template <>
inline bf16 store1<bf16>(float v) {
  return cpu::from_f32<bf16>(v);
}
#endif

// Elements [e0, e1) of chunk c (e0 a multiple of CHUNK), generic path.
template <typename T>
void dropout_chunk_scalar(int64_t c, int64_t n, const Key& key, uint32_t t, float scale, const T* x, T* y,
                          uint8_t* mask) {
  uint16_t u[CHUNK];
  chunk_words_scalar(c, key, u);
  const int64_t e0 = c * CHUNK, e1 = std::min(n, e0 + CHUNK);
  for (int64_t e = e0; e < e1; e += 8) {
    uint8_t byte = 0;
    for (int64_t j = 0; j < 8 && e + j < e1; ++j) {
      const bool keep = u[e + j - e0] >= t;
      byte |= uint8_t(keep) << j;
      y[e + j] = store1<T>(keep ? load1(x + e + j) * scale : 0.f);
    }
    mask[e / 8] = byte;
  }
}

template <typename T>
void dropout_kernel(const T* x, T* y, uint8_t* mask, int64_t n, const Key& key, uint32_t t, float scale) {
  const int64_t chunks = (n + CHUNK - 1) / CHUNK;
  at::parallel_for(0, chunks, 256, [&](int64_t c0, int64_t c1) {
    int64_t c = c0;
#ifdef SPD_DROPOUT_AVX2
    const int64_t full = std::min(c1, n / CHUNK);
    const __m256i tm1 = _mm256_set1_epi32(int(t) - 1);
    const __m256 vs = _mm256_set1_ps(scale);
    for (; c < full; ++c) {
      __m256i xr[4];
      __m256 keep[8];
      philox8(c, key, xr);
      keep_masks(xr, tm1, keep);
      const int64_t e0 = c * CHUNK;
      for (int k = 0; k < 8; ++k) {
        const int64_t e = e0 + 8 * k;
        cpu::st8(y + e, _mm256_and_ps(_mm256_mul_ps(cpu::ld8(x + e), vs), keep[k]));
        mask[e / 8] = uint8_t(_mm256_movemask_ps(keep[k]));
      }
    }
#endif
    for (; c < c1; ++c) dropout_chunk_scalar(c, n, key, t, scale, x, y, mask);
  });
}

template <typename T>
void dropout_backward_kernel(const T* dy, const uint8_t* mask, T* dx, int64_t n, float scale) {
  const int64_t bytes = (n + 7) / 8;
  at::parallel_for(0, bytes, 2048, [&](int64_t b0, int64_t b1) {
    int64_t b = b0;
#ifdef SPD_DROPOUT_AVX2
    const int64_t full = std::min(b1, n / 8);
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 vs = _mm256_set1_ps(scale);
    for (; b < full; ++b) {
      const __m256i m = _mm256_and_si256(_mm256_set1_epi32(mask[b]), bits);
      const __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, bits));
      cpu::st8(dx + 8 * b, _mm256_and_ps(_mm256_mul_ps(cpu::ld8(dy + 8 * b), vs), keep));
    }
#endif
    for (; b < b1; ++b) {
      for (int64_t j = 0; j < 8 && 8 * b + j < n; ++j) {
        const int64_t e = 8 * b + j;
        dx[e] = store1<T>(((mask[b] >> j) & 1) ? load1(dy + e) * scale : 0.f);
      }
    }
  });
}

#ifdef SPD_DROPOUT_AVX2
#define SPD_DROPOUT_DISPATCH(dtype, ...)                     \
  if ((dtype) == at::kFloat) {                               \
    using scalar_t = float;                                  \
    __VA_ARGS__();                                           \
  } else {                                                   \
    using scalar_t = bf16;                                   \
    __VA_ARGS__();                                           \
  }
#else
#define SPD_DROPOUT_DISPATCH(dtype, ...)                     \
  if ((dtype) == at::kFloat) {                               \
    using scalar_t = float;                                  \
    __VA_ARGS__();                                           \
  } else {                                                   \
    using scalar_t = c10::BFloat16;                          \
    __VA_ARGS__();                                           \
  }
#endif

void check_p(double p) {
  TORCH_CHECK_VALUE(std::isfinite(p) && p >= 0.0 && p <= 1.0, "dropout probability p must lie in [0, 1], got ",
                    p);
}

void check_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
                   " must be float32 or bfloat16 for cpu_dropout, got ", t.scalar_type());
}

// Drop threshold on the 16-bit word: keep iff u >= t (t = 2^16 drops everything).
uint32_t drop_threshold(double p) { return uint32_t(std::floor(p * 65536.0 + 0.5)); }

std::tuple<at::Tensor, at::Tensor> dropout_cpu(const at::Tensor& x_in, double p, int64_t seed, int64_t offset) {
  check_p(p);
  check_dtype(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.numel();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mask = at::empty({(n + 7) / 8}, x.options().dtype(at::kByte));
  if (n == 0) return {y, mask};
  const uint64_t s = uint64_t(seed), o = uint64_t(offset);
  const Key key{uint32_t(s), uint32_t(s >> 32), uint32_t(o), uint32_t(o >> 32)};
  const uint32_t t = drop_threshold(p);
  const float scale = p < 1.0 ? float(1.0 / (1.0 - p)) : 0.f;
  uint8_t* mp = mask.data_ptr<uint8_t>();
  SPD_DROPOUT_DISPATCH(x.scalar_type(), [&] {
    dropout_kernel(reinterpret_cast<const scalar_t*>(x.data_ptr()), reinterpret_cast<scalar_t*>(y.data_ptr()), mp,
                   n, key, t, scale);
  });
  return {y, mask};
}

at::Tensor dropout_backward_cpu(const at::Tensor& dy_in, const at::Tensor& mask, double p) {
  check_p(p);
  check_dtype(dy_in, "dy");
  const int64_t n = dy_in.numel();
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kByte, "mask must be uint8, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.numel() == (n + 7) / 8 && mask.is_contiguous(),
                    "mask must be a contiguous 1-D uint8 tensor of ceil(numel(dy) / 8) = ", (n + 7) / 8,
                    " bytes, got shape ", mask.sizes());
  const at::Tensor dy = dy_in.contiguous();
  at::Tensor dx = at::empty_like(dy, at::MemoryFormat::Contiguous);
  if (n == 0) return dx;
  const float scale = p < 1.0 ? float(1.0 / (1.0 - p)) : 0.f;
  const uint8_t* mp = mask.data_ptr<uint8_t>();
  SPD_DROPOUT_DISPATCH(dy.scalar_type(), [&] {
    dropout_backward_kernel(reinterpret_cast<const scalar_t*>(dy.data_ptr()), mp,
                            reinterpret_cast<scalar_t*>(dx.data_ptr()), n, scale);
  });
  return dx;
}

// (seed, offset) of one call: two 64-bit draws from torch's CPU generator (the default one unless
// given), so torch.manual_seed and torch.set_rng_state govern the masks.
std::tuple<int64_t, int64_t> dropout_seed_cpu(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  const uint64_t seed = gen->random64();
  const uint64_t offset = gen->random64();
  return {int64_t(seed), int64_t(offset)};
}

}  // namespace
}  // namespace spd

TORCH_LIBRARY_FRAGMENT(spd_kernels_C, m) {
  // (out, bit mask) = dropout of x with probability p; the mask is a function of (seed, offset).
  m.def("cpu_dropout(Tensor x, float p, int seed, int offset) -> (Tensor, Tensor)");
  m.def("cpu_dropout_backward(Tensor dy, Tensor mask, float p) -> Tensor");
  m.def("cpu_dropout_seed(Generator? generator=None) -> (int, int)");
  m.impl("cpu_dropout_seed", &spd::dropout_seed_cpu);
}

TORCH_LIBRARY_IMPL(spd_kernels_C, CPU, m) {
  m.impl("cpu_dropout", &spd::dropout_cpu);
  m.impl("cpu_dropout_backward", &spd::dropout_backward_cpu);
}
