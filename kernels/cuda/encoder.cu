// encoder.cu — GPT-2 input embedding on CUDA: out[b,t,:] = wte[tokens[b,t],:] + wpe[p,:] with
// p = pos[b*T+t] (pos NULL: t), and its backward. bf16 storage, fp32 sums, one rounding per output
// element. wpe may be NULL (no learned positions, as Llama): out is the embedding row, copied
// exactly.
//
// dwpe with positions (packed documents): each element p gathers the (b,t) at position p, b then
// t ascending, one thread per element, no atomics (encoder_dwpe_pos_kernel).
//
// dwte's scatter is deterministic and atomic-free: the block of position bt first checks
// whether an earlier position holds the same token; only the first one ("leader") works, and
// it sums dout over every position holding its token in ascending order, in fp32, then adds
// the sum into dwte's bf16 row once. bf16 atomics were rejected: every add would round to bf16
// (a token seen 1000 times loses most of its gradient) and the order would vary run to run.
// Cost: O((B*T)^2 / 256) token compares per call on top of the B*T*C gradient reads — fine for
// B*T up to ~64k; beyond that sort positions by token instead (needs scratch).
#include "encoder.cuh"

#define ENC_THREADS 256
#define ENC_CPT 4 // channels per thread per pass of the dwte kernel

__global__ void encoder_fwd_kernel(bf16 *out, const int32_t *tokens, const int32_t *pos, const bf16 *wte,
                                   const bf16 *wpe, size_t BT, int T, int C)
{
    const size_t n = BT * (size_t)C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t bt = i / C;
        int c = (int)(i % C), t = pos ? pos[bt] : (int)(bt % T);
        const bf16 *e = wte + (size_t)tokens[bt] * C + c;
        out[i] = wpe ? ct_bf(ct_ld(e) + ct_ld(wpe + (size_t)t * C + c)) : *e;
    }
}

// dwpe[t,c] += sum_b dout[b,t,c], b ascending
__global__ void encoder_dwpe_kernel(bf16 *dwpe, const bf16 *dout, int B, int T, int C)
{
    const size_t n = (size_t)T * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int b = 0; b < B; b++) s += ct_ld(dout + (size_t)b * n + i);
        dwpe[i] = ct_bf(ct_ld(dwpe + i) + s);
    }
}

// dwpe[p,c] += sum of dout[b,t,c] over the (b,t) with pos[b*T+t] = p, b then t ascending (the
// CPU's order). Positions follow the document rule (kernels.h): from a token at position q the
// next one at p is at least p - q tokens on (q < p: its document may reach p) or p + 1 on
// (q >= p: a new document must begin first), so each row takes O(T / (p + 1) + its documents)
// steps, all threads of a warp reading the same pos entries. Rows no token reaches are left as
// they are, bit for bit.
__global__ void encoder_dwpe_pos_kernel(bf16 *dwpe, const bf16 *dout, const int32_t *pos, int B, int T, int C)
{
    const size_t n = (size_t)T * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int p = (int)(i / C), c = (int)(i % C);
        float s = 0.0f;
        int hit = 0;
        for (int b = 0; b < B; b++) {
            const int32_t *pr = pos + (size_t)b * T;
            for (int t = p; t < T;) {
                const int q = pr[t];
                if (q == p) {
                    s += ct_ld(dout + ((size_t)b * T + t) * C + c);
                    hit = 1;
                }
                t += q < p ? p - q : p + 1;
            }
        }
        if (hit) dwpe[i] = ct_bf(ct_ld(dwpe + i) + s);
    }
}

// one block per position; see the file comment
__global__ void encoder_dwte_kernel(bf16 *dwte, const bf16 *dout, const int32_t *tokens, int BT, int C)
{
    __shared__ unsigned char s_match[ENC_THREADS];
    const int bt = blockIdx.x, tok = tokens[bt];
    int earlier = 0;
    for (int i = threadIdx.x; i < bt; i += blockDim.x) earlier |= tokens[i] == tok;
    if (__syncthreads_or(earlier)) return; // uniform: every thread of the block leaves
    bf16 *row = dwte + (size_t)tok * C;
    for (int c0 = 0; c0 < C; c0 += ENC_THREADS * ENC_CPT) {
        float acc[ENC_CPT];
        for (int u = 0; u < ENC_CPT; u++) acc[u] = 0.0f;
        for (int j0 = bt; j0 < BT; j0 += ENC_THREADS) {
            int j = j0 + threadIdx.x;
            int match = j < BT && tokens[j] == tok;
            __syncthreads(); // the previous chunk's s_match is consumed
            s_match[threadIdx.x] = (unsigned char)match;
            if (!__syncthreads_or(match)) continue; // also publishes s_match
            int nj = min(ENC_THREADS, BT - j0);
            for (int k = 0; k < nj; k++) {
                if (!s_match[k]) continue;
                const bf16 *d = dout + (size_t)(j0 + k) * C;
                for (int u = 0; u < ENC_CPT; u++) {
                    int c = c0 + u * ENC_THREADS + threadIdx.x;
                    if (c < C) acc[u] += ct_ld(d + c);
                }
            }
        }
        for (int u = 0; u < ENC_CPT; u++) {
            int c = c0 + u * ENC_THREADS + threadIdx.x;
            if (c < C) row[c] = ct_bf(ct_ld(row + c) + acc[u]);
        }
    }
}

void ct_cuda_encoder_fwd(ct_kctx *ctx, void *out, const int32_t *tokens, const int32_t *pos, const void *wte,
                         const void *wpe, int B, int T, int C)
{
    size_t n = (size_t)B * T * C;
    if (n == 0) return;
    encoder_fwd_kernel<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>((bf16 *)out, tokens, pos, (const bf16 *)wte,
                                                                    (const bf16 *)wpe, (size_t)B * T, T, C);
    CT_LAUNCH_CHECK(ctx);
}

void ct_cuda_encoder_bwd(ct_kctx *ctx, void *dwte, void *dwpe, const void *dout, const int32_t *tokens,
                         const int32_t *pos, int B, int T, int C)
{
    if (B <= 0 || T <= 0 || C <= 0) return;
    if (dwpe && pos) {
        encoder_dwpe_pos_kernel<<<ct_blocks((size_t)T * C, 256), 256, 0, ctx->stream>>>(
            (bf16 *)dwpe, (const bf16 *)dout, pos, B, T, C);
        CT_LAUNCH_CHECK(ctx);
    } else if (dwpe) {
        encoder_dwpe_kernel<<<ct_blocks((size_t)T * C, 256), 256, 0, ctx->stream>>>((bf16 *)dwpe,
                                                                                      (const bf16 *)dout, B, T, C);
        CT_LAUNCH_CHECK(ctx);
    }
    if (dwte) {
        encoder_dwte_kernel<<<B * T, ENC_THREADS, 0, ctx->stream>>>((bf16 *)dwte, (const bf16 *)dout, tokens, B * T,
                                                                     C);
        CT_LAUNCH_CHECK(ctx);
    }
}
