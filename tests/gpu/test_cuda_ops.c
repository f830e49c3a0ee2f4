/* test_cuda_ops.c — every CUDA op against its CPU twin (tests/gpu, ctest -L gpu).
 *
 * For each op: fresh random inputs (seed printed; CT_TEST_SEED=<n> reproduces a run), rounded
 * to bf16 so both backends see the same values; the CPU backend runs in fp32; the CUDA backend
 * gets them through to_storage, its outputs POISONED with NaN bit patterns first (an element an
 * op forgets to write fails), and results come back through to_f32. Gradient outputs are
 * pre-filled with random values on both sides ("backward ADDS"), and the NULL-gradient cases of
 * kernels.h are run too.
 *
 * Tolerances (an element passes when |gpu - cpu| <= rtol*|cpu| + afrac*max|cpu|): bf16 outputs
 * use rtol 2e-2 and afrac 1e-2 (one bf16 rounding is 2^-9 relative; the absolute term, scaled to
 * the tensor's magnitude, covers cancellation in sums and products); fp32 statistics (mean,
 * rstd, losses) use 1e-3 / 1e-4; AdamW's fp32 state, computed from identical inputs by the same
 * operation sequence, uses 1e-6; sumsq (double) 1e-9 relative.
 *
 * Exit: 0 all passed, 1 a check failed, 77 (ctest: skipped) when this build or machine has no
 * CUDA device. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpu_test.h"
#include "kernels.h"

#define RTOL 2e-2
#define AFRAC 1e-2

static const ct_backend *cpu, *gpu;
static ct_kctx *ck, *gk;
static uint64_t rng;

/* device allocations, freed at the end */
static void *dev_ptrs[4096];
static int ndev;

static void *dalloc(size_t bytes)
{
    void *p = gpu->alloc(bytes);
    if (!p || ndev == 4096) { fprintf(stderr, "device allocation of %zu bytes failed\n", bytes); exit(1); }
    dev_ptrs[ndev++] = p;
    return p;
}


static float *rnd(size_t n, float lo, float hi)
{
    float *x = ct_test_alloc(n);
    ct_test_fill(x, n, &rng, lo, hi);
    for (size_t i = 0; i < n; i++) x[i] = bf16r(x[i]);
    return x;
}

static float *dup_f(const float *x, size_t n)
{
    float *c = ct_test_alloc(n);
    memcpy(c, x, n * sizeof(float));
    return c;
}

/* host fp32 -> device bf16 via to_storage */
static void *up(const float *h, size_t n)
{
    float *tmp = dalloc(n * 4 + 4);
    void *d = dalloc(n * 2 + 2);
    gpu->upload(gk, tmp, h, n * 4);
    gpu->to_storage(gk, d, tmp, n);
    return d;
}

static void *up_raw(const void *h, size_t bytes)
{
    void *d = dalloc(bytes + 4);
    gpu->upload(gk, d, h, bytes);
    return d;
}

/* n bf16 (2 bytes) or fp32 (4 bytes) elements, every byte 0xff: NaN either way */
static void *poison(size_t n, size_t esz)
{
    void *d = dalloc(n * esz + 4);
    unsigned char *h = malloc(n * esz + 1);
    memset(h, 0xff, n * esz + 1);
    gpu->upload(gk, d, h, n * esz);
    free(h);
    return d;
}

static float *down(const void *d, size_t n)
{
    float *tmp = dalloc(n * 4 + 4);
    float *h = ct_test_alloc(n);
    gpu->to_f32(gk, tmp, d, n);
    gpu->download(gk, h, tmp, n * 4);
    return h;
}

static float *down_f32(const float *d, size_t n)
{
    float *h = ct_test_alloc(n);
    gpu->download(gk, h, d, n * 4);
    return h;
}


/* The CPU twin of a slot after attention_bwd may be missing (kernels.h allows NULL): then the
 * op cannot be compared, which counts as a failure here, named, instead of a crash. */
static int twin(const char *op, int present)
{
    if (!present) {
        fprintf(stderr, "%s: the CPU backend has no %s to compare with\n", "test_cuda_ops", op);
        ct_test_failures++;
    }
    return present;
}

/* ---- conversions -------------------------------------------------------------------------- */
static void test_convert(void)
{
    size_t n = 1000;
    float *x = ct_test_alloc(n);
    ct_test_fill(x, n, &rng, -100.0f, 100.0f);
    x[0] = 1.0f + 0x1p-8f;     /* tie: rounds down to even 1.0 */
    x[1] = 1.0f + 3 * 0x1p-8f; /* tie: rounds up to even 1 + 2^-6 */
    x[2] = -0.0f;
    x[3] = 3.0e38f;
    float *want = ct_test_alloc(n);
    for (size_t i = 0; i < n; i++) want[i] = bf16r(x[i]);
    float *got = down(up(x, n), n);
    CMP("to_storage/to_f32 round trip", got, want, n, 0, 0);
}

/* ---- encoder ------------------------------------------------------------------------------ */
/* doclen > 0: positions of packed documents of up to doclen tokens (wpe rows gather from
 * several (b,t), the dwpe kernel's position search) */
