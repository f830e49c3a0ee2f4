// rope.cuh — private: the CUDA rotary position embedding (semantics: the matching slots in
// kernels.h). D must be even (aborts otherwise).
#ifndef CT_KERNELS_CUDA_ROPE_CUH
#define CT_KERNELS_CUDA_ROPE_CUH

#include "common.cuh"

void ct_cuda_rope_fwd(ct_kctx *ctx, void *x, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld);
void ct_cuda_rope_bwd(ct_kctx *ctx, void *dx, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld);
#endif
