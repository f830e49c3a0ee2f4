// xent.cuh — private: the CUDA xent op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_XENT_CUH
#define CT_KERNELS_CUDA_XENT_CUH

#include "common.cuh"

void ct_cuda_xent_fwd(ct_kctx *ctx, float *losses, void *logits, const int32_t *targets, int N, int V);
void ct_cuda_xent_bwd(ct_kctx *ctx, void *probs, const int32_t *targets, float dloss, int N, int V);
#endif