static void test_encoder(int B, int T, int C, int V, int learned_pos, int doclen)
{
    size_t BT = (size_t)B * T;
    int32_t *tok = malloc(BT * sizeof *tok);
    for (size_t i = 0; i < BT; i++) tok[i] = (int32_t)(ct_test_rand_u64(&rng) % (uint64_t)V);
    int32_t *pos = doclen ? ct_test_doc_positions(B, T, doclen, rng) : NULL;
    int32_t *dpos = pos ? up_raw(pos, BT * sizeof *pos) : NULL;
    float *wte = rnd((size_t)V * C, -1, 1), *wpe = rnd((size_t)T * C, -1, 1);
    float *out = ct_test_alloc(BT * C);
    cpu->encoder_fwd(ck, out, tok, pos, wte, learned_pos ? wpe : NULL, B, T, C);
    int32_t *dtok = up_raw(tok, BT * sizeof *tok);
    void *dout_ = poison(BT * C, 2);
    gpu->encoder_fwd(gk, dout_, dtok, dpos, up(wte, (size_t)V * C), learned_pos ? up(wpe, (size_t)T * C) : NULL, B, T,
                     C);
    if (learned_pos) CMP("encoder_fwd out", down(dout_, BT * C), out, BT * C, RTOL, AFRAC);
    else CMP("encoder_fwd out (wpe NULL: the embedding rows, exactly)", down(dout_, BT * C), out, BT * C, 0, 0);
    if (!learned_pos) return; /* backward without wpe is encoder_bwd's dwpe = NULL mode below */

    float *g = rnd(BT * C, -1, 1), *pte = rnd((size_t)V * C, -1, 1), *ppe = rnd((size_t)T * C, -1, 1);
    void *dg = up(g, BT * C);
    for (int mode = 0; mode < 4; mode++) { /* 0 both, 1 dwte only, 2 dwpe only, 3 neither */
        float *cte = dup_f(pte, (size_t)V * C), *cpe = dup_f(ppe, (size_t)T * C);
        void *gte = up(pte, (size_t)V * C), *gpe = up(ppe, (size_t)T * C);
        int wte_on = mode == 0 || mode == 1, wpe_on = mode == 0 || mode == 2;
        cpu->encoder_bwd(ck, wte_on ? cte : NULL, wpe_on ? cpe : NULL, g, tok, pos, B, T, C);
        gpu->encoder_bwd(gk, wte_on ? gte : NULL, wpe_on ? gpe : NULL, dg, dtok, dpos, B, T, C);
        char what[80];
        snprintf(what, sizeof what, "encoder_bwd dwte (mode %d, docs <= %d)", mode, doclen);
        CMP(what, down(gte, (size_t)V * C), cte, (size_t)V * C, RTOL, AFRAC);
        snprintf(what, sizeof what, "encoder_bwd dwpe (mode %d, docs <= %d)", mode, doclen);
        CMP(what, down(gpe, (size_t)T * C), cpe, (size_t)T * C, RTOL, AFRAC);
    }
}

/* ---- layernorm ---------------------------------------------------------------------------- */
static void test_layernorm(int N, int C)
{
    size_t n = (size_t)N * C;
    float *x = rnd(n, -2, 3), *w = rnd(C, 0.5f, 1.5f), *b = rnd(C, -0.5f, 0.5f);
    float *out = ct_test_alloc(n), *mean = ct_test_alloc(N), *rstd = ct_test_alloc(N);
    cpu->layernorm_fwd(ck, out, mean, rstd, x, w, b, N, C, 1e-5f);
    void *gx = up(x, n), *gw = up(w, C), *gout = poison(n, 2);
    float *gmean = poison(N, 4), *grstd = poison(N, 4);
    gpu->layernorm_fwd(gk, gout, gmean, grstd, gx, gw, up(b, C), N, C, 1e-5f);
    CMP("layernorm_fwd out", down(gout, n), out, n, RTOL, AFRAC);
    CMP("layernorm_fwd mean", down_f32(gmean, N), mean, N, 1e-3, 1e-4);
    CMP("layernorm_fwd rstd", down_f32(grstd, N), rstd, N, 1e-3, 1e-4);

    float *d = rnd(n, -1, 1), *pdx = rnd(n, -1, 1), *pdw = rnd(C, -1, 1), *pdb = rnd(C, -1, 1);
    void *gd = up(d, n);
    for (int frozen = 0; frozen < 2; frozen++) {
        float *cdx = dup_f(pdx, n), *cdw = dup_f(pdw, C), *cdb = dup_f(pdb, C);
        void *gdx = up(pdx, n), *gdw = up(pdw, C), *gdb = up(pdb, C);
        cpu->layernorm_bwd(ck, cdx, frozen ? NULL : cdw, frozen ? NULL : cdb, d, x, w, mean, rstd, N, C);
        gpu->layernorm_bwd(gk, gdx, frozen ? NULL : gdw, frozen ? NULL : gdb, gd, gx, gw, gmean, grstd, N, C);
        CMP(frozen ? "layernorm_bwd dinp (frozen)" : "layernorm_bwd dinp", down(gdx, n), cdx, n, RTOL, AFRAC);
        CMP(frozen ? "layernorm_bwd dw (NULL: unchanged)" : "layernorm_bwd dw", down(gdw, C), cdw, C, RTOL, AFRAC);
        CMP(frozen ? "layernorm_bwd db (NULL: unchanged)" : "layernorm_bwd db", down(gdb, C), cdb, C, RTOL, AFRAC);
    }
}

