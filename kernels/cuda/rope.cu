// rope.cu — rotary position embedding in place on CUDA, rotate_half layout (channel i pairs
// with i + D/2). One thread per (row n, pair i): the angle a = (float)pos[n] * inv_freq[i] is
// one fp32 product, as on the CPU, and its sine and cosine come from sincosf at full precision
// (no __sinf: positions reach thousands of radians); the thread then rotates pair i of every
// head of the row. Consecutive threads take consecutive pairs: coalesced.
// Backward is the transpose, the rotation by -a (sin negated). Each element is read and
// written by one thread: no race, in place.
#include "rope.cuh"

__global__ void rope_kernel(bf16 *x, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld,
                            float sign)
{
    const int half = D / 2;
    const size_t n_pairs = (size_t)N * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n_pairs;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t n = idx / half;
        const int i = (int)(idx % half);
        const float a = (float)pos[n] * inv_freq[i];
        float sn, cs;
        sincosf(a, &sn, &cs);
        sn *= sign;
        bf16 *row = x + n * ld;
        for (int h = 0; h < nh; h++) {
            bf16 *p = row + (size_t)h * D;
            const float x0 = ct_ld(p + i), x1 = ct_ld(p + i + half);
            p[i] = ct_bf(x0 * cs - x1 * sn);
            p[i + half] = ct_bf(x1 * cs + x0 * sn);
        }
    }
}

static void rope(ct_kctx *ctx, const char *op, void *x, const int32_t *pos, const float *inv_freq, int N, int nh, int D,
                 int ld, float sign)
{
    if (N <= 0 || nh <= 0 || D <= 0) return;
    if (D % 2 || (long long)nh * D > ld) {
        fprintf(stderr, "ctrain: cuda %s: unsupported shape N=%d nh=%d D=%d ld=%d: D must be even, nh*D <= ld\n", op, N,
                nh, D, ld);
        fflush(stderr);
        abort();
    }
    const size_t n_pairs = (size_t)N * (D / 2);
    rope_kernel<<<ct_blocks(n_pairs, 256), 256, 0, ctx->stream>>>((bf16 *)x, pos, inv_freq, N, nh, D, ld, sign);
    CT_LAUNCH_CHECK(ctx);
}

void ct_cuda_rope_fwd(ct_kctx *ctx, void *x, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld)
{
    rope(ctx, "rope_fwd", x, pos, inv_freq, N, nh, D, ld, 1.0f);
}

void ct_cuda_rope_bwd(ct_kctx *ctx, void *dx, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld)
{
    rope(ctx, "rope_bwd", dx, pos, inv_freq, N, nh, D, ld, -1.0f);
}
