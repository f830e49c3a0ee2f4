/* bench_step.c — one full training step (forward + backward + AdamW) of a GPT-2 on the CPU
 * backend: tokens/s, achieved GFLOP/s, the share of time in matmuls and their GFLOP/s, and
 * this machine's sgemm GFLOP/s measured in the same run.
 *
 * usage: bench_step [--layers 6] [--width 384] [--heads 6] [--seq 256] [--batch 8]
 *                   [--vocab 50257] [--steps 5] [--warmup 1]
 * Threads: OMP_NUM_THREADS. Prints a human summary and one JSON line (prefix "json: "). */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpt2.h"
#include "kernels.h"
#include "rng.h"

/* Matmul time and FLOPs, gathered by wrapping the backend table's matmul slots. */
static const ct_backend *cpu;
static double mm_seconds, mm_flops;

static void timed_matmul_fwd(ct_kctx *ctx, void *out, const void *inp, const void *w, const void *bias, int N,
                             int K, int M)
{
    double t0 = omp_get_wtime();
    cpu->matmul_fwd(ctx, out, inp, w, bias, N, K, M);
    mm_seconds += omp_get_wtime() - t0;
    mm_flops += 2.0 * N * K * M;
}

static void timed_matmul_bwd(ct_kctx *ctx, void *dinp, void *dw, void *dbias, const void *dout, const void *inp,
                             const void *w, int N, int K, int M)
{
    double t0 = omp_get_wtime();
    cpu->matmul_bwd(ctx, dinp, dw, dbias, dout, inp, w, N, K, M);
    mm_seconds += omp_get_wtime() - t0;
    mm_flops += 2.0 * N * K * M * ((dinp != NULL) + (dw != NULL));
}

/* Best-of sgemm rate for an [N,K] x [K,M] product, as the model's matmuls call it. */
static double sgemm_gflops(int N, int K, int M)
{
    float *a = calloc((size_t)N * K, 4), *b = calloc((size_t)K * M, 4), *c = calloc((size_t)N * M, 4);
    for (size_t i = 0; i < (size_t)N * K; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)K * M; i++) b[i] = (float)(i % 5) * 0.1f;
    double best = 1e30;
    for (int rep = 0; rep < 6; rep++) {
        double t0 = omp_get_wtime();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, K, 1.0f, a, K, b, K, 0.0f, c, M);
        double t = omp_get_wtime() - t0;
        if (rep && t < best) best = t; /* the first call warms caches and threads */
    }
    free(a), free(b), free(c);
    return 2.0 * N * K * M / best / 1e9;
}