/* ---- matmul ------------------------------------------------------------------------------- */
static void test_matmul(int N, int K, int M)
{
    float *x = rnd((size_t)N * K, -1, 1), *w = rnd((size_t)M * K, -1, 1), *bias = rnd(M, -1, 1);
    void *gx = up(x, (size_t)N * K), *gw = up(w, (size_t)M * K);
    for (int bmode = 0; bmode < 3; bmode++) { /* 0 no bias, 1 aligned bias, 2 bias 2 bytes off alignment */
        float *out = ct_test_alloc((size_t)N * M);
        cpu->matmul_fwd(ck, out, x, w, bmode ? bias : NULL, N, K, M);
        void *gb = NULL;
        if (bmode == 1) gb = up(bias, M);
        if (bmode == 2) {
            float *shifted = ct_test_alloc(M + 1);
            memcpy(shifted + 1, bias, M * sizeof(float));
            gb = (char *)up(shifted, M + 1) + 2;
        }
        void *gout = poison((size_t)N * M, 2);
        gpu->matmul_fwd(gk, gout, gx, gw, gb, N, K, M);
        char what[64];
        snprintf(what, sizeof what, "matmul_fwd %dx%dx%d bias mode %d", N, K, M, bmode);
        CMP(what, down(gout, (size_t)N * M), out, (size_t)N * M, RTOL, AFRAC);
    }
    float *d = rnd((size_t)N * M, -1, 1), *pdx = rnd((size_t)N * K, -1, 1), *pdw = rnd((size_t)M * K, -1, 1),
          *pdb = rnd(M, -1, 1);
    void *gd = up(d, (size_t)N * M);
    for (int mode = 0; mode < 3; mode++) { /* 0 all, 1 dw/dbias NULL (frozen), 2 dinp NULL */
        float *cdx = dup_f(pdx, (size_t)N * K), *cdw = dup_f(pdw, (size_t)M * K), *cdb = dup_f(pdb, M);
        void *gdx = up(pdx, (size_t)N * K), *gdw = up(pdw, (size_t)M * K), *gdb = up(pdb, M);
        int pw = mode != 1, pi = mode != 2;
        cpu->matmul_bwd(ck, pi ? cdx : NULL, pw ? cdw : NULL, pw ? cdb : NULL, d, x, w, N, K, M);
        gpu->matmul_bwd(gk, pi ? gdx : NULL, pw ? gdw : NULL, pw ? gdb : NULL, gd, gx, gw, N, K, M);
        char what[64];
        snprintf(what, sizeof what, "matmul_bwd dinp %dx%dx%d mode %d", N, K, M, mode);
        CMP(what, down(gdx, (size_t)N * K), cdx, (size_t)N * K, RTOL, AFRAC);
        snprintf(what, sizeof what, "matmul_bwd dw %dx%dx%d mode %d", N, K, M, mode);
        CMP(what, down(gdw, (size_t)M * K), cdw, (size_t)M * K, RTOL, AFRAC);
        snprintf(what, sizeof what, "matmul_bwd dbias %dx%dx%d mode %d", N, K, M, mode);
        CMP(what, down(gdb, M), cdb, M, RTOL, AFRAC);
    }
}

/* ---- gelu, residual ----------------------------------------------------------------------- */
static void test_gelu(size_t n)
{
    float *x = rnd(n, -12, 12), *out = ct_test_alloc(n);
    cpu->gelu_fwd(ck, out, x, n);
    void *gx = up(x, n), *gout = poison(n, 2);
    gpu->gelu_fwd(gk, gout, gx, n);
    CMP("gelu_fwd", down(gout, n), out, n, RTOL, AFRAC);
    float *d = rnd(n, -1, 1), *dx = rnd(n, -1, 1);
    void *gdx = up(dx, n);
    cpu->gelu_bwd(ck, dx, x, d, n);
    gpu->gelu_bwd(gk, gdx, gx, up(d, n), n);
    CMP("gelu_bwd", down(gdx, n), dx, n, RTOL, AFRAC);
}

static void test_residual(size_t n)
{
    float *a = rnd(n, -1, 1), *b = rnd(n, -1, 1), *out = ct_test_alloc(n);
    cpu->residual_fwd(ck, out, a, b, n);
    void *gout = poison(n, 2);
    gpu->residual_fwd(gk, gout, up(a, n), up(b, n), n);
    CMP("residual_fwd", down(gout, n), out, n, RTOL, AFRAC);
    float *d = rnd(n, -1, 1), *da = rnd(n, -1, 1), *db = rnd(n, -1, 1);
    void *gd = up(d, n), *gda = up(da, n), *gdb = up(db, n);
    cpu->residual_bwd(ck, da, db, d, n);
    gpu->residual_bwd(gk, gda, gdb, gd, n);
    CMP("residual_bwd da", down(gda, n), da, n, RTOL, AFRAC);
    CMP("residual_bwd db", down(gdb, n), db, n, RTOL, AFRAC);
    /* x + x: da and db are one buffer, which gains 2 dout */
    float *dd = rnd(n, -1, 1);
    void *gdd = up(dd, n);
    cpu->residual_bwd(ck, dd, dd, d, n);
    gpu->residual_bwd(gk, gdd, gdd, gd, n);
    CMP("residual_bwd da == db", down(gdd, n), dd, n, RTOL, AFRAC);
}

/* ---- xent --------------------------------------------------------------------------------- */
static void test_xent(int N, int V, int with_targets)
{
    size_t n = (size_t)N * V;
    float *lg = rnd(n, -5, 5);
    int32_t *t = malloc(N * sizeof *t);
    for (int i = 0; i < N; i++) t[i] = (i % 3 == 2) ? -1 : (int32_t)(ct_test_rand_u64(&rng) % (uint64_t)V);
    void *glg = up(lg, n);
    int32_t *gt = with_targets ? up_raw(t, N * sizeof *t) : NULL;
    float *loss = ct_test_alloc(N), *gloss = poison(N, 4);
    const float dloss = 1.0f / 7.0f;
    cpu->xent(ck, loss, lg, with_targets ? t : NULL, dloss, N, V, V);
    gpu->xent(gk, gloss, glg, gt, dloss, N, V, V);
    CMP(with_targets ? "xent losses" : "xent losses (no targets)", down_f32(gloss, N), loss, N, 1e-3, 1e-4);
    CMP(with_targets ? "xent dlogits" : "xent dlogits (no targets)", down(glg, n), lg, n, RTOL, AFRAC);
}

