// One header of argument checks shared by every C++/CUDA entry point (flash-attention style).
#pragma once
#include <torch/all.h>

#define SPD_CHECK_DEVICE(x, dev)                                                          \
  TORCH_CHECK((x).device() == (dev), #x " must be on ", (dev), ", got ", (x).device())
#define SPD_CHECK_CPU(x) TORCH_CHECK((x).device().is_cpu(), #x " must be a CPU tensor, got ", (x).device())
#define SPD_CHECK_CUDA(x) TORCH_CHECK((x).device().is_cuda(), #x " must be a CUDA tensor, got ", (x).device())
#define SPD_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define SPD_CHECK_DIM(x, d) \
  TORCH_CHECK((x).dim() == (d), #x " must be ", (d), "-D, got shape ", (x).sizes())
#define SPD_CHECK_DTYPE(x, dt) \
  TORCH_CHECK((x).scalar_type() == (dt), #x " must have dtype ", (dt), ", got ", (x).scalar_type())
#define SPD_CHECK_SHAPE(x, ...)                                                           \
  TORCH_CHECK((x).sizes() == torch::IntArrayRef({__VA_ARGS__}), #x " must have shape (", \
              #__VA_ARGS__, "), got ", (x).sizes())
#define SPD_CHECK_INDEX(x) \
  do { SPD_CHECK_DIM(x, 1); SPD_CHECK_DTYPE(x, torch::kInt32); SPD_CHECK_CONTIGUOUS(x); } while (0)
