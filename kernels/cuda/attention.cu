// attention.cu — causal multi-head self-attention on CUDA, the straightforward version: per
// (b,h) the full T x T score matrix is materialised by cuBLASLt, softmaxed by a kernel, and
// multiplied back. (A fused flash-style kernel replaces this later; its stats would be the
// row logsumexps only.)
//
// qkv[B*T,3C]: row (b,t) holds q | k | v, head h in channels h*hs..(h+1)*hs-1 (hs = C/NH);
// out[B*T,C]. stats layout, attention_stats_len(B,T,NH) floats (BH = B*NH):
//   X   fp32 [BH,T,T]  scratch: scaled scores S in forward, dP = dO V^T in backward
//                      (length rounded up to 64 floats so Pb starts 256-byte aligned)
//   Pb  bf16 [BH,T,T]  softmax rows P (zeros right of the diagonal), kept for backward;
//                      backward overwrites it with scale * dS.
// P is kept in bf16 because both products that read it (O = P V, dV = P^T dO) take bf16
// operands; the softmax backward reads the same bf16 P, so the gradient is that of the
// function actually computed. Memory: 6 bytes per score (the CPU keeps 4).
//
// The GEMMs loop over b and batch over the NH heads of one b (heads sit hs channels apart:
// a uniform stride). Only the causal triangle matters, but full T x T products are computed:
// entries right of the diagonal have P = 0 and dS = 0, so they add nothing.
#include <math.h>

#include "attention.cuh"
#include "gemm.cuh"

// 1: one cuBLASLt call per b over all heads (strided batch); 0: one call per (b,h) — the
// fallback if a cuBLASLt version dislikes interleaved batches.
#ifndef CT_ATTN_BATCH_HEADS
#define CT_ATTN_BATCH_HEADS 1
#endif

#define ATTN_THREADS 256 // 8 warps, one row each

static size_t x_len(int B, int T, int NH) { return ((size_t)B * NH * T * T + 63) / 64 * 64; }

size_t ct_cuda_attention_stats_len(int B, int T, int NH)
{
    size_t n = (size_t)B * NH * T * T;
    return x_len(B, T, NH) + (n + 1) / 2;
}

static bf16 *pb_of(float *stats, int B, int T, int NH) { return (bf16 *)(stats + x_len(B, T, NH)); }

// Issue g for all NH heads: batched, or one call per head with the pointers stepped by the
// batch strides.
static void heads_gemm(ct_kctx *ctx, ct_gemm_args g, int NH)
{
    g.batch = NH;
    if (CT_ATTN_BATCH_HEADS || NH == 1) {
        ct_gemm(ctx, &g);
        return;
    }
    const size_t esz_c = g.ctype == CUDA_R_32F ? 4 : 2;
    for (int h = 0; h < NH; h++) {
        ct_gemm_args one = g;
        one.batch = 1;
        one.A = (const char *)g.A + (size_t)h * g.strideA * 2;
        one.B = (const char *)g.B + (size_t)h * g.strideB * 2;
        one.C = (char *)g.C + (size_t)h * g.strideC * esz_c;
        ct_gemm(ctx, &one);
    }
}

// row r of BH*T (query t = r % T): P[0..t] = softmax(S[0..t]), P[t+1..T) = 0
__global__ void attn_softmax_fwd_kernel(bf16 *P, const float *S, size_t rows, int T)
{
    const int lane = threadIdx.x & 31;
    const size_t r = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int t = (int)(r % T);
    const float *s = S + r * T;
    bf16 *p = P + r * T;
    float mx = -INFINITY;
    for (int j = lane; j <= t; j += 32) mx = fmaxf(mx, s[j]);
    mx = ct_warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j <= t; j += 32) sum += expf(s[j] - mx);
    const float inv = 1.0f / ct_warp_sum(sum);
    for (int j = lane; j < T; j += 32) p[j] = ct_bf(j <= t ? expf(s[j] - mx) * inv : 0.0f);
}

// dS = scale * P * (dP - sum_j P dP), in place over P (each lane rewrites only what it read,
// after the warp's reduction), zero right of the diagonal.
__global__ void attn_softmax_bwd_kernel(bf16 *P, const float *dP, size_t rows, int T, float scale)
{
    const int lane = threadIdx.x & 31;
    const size_t r = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int t = (int)(r % T);
    bf16 *p = P + r * T;
    const float *dp = dP + r * T;
    float d = 0.0f;
    for (int j = lane; j <= t; j += 32) d += ct_ld(p + j) * dp[j];
    d = ct_warp_sum(d);
    for (int j = lane; j < T; j += 32) p[j] = ct_bf(j <= t ? scale * (ct_ld(p + j) * (dp[j] - d)) : 0.0f);
}