/* ---- adamw, sumsq ------------------------------------------------------------------------- */
static void test_adamw(size_t n, float beta1)
{
    float *master = ct_test_alloc(n), *m = ct_test_alloc(n), *v = ct_test_alloc(n);
    ct_test_fill(master, n, &rng, -1, 1);
    ct_test_fill(m, n, &rng, -0.1f, 0.1f);
    ct_test_fill(v, n, &rng, 0, 0.01f);
    float *g = rnd(n, -1, 1);
    float *gmaster = up_raw(master, n * 4), *gm = up_raw(m, n * 4), *gv = up_raw(v, n * 4);
    void *gparam = poison(n, 2);
    ct_adamw_params p = {.lr = 1e-3f, .beta1 = beta1, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                         .grad_scale = 0.5f, .step = 3};
    float *param = ct_test_alloc(n);
    cpu->adamw(ck, master, param, m, v, g, n, &p);
    gpu->adamw(gk, gmaster, gparam, gm, gv, up(g, n), n, &p);
    CMP("adamw master", down_f32(gmaster, n), master, n, 1e-6, 1e-7);
    CMP("adamw m", down_f32(gm, n), m, n, 1e-6, 1e-7);
    CMP("adamw v", down_f32(gv, n), v, n, 1e-6, 1e-7);
    for (size_t i = 0; i < n; i++) param[i] = bf16r(master[i]);
    CMP("adamw param = bf16(master)", down(gparam, n), param, n, 1e-2, 0);
}

static void test_sumsq(size_t n)
{
    float *x = rnd(n, -3, 3);
    void *gx = up(x, n);
    double want = cpu->sumsq(ck, x, n), got = gpu->sumsq(gk, gx, n), again = gpu->sumsq(gk, gx, n);
    if (!(fabs(got - want) <= 1e-9 * fabs(want))) {
        fprintf(stderr, "sumsq n=%zu: got %.17g, want %.17g\n", n, got, want);
        ct_test_failures++;
    }
    CHECK(memcmp(&got, &again, sizeof got) == 0); /* deterministic */
    CHECK(gpu->sumsq(gk, gx, 0) == 0.0);
}

/* ---- attention ---------------------------------------------------------------------------- */
/* Layouts of q, k, v (and of dq, dk, dv, which take the same views of their own buffers):
 *   PACKED:   one buffer of rows q | k | v, ldq = ldkv = (NH + 2 NKV) D: GPT-2's qkv views at +C
 *             and +2C when NH == NKV, a fused Llama projection otherwise;
 *   SEPARATE: three buffers, ldq = NH D, ldkv = NKV D;
 *   STRIDED:  three buffers with 3 extra elements a row, each view 1 element past its buffer's
 *             start: no 16-byte alignment anywhere, the kernels' element-load path.
 * On the GPU the padding columns of the inputs are NaN (a kernel that reads them fails); the
 * gradient buffers' padding is pre-filled like the rest and must come back unchanged. */
enum { PACKED, SEPARATE, STRIDED };

typedef struct {
    size_t n;                    /* elements per buffer (one buffer when PACKED) */
    int ld[3];                   /* row strides of q, k, v */
    size_t off[3];               /* element offsets of the q, k, v views in their buffers */
} attn_layout;

static attn_layout attn_layout_of(int layout, size_t BT, int NH, int NKV, int D)
{
    attn_layout L;
    memset(&L, 0, sizeof L);
    if (layout == PACKED) {
        const int ld = (NH + 2 * NKV) * D;
        L.ld[0] = L.ld[1] = L.ld[2] = ld;
        L.off[1] = (size_t)NH * D;
        L.off[2] = (size_t)(NH + NKV) * D;
        L.n = BT * ld;
        return L;
    }
    const int pad = layout == STRIDED ? 3 : 0, skew = layout == STRIDED ? 1 : 0;
    L.ld[0] = NH * D + pad;
    L.ld[1] = L.ld[2] = NKV * D + pad;
    for (int i = 0; i < 3; i++) L.off[i] = skew;
    L.n = BT * L.ld[0] + skew; /* q's buffer; k's and v's are no larger */
    return L;
}

/* buffer i (0 q, 1 k, 2 v; all one when PACKED), host: n floats; view i starts at off[i] */
static int attn_buf(int layout, int i) { return layout == PACKED ? 0 : i; }

/* is element e of buffer `buf` outside every view's D-wide heads (padding)? */
static int attn_is_pad(const attn_layout *L, int layout, int buf, size_t e, int NH, int NKV, int D)
{
    if (layout == PACKED) return 0;
    if (e < L->off[buf]) return 1;
    const int width = (buf == 0 ? NH : NKV) * D;
    return (int)((e - L->off[buf]) % (size_t)L->ld[buf]) >= width;
}

/* views into three device buffers (or one), element offsets as bf16 */
static void *view(void *base, size_t off) { return (char *)base + 2 * off; }

/* doclen > 0: each row packs documents of up to doclen tokens (positions restarting at their
 * starts): the masks and the skipped key and query tiles of the fused kernels. Decode, which
 * has no documents, runs only without. */
