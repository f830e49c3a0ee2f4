// gemm.cuh — private: one cuBLASLt call in row-major terms, shared by matmul, attention and LoRA.
#ifndef CT_KERNELS_CUDA_GEMM_CUH
#define CT_KERNELS_CUDA_GEMM_CUH

#include "common.cuh"

// C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C  (+ bias[N] on every row), row-major,
// `batch` times with the given element strides. A and B are bf16; C is bf16 or fp32 (ctype).
// transA: A is stored [K,M] (lda >= M), else [M,K] (lda >= K); likewise transB: B stored [N,K].
// bias (bf16, may be NULL) needs ctype bf16 and batch 1. Pointers need only element alignment:
// the alignments actually present are passed to cuBLASLt's heuristic. fp32 accumulation.
// Aborts (file:line) on any cuBLASLt error or when no algorithm fits.
typedef struct {
    int transA, transB;
    int M, N, K;
    const void *A; long long lda, strideA;
    const void *B; long long ldb, strideB;
    void *C; long long ldc, strideC;
    cudaDataType_t ctype;
    int batch;
    float alpha, beta;
    const void *bias;
} ct_gemm_args;

void ct_gemm(ct_kctx *ctx, const ct_gemm_args *g);

#endif