void ct_cuda_attention_fwd(ct_kctx *ctx, void *out, float *stats, const void *qkv, int B, int T, int C, int NH)
{
    if (B <= 0 || T <= 0 || C <= 0 || NH <= 0) return;
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    float *X = stats;
    bf16 *P = pb_of(stats, B, T, NH);
    const bf16 *qkvb = (const bf16 *)qkv;
    const long long TT = (long long)T * T;

    for (int b = 0; b < B; b++) { // S = scale * Q K^T
        const bf16 *q = qkvb + (size_t)b * T * C3;
        ct_gemm_args g = {};
        g.transA = 0; g.transB = 1; g.M = T; g.N = T; g.K = hs;
        g.A = q; g.lda = C3; g.strideA = hs;
        g.B = q + C; g.ldb = C3; g.strideB = hs;
        g.C = X + (size_t)b * NH * TT; g.ldc = T; g.strideC = TT;
        g.ctype = CUDA_R_32F; g.alpha = scale; g.beta = 0.0f;
        heads_gemm(ctx, g, NH);
    }
    const size_t rows = (size_t)B * NH * T;
    const unsigned rows_per_block = ATTN_THREADS / 32;
    attn_softmax_fwd_kernel<<<(unsigned)((rows + rows_per_block - 1) / rows_per_block), ATTN_THREADS, 0,
                              ctx->stream>>>(P, X, rows, T);
    CT_LAUNCH_CHECK(ctx);
    for (int b = 0; b < B; b++) { // O = P V
        ct_gemm_args g = {};
        g.transA = 0; g.transB = 0; g.M = T; g.N = hs; g.K = T;
        g.A = P + (size_t)b * NH * TT; g.lda = T; g.strideA = TT;
        g.B = qkvb + (size_t)b * T * C3 + 2 * C; g.ldb = C3; g.strideB = hs;
        g.C = (bf16 *)out + (size_t)b * T * C; g.ldc = C; g.strideC = hs;
        g.ctype = CUDA_R_16BF; g.alpha = 1.0f; g.beta = 0.0f;
        heads_gemm(ctx, g, NH);
    }
}

void ct_cuda_attention_bwd(ct_kctx *ctx, void *dqkv, float *stats, const void *dout, const void *qkv,
                           const void *out, int B, int T, int C, int NH)
{
    if (B <= 0 || T <= 0 || C <= 0 || NH <= 0) return;
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    float *X = stats;
    bf16 *P = pb_of(stats, B, T, NH);
    const bf16 *qkvb = (const bf16 *)qkv, *dO = (const bf16 *)dout;
    bf16 *dq = (bf16 *)dqkv;
    const long long TT = (long long)T * T;

    for (int b = 0; b < B; b++) {
        const bf16 *q = qkvb + (size_t)b * T * C3;
        bf16 *dqb = dq + (size_t)b * T * C3;
        const bf16 *dOb = dO + (size_t)b * T * C;
        { // dV += P^T dO
            ct_gemm_args g = {};
            g.transA = 1; g.transB = 0; g.M = T; g.N = hs; g.K = T;
            g.A = P + (size_t)b * NH * TT; g.lda = T; g.strideA = TT;
            g.B = dOb; g.ldb = C; g.strideB = hs;
            g.C = dqb + 2 * C; g.ldc = C3; g.strideC = hs;
            g.ctype = CUDA_R_16BF; g.alpha = 1.0f; g.beta = 1.0f;
            heads_gemm(ctx, g, NH);
        }
        { // dP = dO V^T (fp32, into X)
            ct_gemm_args g = {};
            g.transA = 0; g.transB = 1; g.M = T; g.N = T; g.K = hs;
            g.A = dOb; g.lda = C; g.strideA = hs;
            g.B = q + 2 * C; g.ldb = C3; g.strideB = hs;
            g.C = X + (size_t)b * NH * TT; g.ldc = T; g.strideC = TT;
            g.ctype = CUDA_R_32F; g.alpha = 1.0f; g.beta = 0.0f;
            heads_gemm(ctx, g, NH);
        }
    }
    const size_t rows = (size_t)B * NH * T;
    const unsigned rows_per_block = ATTN_THREADS / 32;
    attn_softmax_bwd_kernel<<<(unsigned)((rows + rows_per_block - 1) / rows_per_block), ATTN_THREADS, 0,
                              ctx->stream>>>(P, X, rows, T, scale);
    CT_LAUNCH_CHECK(ctx);
    for (int b = 0; b < B; b++) {
        const bf16 *q = qkvb + (size_t)b * T * C3;
        bf16 *dqb = dq + (size_t)b * T * C3;
        { // dQ += dS K
            ct_gemm_args g = {};
            g.transA = 0; g.transB = 0; g.M = T; g.N = hs; g.K = T;
            g.A = P + (size_t)b * NH * TT; g.lda = T; g.strideA = TT;
            g.B = q + C; g.ldb = C3; g.strideB = hs;
            g.C = dqb; g.ldc = C3; g.strideC = hs;
            g.ctype = CUDA_R_16BF; g.alpha = 1.0f; g.beta = 1.0f;
            heads_gemm(ctx, g, NH);
        }
        { // dK += dS^T Q
            ct_gemm_args g = {};
            g.transA = 1; g.transB = 0; g.M = T; g.N = hs; g.K = T;
            g.A = P + (size_t)b * NH * TT; g.lda = T; g.strideA = TT;
            g.B = q; g.ldb = C3; g.strideB = hs;
            g.C = dqb + C; g.ldc = C3; g.strideC = hs;
            g.ctype = CUDA_R_16BF; g.alpha = 1.0f; g.beta = 1.0f;
            heads_gemm(ctx, g, NH);
        }
    }
}