int main(int argc, char **argv)
{
    ct_gpt2_config cfg = {.vocab_size = 50257, .max_seq_len = 256, .n_layer = 6, .n_head = 6, .n_embd = 384,
                          .ln_eps = 1e-5f};
    int B = 8, steps = 5, warmup = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--layers")) cfg.n_layer = v;
        else if (!strcmp(argv[i], "--width")) cfg.n_embd = v;
        else if (!strcmp(argv[i], "--heads")) cfg.n_head = v;
        else if (!strcmp(argv[i], "--seq")) cfg.max_seq_len = v;
        else if (!strcmp(argv[i], "--batch")) B = v;
        else if (!strcmp(argv[i], "--vocab")) cfg.vocab_size = v;
        else if (!strcmp(argv[i], "--steps")) steps = v;
        else if (!strcmp(argv[i], "--warmup")) warmup = v;
        else { fprintf(stderr, "bench_step: unknown option %s\n", argv[i]); return 2; }
    }
    int T = cfg.max_seq_len;
    cpu = ct_backend_cpu();
    ct_backend timed = *cpu;
    timed.matmul_fwd = timed_matmul_fwd;
    timed.matmul_bwd = timed_matmul_bwd;
    ct_kctx *ctx = timed.kctx_init(0);

    char err[512];
    ct_gpt2 *m;
    if (ct_gpt2_init(&m, &cfg, &timed, ctx, B, T, 1, err, sizeof err)) {
        fprintf(stderr, "bench_step: %s\n", err);
        return 1;
    }
    ct_gpt2_init_weights(m, 42);
    size_t n = ct_gpt2_numel(m);
    float *mom = calloc(n, 4), *vel = calloc(n, 4);
    int32_t *tokens = malloc(sizeof(int32_t) * B * T), *targets = malloc(sizeof(int32_t) * B * T);
    ct_rng rng;
    ct_rng_seed(&rng, 7);
    for (int i = 0; i < B * T; i++) tokens[i] = (int32_t)(ct_rng_u64(&rng) % (uint64_t)cfg.vocab_size);
    for (int i = 0; i < B * T; i++) targets[i] = i + 1 < B * T ? tokens[i + 1] : 0;

    double total = 0, first_loss = 0, last_loss = 0;
    for (int s = 0; s < warmup + steps; s++) {
        if (s == warmup) mm_seconds = mm_flops = 0;
        double t0 = omp_get_wtime();
        double loss_sum;
        long ntok;
        if (ct_gpt2_forward(m, tokens, targets, B, T, 1.0f / (float)(B * T), &loss_sum, &ntok, err, sizeof err)) {
            fprintf(stderr, "bench_step: %s\n", err);
            return 1;
        }
        ct_gpt2_zero_grad(m);
        ct_gpt2_backward(m, NULL, NULL);
        float *p = ct_gpt2_params(m), *g = ct_gpt2_grads(m);
        for (int i = 0; i < ct_gpt2_num_tensors(m); i++) {
            const ct_param *t = ct_gpt2_tensor(m, i);
            ct_adamw_params hp = {.lr = 3e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                                  .weight_decay = t->decay ? 0.1f : 0.0f, .grad_scale = 1.0f, .step = s + 1};
            cpu->adamw(ctx, p + t->offset, p + t->offset, mom + t->offset, vel + t->offset, g + t->offset, t->numel,
                       &hp);
        }
        double dt = omp_get_wtime() - t0;
        if (s == 0) first_loss = loss_sum / ntok;
        last_loss = loss_sum / ntok;
        if (s >= warmup) total += dt;
    }
    double step_s = total / steps;
    double flops = ct_gpt2_step_flops(&cfg, B, T);
    double sgemm = sgemm_gflops(B * T, cfg.n_embd, 4 * cfg.n_embd);
    double sgemm_head = sgemm_gflops(B * T, cfg.n_embd, cfg.vocab_size);
    double mm_rate = mm_flops / mm_seconds / 1e9;
    int threads = omp_get_max_threads();
    printf("ctrain cpu: %d layers, width %d, %d heads, vocab %d, %d x %d tokens, %d threads\n", cfg.n_layer, cfg.n_embd,
           cfg.n_head, cfg.vocab_size, B, T, threads);
    printf("  step %.1f ms, %.0f tokens/s, %.1f GFLOP/s (model FLOPs), loss %.4f -> %.4f\n", step_s * 1e3,
           B * T / step_s, flops / step_s / 1e9, first_loss, last_loss);
    printf("  matmuls: %.0f%% of the step at %.1f GFLOP/s; sgemm alone: %.1f GFLOP/s (MLP shape), %.1f (head shape)\n",
           100.0 * mm_seconds / total, mm_rate, sgemm, sgemm_head);
    printf("json: {\"impl\": \"ctrain\", \"threads\": %d, \"ms_per_step\": %.2f, \"tokens_per_s\": %.1f, "
           "\"gflops\": %.2f, \"matmul_share\": %.3f, \"matmul_gflops\": %.2f, \"sgemm_gflops\": %.2f, "
           "\"sgemm_head_gflops\": %.2f, \"loss_first\": %.5f, \"loss_last\": %.5f}\n",
           threads, step_s * 1e3, B * T / step_s, flops / step_s / 1e9, mm_seconds / total, mm_rate, sgemm,
           sgemm_head, first_loss, last_loss);
    free(mom), free(vel), free(tokens), free(targets);
    ct_gpt2_free(m);
    return 0;
}
