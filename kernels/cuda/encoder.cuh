// encoder.cuh — private: the CUDA encoder op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_ENCODER_CUH
#define CT_KERNELS_CUDA_ENCODER_CUH

#include "common.cuh"

void ct_cuda_encoder_fwd(ct_kctx *ctx, void *out, const int32_t *tokens, const int32_t *pos, const void *wte,
                         const void *wpe, int B, int T, int C);
void ct_cuda_encoder_bwd(ct_kctx *ctx, void *dwte, void *dwpe, const void *dout, const int32_t *tokens,
                         const int32_t *pos, int B, int T, int C);
#endif
