// The one registration unit: declares every op of the spd_kernels_C namespace; the CPU and
// CUDA sources add their kernels with TORCH_LIBRARY_IMPL under their dispatch keys.
#include <Python.h>
#include <torch/all.h>
#include <torch/library.h>

#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

extern "C" {
// A module with no methods: importing spd_kernels._C loads the library, whose static
// initialisers register the ops with the dispatcher.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace spd {

std::string build_info() {
  std::string s = "{";
#ifdef SPD_WITH_CUDA
  s += "\"cuda\": true, ";
#else
  s += "\"cuda\": false, ";
#endif
#ifdef _OPENMP
  s += "\"openmp\": true, \"max_threads\": " + std::to_string(omp_get_max_threads()) + ", ";
#else
  s += "\"openmp\": false, ";
#endif
#ifdef __AVX2__
  s += "\"avx2\": true, ";
#else
  s += "\"avx2\": false, ";
#endif
#ifdef __FMA__
  s += "\"fma\": true, ";
#else
  s += "\"fma\": false, ";
#endif
#ifdef SPD_DEBUG
  s += "\"debug\": true";
#else
  s += "\"debug\": false";
#endif
  return s + "}";
}

}  // namespace spd

TORCH_LIBRARY(spd_kernels_C, m) {
  m.def("build_info() -> str");
  m.impl("build_info", &spd::build_info);
  // Linear-layer products on a CSR-of-blocks weight (block (1,1) = CSR); see spd_kernels/ops.py.
  // meta = row_offsets, col_indices, block_rows, col_offsets, row_indices_t, perm_t (int32).
  m.def(
      "cpu_dds_t(Tensor x, Tensor values, Tensor row_offsets, Tensor col_indices, "
      "Tensor block_rows, Tensor col_offsets, Tensor row_indices_t, Tensor perm_t, "
      "Tensor? bias, str activation, bool save_preact) -> (Tensor, Tensor)");
  m.def(
      "cpu_dds(Tensor dy, Tensor values, Tensor row_offsets, Tensor col_indices, "
      "Tensor block_rows, Tensor col_offsets, Tensor row_indices_t, Tensor perm_t) -> Tensor");
  m.def(
      "cpu_sdd(Tensor dy, Tensor x, Tensor values, Tensor row_offsets, Tensor col_indices, "
      "Tensor block_rows, Tensor col_offsets, Tensor row_indices_t, Tensor perm_t) -> Tensor");
  m.def(
      "cuda_dds_t(Tensor x, Tensor values, Tensor row_offsets, Tensor col_indices, "
      "Tensor block_rows, Tensor col_offsets, Tensor row_indices_t, Tensor perm_t, "
      "Tensor? bias, str activation, bool save_preact) -> (Tensor, Tensor)");
  m.def(
      "cuda_dds(Tensor dy, Tensor values, Tensor row_offsets, Tensor col_indices, "
      "Tensor block_rows, Tensor col_offsets, Tensor row_indices_t, Tensor perm_t) -> Tensor");
  m.def(
      "cuda_sdd(Tensor dy, Tensor x, Tensor values, Tensor row_offsets, Tensor col_indices, "
      "Tensor block_rows, Tensor col_offsets, Tensor row_indices_t, Tensor perm_t) -> Tensor");
  // Fused self-attention (csrc/cpu/attention.cpp; spd_kernels/attention.py): q, k, v (B, S, H, D)
  // strided views, keys [key_start, key_end) per sequence; returns (B, S, H * D).
  m.def(
      "cpu_attention(Tensor q, Tensor k, Tensor v, Tensor key_start, Tensor key_end, float scale) "
      "-> Tensor");
}
