// Device helpers of the CSR kernels: element types, vector loads, the epilogue activations.
// Pure CUDA (no torch headers), so the kernels compile on their own in the source checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "csr_plan.h"

namespace spd_cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Explicit conversions: they work whether or not __CUDA_NO_HALF_CONVERSIONS__ is defined.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// An element from its bit pattern (the low 16 bits for the 2-byte types).
template <typename T>
__device__ __forceinline__ float bits_to_float(unsigned int bits);
template <>
__device__ __forceinline__ float bits_to_float<float>(unsigned int bits) {
  return __uint_as_float(bits);
}
template <>
__device__ __forceinline__ float bits_to_float<__half>(unsigned int bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits & 0xffffu)));
}
template <>
__device__ __forceinline__ float bits_to_float<__nv_bfloat16>(unsigned int bits) {
  return __uint_as_float(bits << 16);  // bfloat16 is the top half of a float32: exact
}

// N consecutive 32-bit words through the read-only path, 16 bytes per load where possible.
template <int N>
__device__ __forceinline__ void load_words(const void* __restrict__ p, unsigned int (&w)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      const uint4 v = __ldg(static_cast<const uint4*>(p) + i);
      w[4 * i + 0] = v.x;
      w[4 * i + 1] = v.y;
      w[4 * i + 2] = v.z;
      w[4 * i + 3] = v.w;
    }
  } else if constexpr (N == 2) {
    const uint2 v = __ldg(static_cast<const uint2*>(p));
    w[0] = v.x;
    w[1] = v.y;
  } else {
    static_assert(N == 1, "load_words: 1, 2 or a multiple of 4 words");
    w[0] = __ldg(static_cast<const unsigned int*>(p));
  }
}

// Loads V consecutive elements (V * sizeof(T) bytes, aligned to that size up to 16 bytes) in
// as few instructions as possible and widens them to float, all in registers.
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&out)[V]) {
  constexpr int kBytes = V * static_cast<int>(sizeof(T));
  if constexpr (kBytes == 2) {
    out[0] = bits_to_float<T>(__ldg(reinterpret_cast<const unsigned short*>(p)));
  } else {
    constexpr int kWords = kBytes / 4;
    unsigned int w[kWords];
    load_words<kWords>(p, w);
    if constexpr (sizeof(T) == 4) {
#pragma unroll
      for (int i = 0; i < V; ++i) out[i] = bits_to_float<T>(w[i]);
    } else {
#pragma unroll
      for (int i = 0; i < kWords; ++i) {  // little-endian: the lower address is the low half
        out[2 * i] = bits_to_float<T>(w[i]);
        out[2 * i + 1] = bits_to_float<T>(w[i] >> 16);
      }
    }
  }
}

// Must match spd_kernels/activations.py (and csr_launch.h's Activation).
enum ActivationCode : int { kActNone = 0, kActRelu = 1, kActGelu = 2, kActGeluTanh = 3 };

// act(z) in float32, as torch computes it for every dtype (opmath float).
// relu keeps NaN (torch.relu does); gelu is the erf form; gelu_tanh uses
// 0.5*(1 + tanh(u)) = 1 / (1 + exp(-2u)), because under --use_fast_math tanhf becomes
// tanh.approx.f32 (~2^-11 relative error), too coarse for float32 outputs, while expf stays
// within a few ulp.
__device__ __forceinline__ float activate(float z, int act) {
  switch (act) {
    case kActRelu:
      return (z > 0.f || z != z) ? z : 0.f;
    case kActGelu:
      return 0.5f * z * (1.f + erff(z * 0.70710678118654752440f));
    case kActGeluTanh: {
      const float u = 0.79788456080286535588f * (z + 0.044715f * z * z * z);  // sqrt(2/pi)
      return z / (1.f + expf(-2.f * u));
    }
    default:
      return z;
  }
}

}  // namespace spd_cuda
