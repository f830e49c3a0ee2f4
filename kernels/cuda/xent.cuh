// xent.cuh — private: the CUDA classifier loss (semantics: the xent slot in kernels.h).
#ifndef CT_KERNELS_CUDA_XENT_CUH
#define CT_KERNELS_CUDA_XENT_CUH

#include "common.cuh"

void ct_cuda_xent(ct_kctx *ctx, float *losses, void *logits, const int32_t *targets, float dloss, int N, int V,
                  int ld);
#endif