static void test_attention(int B, int T, int NH, int NKV, int D, int window, int layout, int doclen)
{
    static const char *lname[] = {"packed", "separate", "strided"};
    char tag[128], what[200];
    snprintf(tag, sizeof tag, "B%d T%d NH%d NKV%d D%d window %d %s docs<=%d", B, T, NH, NKV, D, window,
             lname[layout], doclen);
    if (!twin("attention_decode/copy_rows", cpu->attention_decode && cpu->copy_rows)) return;
    const size_t BT = (size_t)B * T, no = BT * NH * D;
    int32_t *pos = doclen ? ct_test_doc_positions(B, T, doclen, rng) : NULL;
    int32_t *dpos = pos ? up_raw(pos, BT * sizeof *pos) : NULL;
    const attn_layout L = attn_layout_of(layout, BT, NH, NKV, D);
    const int nbuf = layout == PACKED ? 1 : 3, ldq = L.ld[0], ldkv = L.ld[1];

    /* inputs: q and k in [-3, 3] so each softmax row is peaked (a key tile skipped or masked
     * wrongly moves the output by O(1), not by an average over hundreds of keys), v in [-1, 1];
     * the CPU's padding is 0, the GPU's NaN */
    float *hx[3], *gx_h[3];
    void *gx[3];
    for (int i = 0; i < nbuf; i++) {
        hx[i] = rnd(L.n, -1, 1);
        gx_h[i] = dup_f(hx[i], L.n);
        for (size_t e = 0; e < L.n; e++) {
            const int c = layout == PACKED ? (int)(e % (size_t)L.ld[0]) : 0;
            const int qk = layout == PACKED ? c < (NH + NKV) * D : i < 2;
            if (qk) gx_h[i][e] = hx[i][e] = bf16r(3.0f * hx[i][e]);
            if (attn_is_pad(&L, layout, i, e, NH, NKV, D)) {
                hx[i][e] = 0.0f;
                gx_h[i][e] = NAN;
            }
        }
        gx[i] = up(gx_h[i], L.n);
    }
    const float *q = hx[attn_buf(layout, 0)] + L.off[0], *k = hx[attn_buf(layout, 1)] + L.off[1],
                *v = hx[attn_buf(layout, 2)] + L.off[2];
    void *vq = view(gx[attn_buf(layout, 0)], L.off[0]), *vk = view(gx[attn_buf(layout, 1)], L.off[1]),
         *vv = view(gx[attn_buf(layout, 2)], L.off[2]);

    float *out = ct_test_alloc(no), *stats = ct_test_alloc(cpu->attention_stats_len(B, T, NH));
    cpu->attention_fwd(ck, out, stats, q, k, v, pos, B, T, NH, NKV, D, ldq, ldkv, window);
    void *gout = poison(no, 2);
    float *gstats = poison(gpu->attention_stats_len(B, T, NH), 4);
    gpu->attention_fwd(gk, gout, gstats, vq, vk, vv, dpos, B, T, NH, NKV, D, ldq, ldkv, window);
    snprintf(what, sizeof what, "attention_fwd %s", tag);
    CMP(what, down(gout, no), out, no, RTOL, AFRAC);

    /* backward: gradients pre-filled alike on both sides, the same views of their own buffers */
    float *d = rnd(no, -1, 1), *pre[3], *cg[3];
    void *gd = up(d, no), *gg[3], *gg2[3];
    for (int i = 0; i < nbuf; i++) {
        pre[i] = rnd(L.n, -1, 1);
        cg[i] = dup_f(pre[i], L.n);
        gg[i] = up(pre[i], L.n);
        gg2[i] = up(pre[i], L.n);
    }
    cpu->attention_bwd(ck, cg[attn_buf(layout, 0)] + L.off[0], cg[attn_buf(layout, 1)] + L.off[1],
                       cg[attn_buf(layout, 2)] + L.off[2], stats, d, q, k, v, out, pos, B, T, NH, NKV, D, ldq, ldkv,
                       window);
    for (int run = 0; run < 2; run++) { /* twice, from the same pre-fill: the bits must repeat */
        void **g = run ? gg2 : gg;
        gpu->attention_bwd(gk, view(g[attn_buf(layout, 0)], L.off[0]), view(g[attn_buf(layout, 1)], L.off[1]),
                           view(g[attn_buf(layout, 2)], L.off[2]), gstats, gd, vq, vk, vv, gout, dpos, B, T, NH, NKV,
                           D, ldq, ldkv, window);
    }
    for (int i = 0; i < nbuf; i++) {
        static const char *gname[] = {"dq", "dk", "dv"};
        float *got = down(gg[i], L.n), *again = down(gg2[i], L.n);
        snprintf(what, sizeof what, "attention_bwd %s %s", layout == PACKED ? "dqkv" : gname[i], tag);
        CMP(what, got, cg[i], L.n, RTOL, AFRAC);
        if (memcmp(got, again, L.n * sizeof(float))) {
            fprintf(stderr, "%s: not deterministic (two runs differ)\n", what);
            ct_test_failures++;
        }
    }

    free(pos);
    if (doclen) return;

    /* decode: Tq queries at pos0.. against a KV cache of maxT > T rows, filled by copy_rows up to
     * pos0 + Tq only (the GPU cache's later rows stay NaN: decode must not read them); the q rows
     * gathered by copy_rows too, with a row stride wider than NH*D */
    const int Tq = T < 3 ? T : 3, pos0 = (T - Tq) * 2 / 3, maxT = T + 5, kvw = NKV * D, qld = NH * D + 8;
    const int filled = pos0 + Tq;
    const size_t ncache = (size_t)B * maxT * kvw, nqd = (size_t)B * Tq * qld, nod = (size_t)B * Tq * NH * D;
    float *kc = ct_test_alloc(ncache), *vc = ct_test_alloc(ncache), *qd = ct_test_alloc(nqd);
    void *gkc = poison(ncache, 2), *gvc = poison(ncache, 2), *gqd = poison(nqd, 2);
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < filled; t++)
            for (int c = 0; c < kvw; c++) {
                kc[((size_t)b * maxT + t) * kvw + c] = k[((size_t)b * T + t) * ldkv + c];
                vc[((size_t)b * maxT + t) * kvw + c] = v[((size_t)b * T + t) * ldkv + c];
            }
        for (int t = 0; t < Tq; t++)
            for (int c = 0; c < NH * D; c++) qd[((size_t)b * Tq + t) * qld + c] = q[((size_t)b * T + pos0 + t) * ldq + c];
        gpu->copy_rows(gk, view(gkc, (size_t)b * maxT * kvw), kvw, view(vk, (size_t)b * T * ldkv), ldkv, filled, kvw);
        gpu->copy_rows(gk, view(gvc, (size_t)b * maxT * kvw), kvw, view(vv, (size_t)b * T * ldkv), ldkv, filled, kvw);
        gpu->copy_rows(gk, view(gqd, (size_t)b * Tq * qld), qld, view(vq, ((size_t)b * T + pos0) * ldq), ldq, Tq,
                       NH * D);
    }
    float *od = ct_test_alloc(nod), *want = ct_test_alloc(nod);
    void *god = poison(nod, 2);
    cpu->attention_decode(ck, od, qd, kc, vc, B, Tq, pos0, maxT, NH, NKV, D, qld, window);
    gpu->attention_decode(gk, god, gqd, gkc, gvc, B, Tq, pos0, maxT, NH, NKV, D, qld, window);
    for (int b = 0; b < B; b++)
        memcpy(want + (size_t)b * Tq * NH * D, out + ((size_t)b * T + pos0) * NH * D, (size_t)Tq * NH * D * sizeof(float));
    float *got = down(god, nod);
    snprintf(what, sizeof what, "attention_decode Tq%d pos0 %d %s", Tq, pos0, tag);
    CMP(what, got, od, nod, RTOL, AFRAC);
    snprintf(what, sizeof what, "attention_decode = attention_fwd's rows, %s", tag);
    CMP(what, got, want, nod, RTOL, AFRAC);
}

