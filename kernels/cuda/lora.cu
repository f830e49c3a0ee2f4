// lora.cu — a LoRA adapter beside a linear layer on CUDA (PEFT's formulation):
//   h[N,r] = drop(x) . A^T,   out[N,M] += scale * h . B^T
// and its backward, as GEMMs on cuBLASLt plus two small mask kernels. drop(x) = mask(x) / (1-p):
// the mask kernel writes the exact masked x (bf16, no rounding) and 1/(1-p) rides the GEMM's
// alpha. The mask is regenerated from (seed, element index) by dropout.cuh, never stored.
//
// scratch, lora_scratch_len(N,K,r) bf16 elements: dh[N,r] (padded to 128 elements so what
// follows is 256-byte aligned), then [N,K]: mask(x), and later (p > 0, dx wanted) the
// unmasked input gradient before the mask adds it into dx.
#include "dropout.cuh"
#include "gemm.cuh"
#include "lora.cuh"

static size_t dh_len(int N, int r) { return ((size_t)N * r + 127) / 128 * 128; }

size_t ct_cuda_lora_scratch_len(int N, int K, int r)
{
    if (N <= 0 || K <= 0 || r <= 0) return 0;
    return dh_len(N, r) + (size_t)N * K;
}

// xm[i] = x[i] where kept, else 0
__global__ void lora_mask_kernel(bf16 *xm, const bf16 *x, size_t n, uint32_t thr, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        xm[i] = ct_cuda_dropout_keep(seed, i, thr) ? x[i] : ct_bf(0.0f);
}

// dx[i] += t[i] where kept (t already carries scale / (1 - p))
__global__ void lora_mask_add_kernel(bf16 *dx, const bf16 *t, size_t n, uint32_t thr, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (ct_cuda_dropout_keep(seed, i, thr)) dx[i] = ct_bf(ct_ld(dx + i) + ct_ld(t + i));
}

static void mask_x(ct_kctx *ctx, bf16 *xm, const void *x, size_t n, uint32_t thr, uint64_t seed)
{
    lora_mask_kernel<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>(xm, (const bf16 *)x, n, thr, seed);
    CT_LAUNCH_CHECK(ctx);
}

void ct_cuda_lora_fwd(ct_kctx *ctx, void *out, void *h, const void *x, const void *A, const void *B, void *scratch,
                      int N, int K, int M, int r, float scale, float p, uint64_t seed)
{
    if (N <= 0 || r <= 0) return;
    if (K <= 0) { // h = 0; out gains nothing
        CT_CUDA_CHECK(cudaMemsetAsync(h, 0, (size_t)N * r * sizeof(bf16), ctx->stream));
        return;
    }
    const void *xa = x;
    float inv = 1.0f;
    if (p > 0.0f) {
        bf16 *xm = (bf16 *)scratch + dh_len(N, r);
        mask_x(ctx, xm, x, (size_t)N * K, ct_cuda_dropout_threshold(p), seed);
        xa = xm;
        inv = 1.0f / (1.0f - p);
    }
    ct_gemm_args g = {}; // h = inv * mask(x) . A^T
    g.transA = 0; g.transB = 1; g.M = N; g.N = r; g.K = K;
    g.A = xa; g.lda = K;
    g.B = A; g.ldb = K;
    g.C = h; g.ldc = r;
    g.ctype = CUDA_R_16BF; g.batch = 1; g.alpha = inv; g.beta = 0.0f;
    ct_gemm(ctx, &g);
    if (M > 0) { // out += scale * h . B^T
        ct_gemm_args o = {};
        o.transA = 0; o.transB = 1; o.M = N; o.N = M; o.K = r;
        o.A = h; o.lda = r;
        o.B = B; o.ldb = r;
        o.C = out; o.ldc = M;
        o.ctype = CUDA_R_16BF; o.batch = 1; o.alpha = scale; o.beta = 1.0f;
        ct_gemm(ctx, &o);
    }
}

// dh = dout . B; dB += scale * dout^T . h; dA += scale * dh^T . drop(x);
// dx += scale * drop'(dh . A), written last (dx may share memory with x).
void ct_cuda_lora_bwd(ct_kctx *ctx, void *dx, void *dA, void *dB, const void *dout, const void *x, const void *h,
                      const void *A, const void *B, void *scratch, int N, int K, int M, int r, float scale, float p,
                      uint64_t seed)
{
    if (N <= 0 || K <= 0 || M <= 0 || r <= 0) return;
    if (!dx && !dA && !dB) return;
    bf16 *dh = (bf16 *)scratch, *xm = (bf16 *)scratch + dh_len(N, r);
    const uint32_t thr = ct_cuda_dropout_threshold(p);
    const float inv = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    const size_t nk = (size_t)N * K;

    if (dA || dx) {
        ct_gemm_args g = {};
        g.transA = 0; g.transB = 0; g.M = N; g.N = r; g.K = M;
        g.A = dout; g.lda = M;
        g.B = B; g.ldb = r; // stored [M,r]
        g.C = dh; g.ldc = r;
        g.ctype = CUDA_R_16BF; g.batch = 1; g.alpha = 1.0f; g.beta = 0.0f;
        ct_gemm(ctx, &g);
    }
    if (dB) {
        ct_gemm_args g = {};
        g.transA = 1; g.transB = 0; g.M = M; g.N = r; g.K = N;
        g.A = dout; g.lda = M; // stored [N,M]
        g.B = h; g.ldb = r;    // [N,r]
        g.C = dB; g.ldc = r;
        g.ctype = CUDA_R_16BF; g.batch = 1; g.alpha = scale; g.beta = 1.0f;
        ct_gemm(ctx, &g);
    }
    if (dA) {
        const void *xa = x;
        if (p > 0.0f) {
            mask_x(ctx, xm, x, nk, thr, seed);
            xa = xm;
        }
        ct_gemm_args g = {};
        g.transA = 1; g.transB = 0; g.M = r; g.N = K; g.K = N;
        g.A = dh; g.lda = r; // stored [N,r]
        g.B = xa; g.ldb = K; // [N,K]
        g.C = dA; g.ldc = K;
        g.ctype = CUDA_R_16BF; g.batch = 1; g.alpha = scale * inv; g.beta = 1.0f;
        ct_gemm(ctx, &g);
    }
    if (dx) {
        ct_gemm_args g = {};
        g.transA = 0; g.transB = 0; g.M = N; g.N = K; g.K = r;
        g.A = dh; g.lda = r;
        g.B = A; g.ldb = K; // stored [r,K]
        g.ctype = CUDA_R_16BF; g.batch = 1; g.alpha = scale * inv;
        if (p > 0.0f) { // the unmasked gradient into scratch, then the mask adds it in
            g.C = xm; g.ldc = K; g.beta = 0.0f;
            ct_gemm(ctx, &g);
            lora_mask_add_kernel<<<ct_blocks(nk, 256), 256, 0, ctx->stream>>>((bf16 *)dx, xm, nk, thr, seed);
            CT_LAUNCH_CHECK(ctx);
        } else {
            g.C = dx; g.ldc = K; g.beta = 1.0f;
            ct_gemm(ctx, &g);
        }
    }
}
