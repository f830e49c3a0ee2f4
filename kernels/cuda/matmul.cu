// matmul.cu — the linear layer on CUDA: out[N,M] = inp[N,K] . w[M,K]^T + bias[M] through
// cuBLASLt (bf16 operands, fp32 accumulation, one bf16 rounding per output), and its
// backward. The bias rides the GEMM's epilogue when its pointer is 16-byte aligned; otherwise
// (a bias at an odd offset of the flat parameter buffer) out is seeded with the bias and the
// GEMM adds into it (beta = 1): the same single rounding either way.
#include "colsum.cuh"
#include "gemm.cuh"
#include "matmul.cuh"

__global__ void bias_fill_kernel(bf16 *out, const bf16 *bias, size_t N, int M)
{
    const size_t n = N * (size_t)M;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = bias[i % M];
}

void ct_cuda_matmul_fwd(ct_kctx *ctx, void *out, const void *inp, const void *w, const void *bias, int N, int K,
                        int M)
{
    if (N <= 0 || M <= 0) return;
    const int epilogue_bias = bias && ((uintptr_t)bias % 16 == 0) && K > 0;
    if (bias && !epilogue_bias) {
        bias_fill_kernel<<<ct_blocks((size_t)N * M, 256), 256, 0, ctx->stream>>>((bf16 *)out, (const bf16 *)bias,
                                                                                  (size_t)N, M);
        CT_LAUNCH_CHECK(ctx);
    }
    ct_gemm_args g = {};
    g.transA = 0; g.transB = 1; g.M = N; g.N = M; g.K = K;
    g.A = inp; g.lda = K;
    g.B = w; g.ldb = K;
    g.C = out; g.ldc = M;
    g.ctype = CUDA_R_16BF; g.batch = 1; g.alpha = 1.0f;
    g.beta = bias && !epilogue_bias ? 1.0f : 0.0f;
    g.bias = epilogue_bias ? bias : NULL;
    ct_gemm(ctx, &g);
}

// dw += dout^T . inp, dbias += colsum(dout), then dinp += dout . w (last: dinp may alias inp)
void ct_cuda_matmul_bwd(ct_kctx *ctx, void *dinp, void *dw, void *dbias, const void *dout, const void *inp,
                        const void *w, int N, int K, int M)
{
    if (N <= 0 || M <= 0) return;
    if (dw) {
        ct_gemm_args g = {};
        g.transA = 1; g.transB = 0; g.M = M; g.N = K; g.K = N;
        g.A = dout; g.lda = M;  // stored [N,M]
        g.B = inp; g.ldb = K;   // stored [N,K]
        g.C = dw; g.ldc = K;
        g.ctype = CUDA_R_16BF; g.batch = 1; g.alpha = 1.0f; g.beta = 1.0f;
        ct_gemm(ctx, &g);
    }
    if (dbias) ct_cuda_colsum_add(ctx, (bf16 *)dbias, (const bf16 *)dout, N, M);
    if (dinp) {
        ct_gemm_args g = {};
        g.transA = 0; g.transB = 0; g.M = N; g.N = K; g.K = M;
        g.A = dout; g.lda = M;
        g.B = w; g.ldb = K;     // stored [M,K]
        g.C = dinp; g.ldc = K;
        g.ctype = CUDA_R_16BF; g.batch = 1; g.alpha = 1.0f; g.beta = 1.0f;
        ct_gemm(ctx, &g);
    }
}