/* ---- copy_rows: a strided block, the columns past it untouched ---------------------------- */
static void test_copy_rows(int rows, int cols, int lds, int ldd)
{
    if (!twin("copy_rows", gpu->copy_rows != NULL)) return;
    float *src = rnd((size_t)rows * lds, -1, 1), *dst = rnd((size_t)rows * ldd, -1, 1);
    void *gdst = up(dst, (size_t)rows * ldd);
    gpu->copy_rows(gk, gdst, ldd, up(src, (size_t)rows * lds), lds, rows, cols);
    for (int r = 0; r < rows; r++) memcpy(dst + (size_t)r * ldd, src + (size_t)r * lds, cols * sizeof(float));
    CMP("copy_rows", down(gdst, (size_t)rows * ldd), dst, (size_t)rows * ldd, 0, 0);
}

/* ---- rmsnorm ------------------------------------------------------------------------------ */
static void test_rmsnorm(int N, int C)
{
    if (!twin("rmsnorm", cpu->rmsnorm_fwd && cpu->rmsnorm_bwd)) return;
    size_t n = (size_t)N * C;
    float *x = rnd(n, -2, 3), *w = rnd(C, 0.5f, 1.5f);
    float *out = ct_test_alloc(n), *rstd = ct_test_alloc(N);
    cpu->rmsnorm_fwd(ck, out, rstd, x, w, N, C, 1e-5f);
    void *gx = up(x, n), *gw = up(w, C), *gout = poison(n, 2);
    float *grstd = poison(N, 4);
    gpu->rmsnorm_fwd(gk, gout, grstd, gx, gw, N, C, 1e-5f);
    CMP("rmsnorm_fwd out", down(gout, n), out, n, RTOL, AFRAC);
    CMP("rmsnorm_fwd rstd", down_f32(grstd, N), rstd, N, 1e-3, 1e-4);

    float *d = rnd(n, -1, 1), *pdx = rnd(n, -1, 1), *pdw = rnd(C, -1, 1);
    void *gd = up(d, n);
    for (int frozen = 0; frozen < 2; frozen++) {
        float *cdx = dup_f(pdx, n), *cdw = dup_f(pdw, C);
        void *gdx = up(pdx, n), *gdw = up(pdw, C);
        cpu->rmsnorm_bwd(ck, cdx, frozen ? NULL : cdw, d, x, w, rstd, N, C);
        gpu->rmsnorm_bwd(gk, gdx, frozen ? NULL : gdw, gd, gx, gw, grstd, N, C);
        CMP(frozen ? "rmsnorm_bwd dinp (frozen)" : "rmsnorm_bwd dinp", down(gdx, n), cdx, n, RTOL, AFRAC);
        CMP(frozen ? "rmsnorm_bwd dw (NULL: unchanged)" : "rmsnorm_bwd dw", down(gdw, C), cdw, C, RTOL, AFRAC);
    }
}

/* ---- rope: nh heads of D channels in rows of ld, positions up to 8191 ---------------------- */
static void test_rope(int N, int nh, int D, int ld)
{
    if (!twin("rope", cpu->rope_fwd && cpu->rope_bwd)) return;
    size_t n = (size_t)N * ld;
    int32_t *pos = malloc(N * sizeof *pos);
    for (int i = 0; i < N; i++) pos[i] = (int32_t)(ct_test_rand_u64(&rng) % 8192);
    float *inv = ct_test_alloc(D / 2);
    for (int i = 0; i < D / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / D);
    int32_t *gpos = up_raw(pos, N * sizeof *pos);
    float *ginv = up_raw(inv, D / 2 * sizeof(float));
    char what[96];
    for (int dir = 0; dir < 2; dir++) { /* rope_fwd, then rope_bwd (the transpose), on fresh data */
        const char *op = dir ? "rope_bwd" : "rope_fwd", *inv_op = dir ? "rope_fwd" : "rope_bwd";
        float *x = rnd(n, -2, 2), *cx = dup_f(x, n);
        void *gx = up(x, n);
        (dir ? cpu->rope_bwd : cpu->rope_fwd)(ck, cx, pos, inv, N, nh, D, ld);
        (dir ? gpu->rope_bwd : gpu->rope_fwd)(gk, gx, gpos, ginv, N, nh, D, ld);
        snprintf(what, sizeof what, "%s N%d nh%d D%d ld%d", op, N, nh, D, ld);
        CMP(what, down(gx, n), cx, n, RTOL, AFRAC);
        (dir ? gpu->rope_fwd : gpu->rope_bwd)(gk, gx, gpos, ginv, N, nh, D, ld); /* undoes the rotation */
        snprintf(what, sizeof what, "%s(%s(x)) = x, D%d", inv_op, op, D);
        CMP(what, down(gx, n), x, n, RTOL, AFRAC);
    }
}

