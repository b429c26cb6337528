# Written by benchmarks/gpu_csr_bench.py --write-crossover -- do not edit by hand; re-run it.
# Not measured yet: until it is, automatic dispatch runs CSR weights on CUDA with the dense
# product (the reference backend); use_backend("cuda") or SPD_KERNELS_BACKEND=cuda forces the kernels.
# backend -> layout -> op -> density below which the sparse kernel beats the dense product
CROSSOVER = {}
