// convert.cuh — private: the CUDA convert op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_CONVERT_CUH
#define CT_KERNELS_CUDA_CONVERT_CUH

#include "common.cuh"

void ct_cuda_to_storage(ct_kctx *ctx, void *dst, const float *src, size_t n);
void ct_cuda_to_f32(ct_kctx *ctx, float *dst, const void *src, size_t n);
#endif
