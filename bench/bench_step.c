/* bench_step.c — one full training step (forward + backward + AdamW) of a GPT-2.
 *
 * --device cpu (default): the CPU backend: tokens/s, achieved GFLOP/s, the share of time in
 * matmuls and their GFLOP/s, and this machine's sgemm GFLOP/s measured in the same run.
 * --device cuda: the CUDA backend (bf16 storage, fp32 master weights) with the trainer's own
 * optimizer (ct_optim: ZeRO-1 AdamW on a one-rank communicator (device-side copies, no NCCL), gradient clipping
 * at 1.0): ms/step, tokens/s, TFLOP/s, MFU against --peak-tflops (dense bf16 of the GPU), and
 * the GPU memory in use at the end (total - free from cudaMemGetInfo: the CUDA context and
 * cuBLASLt workspace included; the backend allocates everything up front and frees nothing
 * during a step, so this is the run's peak).
 *
 * usage: bench_step [--device cpu|cuda] [--layers 6] [--width 384] [--heads 6] [--seq 256]
 *                   [--batch 8] [--vocab 50257] [--steps 5] [--warmup 1] [--peak-tflops 989.4]
 * Threads: OMP_NUM_THREADS. Prints a human summary and one JSON line (prefix "json: "). */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef CTRAIN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "comm.h"
#include "model.h"
#include "kernels.h"
#include "optim.h"
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