/* ---- swiglu: 16-byte steps with a tail, and an unaligned view (element path) --------------- */
static void test_swiglu(size_t n, int skew)
{
    if (!twin("swiglu", cpu->swiglu_fwd && cpu->swiglu_bwd)) return;
    float *gate = rnd(n + 1, -12, 12), *upv = rnd(n + 1, -2, 2), *out = ct_test_alloc(n + 1);
    gate[skew] = -100.0f; /* exp overflows: silu -> -0, silu' -> 0, never NaN */
    gate[skew + 1] = 100.0f;
    cpu->swiglu_fwd(ck, out + skew, gate + skew, upv + skew, n);
    void *gg = up(gate, n + 1), *gu = up(upv, n + 1), *gout = poison(n + 1, 2);
    gpu->swiglu_fwd(gk, view(gout, skew), view(gg, skew), view(gu, skew), n);
    char what[64];
    snprintf(what, sizeof what, "swiglu_fwd n%zu skew %d", n, skew);
    CMP(what, (float *)down(gout, n + 1) + skew, out + skew, n, RTOL, AFRAC);
    float *d = rnd(n + 1, -1, 1), *dg = rnd(n + 1, -1, 1), *du = rnd(n + 1, -1, 1);
    void *gdg = up(dg, n + 1), *gdu = up(du, n + 1);
    cpu->swiglu_bwd(ck, dg + skew, du + skew, d + skew, gate + skew, upv + skew, n);
    gpu->swiglu_bwd(gk, view(gdg, skew), view(gdu, skew), view(up(d, n + 1), skew), view(gg, skew), view(gu, skew), n);
    snprintf(what, sizeof what, "swiglu_bwd dgate n%zu skew %d", n, skew);
    CMP(what, down(gdg, n + 1), dg, n + 1, RTOL, AFRAC);
    snprintf(what, sizeof what, "swiglu_bwd dup n%zu skew %d", n, skew);
    CMP(what, down(gdu, n + 1), du, n + 1, RTOL, AFRAC);
}

/* ---- lora --------------------------------------------------------------------------------- */
static void test_lora(int N, int K, int M, int r, float p)
{
    const float scale = 2.0f;
    const uint64_t seed = ct_test_rand_u64(&rng);
    float *x = rnd((size_t)N * K, -1, 1), *A = rnd((size_t)r * K, -0.5f, 0.5f), *Bm = rnd((size_t)M * r, -0.5f, 0.5f);
    float *out = rnd((size_t)N * M, -1, 1), *h = ct_test_alloc((size_t)N * r);
    float *cs = ct_test_alloc(cpu->lora_scratch_len(N, K, r));
    void *gx = up(x, (size_t)N * K), *gA = up(A, (size_t)r * K), *gB = up(Bm, (size_t)M * r);
    void *gout = up(out, (size_t)N * M), *gh = poison((size_t)N * r, 2);
    void *gs = poison(gpu->lora_scratch_len(N, K, r), 2);
    cpu->lora_fwd(ck, out, h, x, A, Bm, p > 0 ? cs : NULL, N, K, M, r, scale, p, seed);
    gpu->lora_fwd(gk, gout, gh, gx, gA, gB, p > 0 ? gs : NULL, N, K, M, r, scale, p, seed);
    char what[80];
    snprintf(what, sizeof what, "lora_fwd out (adds) p=%g", (double)p);
    CMP(what, down(gout, (size_t)N * M), out, (size_t)N * M, RTOL, AFRAC);
    snprintf(what, sizeof what, "lora_fwd h p=%g", (double)p);
    CMP(what, down(gh, (size_t)N * r), h, (size_t)N * r, RTOL, AFRAC);

    /* backward from one shared h (bf16 values), so both sides start from the same input */
    float *hb = rnd((size_t)N * r, -1, 1), *d = rnd((size_t)N * M, -1, 1);
    float *pdx = rnd((size_t)N * K, -1, 1), *pdA = rnd((size_t)r * K, -1, 1), *pdB = rnd((size_t)M * r, -1, 1);
    void *ghb = up(hb, (size_t)N * r), *gd = up(d, (size_t)N * M);
    for (int mode = 0; mode < 3; mode++) { /* 0 all, 1 dx NULL, 2 dA and dB NULL */
        float *cdx = dup_f(pdx, (size_t)N * K), *cdA = dup_f(pdA, (size_t)r * K), *cdB = dup_f(pdB, (size_t)M * r);
        void *gdx = up(pdx, (size_t)N * K), *gdA = up(pdA, (size_t)r * K), *gdB = up(pdB, (size_t)M * r);
        int wx = mode != 1, wp = mode != 2;
        gs = poison(gpu->lora_scratch_len(N, K, r), 2);
        cpu->lora_bwd(ck, wx ? cdx : NULL, wp ? cdA : NULL, wp ? cdB : NULL, d, x, hb, A, Bm, cs, N, K, M, r, scale,
                      p, seed);
        gpu->lora_bwd(gk, wx ? gdx : NULL, wp ? gdA : NULL, wp ? gdB : NULL, gd, gx, ghb, gA, gB, gs, N, K, M, r,
                      scale, p, seed);
        snprintf(what, sizeof what, "lora_bwd dx p=%g mode %d", (double)p, mode);
        CMP(what, down(gdx, (size_t)N * K), cdx, (size_t)N * K, RTOL, AFRAC);
        snprintf(what, sizeof what, "lora_bwd dA p=%g mode %d", (double)p, mode);
        CMP(what, down(gdA, (size_t)r * K), cdA, (size_t)r * K, RTOL, AFRAC);
        snprintf(what, sizeof what, "lora_bwd dB p=%g mode %d", (double)p, mode);
        CMP(what, down(gdB, (size_t)M * r), cdB, (size_t)M * r, RTOL, AFRAC);
    }
}

