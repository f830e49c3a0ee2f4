// lora.cuh — private: the CUDA lora op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_LORA_CUH
#define CT_KERNELS_CUDA_LORA_CUH

#include "common.cuh"

void ct_cuda_lora_fwd(ct_kctx *ctx, void *out, void *h, const void *x, const void *A, const void *B,
                      void *scratch, int N, int K, int M, int r, float scale, float p, uint64_t seed);
size_t ct_cuda_lora_scratch_len(int N, int K, int r);
void ct_cuda_lora_bwd(ct_kctx *ctx, void *dx, void *dA, void *dB, const void *dout, const void *x, const void *h,
                      const void *A, const void *B, void *scratch, int N, int K, int M, int r, float scale, float p,
                      uint64_t seed);
#endif