/* Random tokens in [0, V) and their next-token targets, the same on every backend. */
static void make_batch(int32_t *tokens, int32_t *targets, int BT, int V)
{
    ct_rng rng;
    ct_rng_seed(&rng, 7);
    for (int i = 0; i < BT; i++) tokens[i] = (int32_t)(ct_rng_u64(&rng) % (uint64_t)V);
    for (int i = 0; i < BT; i++) targets[i] = i + 1 < BT ? tokens[i + 1] : 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int run_cpu(ct_model_config cfg, int B, int steps, int warmup)
{
    int T = cfg.max_seq_len;
    cpu = ct_backend_cpu();
    ct_backend timed = *cpu;
    timed.matmul_fwd = timed_matmul_fwd;
    timed.matmul_bwd = timed_matmul_bwd;
    ct_kctx *ctx = timed.kctx_init(0);

    char err[512];
    ct_model *m;
    if (ct_model_init(&m, &cfg, &timed, ctx, B, T, 1, err, sizeof err)) {
        fprintf(stderr, "bench_step: %s\n", err);
        return 1;
    }
    ct_model_init_weights(m, 42);
    size_t n = ct_model_numel(m);
    float *mom = calloc(n, 4), *vel = calloc(n, 4);
    int32_t *tokens = malloc(sizeof(int32_t) * B * T), *targets = malloc(sizeof(int32_t) * B * T);
    make_batch(tokens, targets, B * T, cfg.vocab_size);

    double total = 0, first_loss = 0, last_loss = 0;
    for (int s = 0; s < warmup + steps; s++) {
        if (s == warmup) mm_seconds = mm_flops = 0;
        double t0 = omp_get_wtime();
        double loss_sum;
        long ntok;
        if (ct_model_forward(m, tokens, targets, B, T, 1.0f / (float)(B * T), &loss_sum, &ntok, err, sizeof err)) {
            fprintf(stderr, "bench_step: %s\n", err);
            return 1;
        }
        ct_model_zero_grad(m);
        ct_model_backward(m, NULL, NULL);
        float *p = ct_model_params(m), *g = ct_model_grads(m);
        for (int i = 0; i < ct_model_num_tensors(m); i++) {
            const ct_param *t = ct_model_tensor(m, i);
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
    double flops = ct_model_step_flops(&cfg, B, T);
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
    ct_model_free(m);
    return 0;
}

/* The GPU in use and the memory in use on it (total - free: every process's, the CUDA context
 * included), where this build has CUDA. */
static void gpu_info(char *name, size_t n, double *used_mib, double *total_mib)
{
    snprintf(name, n, "?");
    *used_mib = *total_mib = -1;
#ifdef CTRAIN_HAVE_CUDA
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) snprintf(name, n, "%s", prop.name);
    size_t free_b, total_b;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
        *used_mib = (double)(total_b - free_b) / 1048576.0;
        *total_mib = (double)total_b / 1048576.0;
    }
#endif
}

static int run_cuda(ct_model_config cfg, int B, int steps, int warmup, double peak_tflops)
{
    int T = cfg.max_seq_len;
    const ct_backend *be = ct_backend_cuda();
    if (!be) {
        fprintf(stderr, "bench_step: --device cuda: no CUDA backend: this build has none (no nvcc at configure "
                        "time) or no CUDA device is visible\n");
        return 1;
    }
    ct_kctx *ctx = be->kctx_init(0);
    if (!ctx) {
        fprintf(stderr, "bench_step: --device cuda: cannot start the CUDA backend on device 0\n");
        return 1;
    }
    char err[1024];
    ct_comm *comm = ct_comm_init_single();
    if (!comm || ct_comm_attach_device(comm, 0, err, sizeof err)) {
        fprintf(stderr, "bench_step: %s\n", comm ? err : "out of memory");
        return 1;
    }
    ct_model *m;
    if (ct_model_init(&m, &cfg, be, ctx, B, T, 1, err, sizeof err)) {
        fprintf(stderr, "bench_step: %s\n", err);
        return 1;
    }
    ct_model_init_weights(m, 42);
    ct_optim *o;
    if (ct_optim_init(&o, m, comm, 1, 0, err, sizeof err)) {
        fprintf(stderr, "bench_step: %s\n", err);
        return 1;
    }
    int32_t *tokens = malloc(sizeof(int32_t) * B * T), *targets = malloc(sizeof(int32_t) * B * T);
    double *times = calloc((size_t)steps, sizeof(double));
    if (!tokens || !targets || !times) {
        fprintf(stderr, "bench_step: out of memory\n");
        return 1;
    }
    make_batch(tokens, targets, B * T, cfg.vocab_size);
    ct_optim_hparams hp = {.lr = 3e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                           .grad_clip = 1.0f};

    double total = 0, first_loss = 0, last_loss = 0, t_setup = omp_get_wtime();
    float norm = 0;
    for (int s = 0; s < warmup + steps; s++) {
        be->sync(ctx);
        double t0 = omp_get_wtime();
        double loss_sum;
        long ntok;
        ct_model_zero_grad(m);
        if (ct_model_forward(m, tokens, targets, B, T, 1.0f / (float)(B * T), &loss_sum, &ntok, err, sizeof err)) {
            fprintf(stderr, "bench_step: %s\n", err);
            return 1;
        }
        ct_model_backward(m, NULL, NULL);
        if (ct_optim_step(o, &hp, &norm)) {
            fprintf(stderr, "bench_step: the optimizer step failed\n");
            return 1;
        }
        be->sync(ctx);
        double dt = omp_get_wtime() - t0;
        if (s == 0) first_loss = loss_sum / ntok;
        last_loss = loss_sum / ntok;
        if (s >= warmup) times[s - warmup] = dt, total += dt;
    }
    double wall = omp_get_wtime() - t_setup;
    double step_s = total / steps;
    qsort(times, (size_t)steps, sizeof(double), cmp_double);
    double median_s = steps % 2 ? times[steps / 2] : 0.5 * (times[steps / 2 - 1] + times[steps / 2]);
    double flops = ct_model_step_flops(&cfg, B, T);
    double tflops = flops / step_s / 1e12;
    double mfu = peak_tflops > 0 ? tflops / peak_tflops : 0;
    char gpu[256];
    double used_mib, total_mib;
    gpu_info(gpu, sizeof gpu, &used_mib, &total_mib);
    printf("ctrain cuda (%s): %d layers, width %d, %d heads, vocab %d, %d x %d tokens, %zu parameters\n", gpu,
           cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, B, T, ct_model_count(m));
    printf("  step %.2f ms (median %.2f ms, %d timed after %d warm-up; all steps %.1f s), %.0f tokens/s, "
           "%.1f TFLOP/s (model FLOPs), MFU %.1f%% of %.1f TFLOP/s, loss %.4f -> %.4f, grad norm %.3f\n",
           step_s * 1e3, median_s * 1e3, steps, warmup, wall, B * T / step_s, tflops, 100 * mfu, peak_tflops,
           first_loss, last_loss, norm);
    printf("  GPU memory in use at the end: %.0f MiB of %.0f MiB (total - free: CUDA context and cuBLASLt "
           "workspace included; optimizer state %.1f MiB)\n",
           used_mib, total_mib, ct_optim_state_bytes(o) / 1048576.0);
    printf("json: {\"impl\": \"ctrain\", \"device\": \"cuda\", \"gpu\": \"%s\", \"dtype\": \"bf16\", "
           "\"layers\": %d, \"width\": %d, \"heads\": %d, \"vocab\": %d, \"batch\": %d, \"seq\": %d, "
           "\"params\": %zu, \"steps\": %d, \"warmup\": %d, \"ms_per_step\": %.3f, \"ms_median\": %.3f, "
           "\"tokens_per_s\": %.1f, \"tflops\": %.2f, \"peak_tflops\": %.1f, \"mfu\": %.4f, "
           "\"gpu_mem_used_mib\": %.0f, \"gpu_mem_total_mib\": %.0f, \"optim_state_mib\": %.1f, "
           "\"loss_first\": %.5f, \"loss_last\": %.5f}\n",
           gpu, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, B, T, ct_model_count(m), steps, warmup,
           step_s * 1e3, median_s * 1e3, B * T / step_s, tflops, peak_tflops, mfu, used_mib, total_mib,
           ct_optim_state_bytes(o) / 1048576.0, first_loss, last_loss);
    free(tokens), free(targets), free(times);
    ct_optim_free(o);
    ct_model_free(m);
    be->kctx_free(ctx);
    ct_comm_free(comm);
    return 0;
}

int main(int argc, char **argv)
{
    ct_model_config cfg = {.vocab_size = 50257, .max_seq_len = 256, .n_layer = 6, .n_head = 6, .n_embd = 384,
                          .norm_eps = 1e-5f};
    int B = 8, steps = 5, warmup = 1, cuda = 0;
    double peak_tflops = 989.4; /* H100 SXM / H200, dense bf16 */
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i + 1];
        int v = atoi(a);
        if (!strcmp(argv[i], "--layers")) cfg.n_layer = v;
        else if (!strcmp(argv[i], "--width")) cfg.n_embd = v;
        else if (!strcmp(argv[i], "--heads")) cfg.n_head = v;
        else if (!strcmp(argv[i], "--seq")) cfg.max_seq_len = v;
        else if (!strcmp(argv[i], "--batch")) B = v;
        else if (!strcmp(argv[i], "--vocab")) cfg.vocab_size = v;
        else if (!strcmp(argv[i], "--steps")) steps = v;
        else if (!strcmp(argv[i], "--warmup")) warmup = v;
        else if (!strcmp(argv[i], "--peak-tflops")) peak_tflops = atof(a);
        else if (!strcmp(argv[i], "--device")) {
            if (strcmp(a, "cpu") && strcmp(a, "cuda")) {
                fprintf(stderr, "bench_step: --device: \"%s\" is not one of cpu|cuda\n", a);
                return 2;
            }
            cuda = !strcmp(a, "cuda");
        } else { fprintf(stderr, "bench_step: unknown option %s\n", argv[i]); return 2; }
    }
    if (argc % 2 == 0) {
        fprintf(stderr, "bench_step: option %s needs a value\n", argv[argc - 1]);
        return 2;
    }
    if (B < 1 || steps < 1 || warmup < 0) {
        fprintf(stderr, "bench_step: --batch and --steps must be at least 1, --warmup at least 0\n");
        return 2;
    }
    return cuda ? run_cuda(cfg, B, steps, warmup, peak_tflops) : run_cpu(cfg, B, steps, warmup);
}