int main(void)
{
    int start = ct_gpu_test_start("test_cuda_ops", &cpu, &gpu, &ck, &gk, &rng);
    if (start) return start;

#define RUN(call) do { printf("  %s\n", #call); fflush(stdout); call; } while (0)
    RUN(test_convert());
    RUN(test_encoder(3, 7, 40, 11, 1, 0));
    RUN(test_encoder(4, 80, 1100, 50, 1, 0)); /* > 256 positions, > 1024 channels: every loop of the dwte kernel */
    RUN(test_encoder(2, 9, 40, 11, 0, 0));    /* wpe NULL (Llama) */
    RUN(test_encoder(3, 7, 40, 11, 1, 3));    /* packed documents: positions restart */
    RUN(test_encoder(4, 300, 200, 50, 1, 40));
    RUN(test_layernorm(13, 77));
    RUN(test_layernorm(64, 768));
    RUN(test_rmsnorm(13, 77));
    RUN(test_rmsnorm(64, 768));
    RUN(test_matmul(7, 13, 9));
    RUN(test_matmul(64, 96, 80));
    RUN(test_matmul(33, 64, 48));
    RUN(test_gelu(5000));
    RUN(test_gelu(5003)); /* 16-byte steps, then a tail of 3 */
    RUN(test_residual(3001)); /* 16-byte steps, then a tail of 1 */
    RUN(test_swiglu(5000, 0));
    RUN(test_swiglu(5003, 0)); /* 16-byte steps, then a tail of 3 */
    RUN(test_swiglu(1001, 1)); /* views 2 bytes off alignment: the element path */
    RUN(test_rope(37, 3, 64, 3 * 3 * 64)); /* q's heads in a fused qkv row */
    RUN(test_rope(16, 2, 128, 2 * 128));
    RUN(test_rope(9, 4, 32, 4 * 32 + 6));
    RUN(test_copy_rows(5, 7, 11, 9));
    RUN(test_copy_rows(3, 64, 64, 64));
    RUN(test_xent(9, 1003, 1));
    RUN(test_xent(4, 50257, 1));
    RUN(test_xent(3, 100, 0));
    RUN(test_adamw(10007, 0.9f));
    RUN(test_adamw(1000, 0.3f)); /* 1 - beta1 >= 0.5: the other lerp form */
    RUN(test_sumsq(100003));
    RUN(test_sumsq(1));
    /* attention (and decode, copy_rows): B, T, NH, NKV, D, window, layout; every path of the
     * fused kernels: T 1024 and odd lengths, D 16..128 (48: padded tiles), GQA groups 1, 2, 4, 8,
     * windows 0, 1, < T and >= T, GPT-2's packed views, separate and unaligned strided buffers */
    RUN(test_attention(2, 17, 2, 2, 32, 0, PACKED, 0));
    RUN(test_attention(2, 97, 4, 4, 64, 0, PACKED, 0));      /* GPT-2 views, odd T */
    RUN(test_attention(1, 1024, 2, 2, 64, 0, PACKED, 0));    /* GPT-2 views, long */
    RUN(test_attention(1, 1024, 8, 1, 32, 256, SEPARATE, 0)); /* group 8, window < T */
    RUN(test_attention(1, 1024, 4, 2, 128, 100, SEPARATE, 0)); /* group 2, D 128, window */
    RUN(test_attention(1, 130, 8, 2, 128, 37, PACKED, 0));   /* group 4, fused Llama qkv, window off the tiles */
    RUN(test_attention(2, 130, 4, 1, 64, 0, SEPARATE, 0));   /* group 4 */
    RUN(test_attention(1, 97, 4, 1, 32, 1, SEPARATE, 0));    /* window 1: each query sees itself */
    RUN(test_attention(1, 130, 2, 1, 48, 0, STRIDED, 0));    /* D 48, no alignment: element loads */
    RUN(test_attention(1, 200, 8, 1, 16, 70, STRIDED, 0));   /* group 8, D 16 */
    RUN(test_attention(1, 130, 2, 2, 64, 2000, SEPARATE, 0)); /* window >= T: no window */
    RUN(test_attention(3, 1, 2, 1, 64, 0, SEPARATE, 0));     /* T 1 */
    /* packed documents of up to doclen tokens: within one tile, across tiles, longer than the
     * 64-row blocks; with windows, GQA, every head size and layout */
    RUN(test_attention(2, 300, 4, 4, 64, 0, PACKED, 20));
    RUN(test_attention(2, 1024, 2, 2, 64, 0, PACKED, 200));
    RUN(test_attention(1, 1024, 8, 1, 32, 100, SEPARATE, 300));
    RUN(test_attention(2, 517, 4, 2, 128, 0, SEPARATE, 90));
    RUN(test_attention(1, 700, 8, 2, 128, 37, PACKED, 150));
    RUN(test_attention(3, 130, 2, 1, 48, 0, STRIDED, 7));
    RUN(test_attention(2, 200, 8, 1, 16, 70, STRIDED, 1)); /* every token its own document */
    RUN(test_lora(37, 50, 29, 4, 0.0f));
    RUN(test_lora(37, 50, 29, 4, 0.25f));
    RUN(test_lora(128, 64, 96, 8, 0.1f));

    gpu->sync(gk);
    for (int i = 0; i < ndev; i++) gpu->free(dev_ptrs[i]);
    gpu->kctx_free(gk);
    cpu->kctx_free(ck);
    return ct_test_finish("test_cuda_ops");
}
