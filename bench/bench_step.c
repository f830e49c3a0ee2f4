/* bench_step.c — one full training step (forward + backward + AdamW) of any model ctrain runs:
 * a GPT-2 of the shape the flags give, or the model a Hugging Face config.json describes
 * (--hf-config: GPT-2, Llama, Mistral, Qwen2; SmolLM2 is Llama), random weights
 * (ct_model_init_weights, seed 42). --lora R puts rank-R adapters on every linear of the blocks
 * (ct_lora_add, targets "all-linear", alpha --lora-alpha, default 2R, no dropout; the base
 * frozen) and times the LoRA step instead. --decode N times sampling instead of training.
 *
 * --device cpu (default): the CPU backend: tokens/s, achieved GFLOP/s (full training only:
 * ct_model_step_flops counts the full step), the share of time in matmuls and their GFLOP/s,
 * this machine's sgemm GFLOP/s measured in the same run (--probe 0 skips it), and the process's
 * peak resident memory (getrusage ru_maxrss, taken before the sgemm probe allocates).
 * --device cuda: the CUDA backend (bf16 storage, fp32 master weights) with the trainer's own
 * optimizer (ct_optim: ZeRO-1 AdamW on a one-rank communicator, whose device side copies: no
 * NCCL; gradient clipping at 1.0): ms/step, tokens/s, TFLOP/s, MFU against --peak-tflops
 * (dense bf16 of the GPU; full training only), and the GPU memory in use at the end (total -
 * free from cudaMemGetInfo: the CUDA context and cuBLASLt workspace included; the backend
 * allocates everything up front and frees nothing during a step, so this is the run's peak).
 *
 * --decode N: greedy sampling over the KV cache (ct_model_decode), as `ctrain sample` at
 * temperature 0 does it: a prompt of --seq random tokens for each of --batch sequences in one
 * decode (the prefill), then N - 1 decodes of one token each, each followed by the newest
 * logits to fp32, to the host, and their argmax. --warmup untimed generations, then --steps
 * timed ones: new tokens/s (B * N / the whole generation, the prefill included, as a
 * transformers generate call is timed), the prefill's time, and the per-token decode rate.
 *
 * usage: bench_step [--device cpu|cuda] [--hf-config config.json | --init-from DIR] [--layers 6]
 *                   [--width 384] [--heads 6] [--vocab 50257] [--seq 256] [--batch 8] [--steps 5]
 *                   [--warmup 1] [--lora R] [--lora-alpha A] [--decode N] [--probe 1]
 *                   [--init rng|fast] [--peak-tflops 989.4] [--docs L] [--recompute 0|1] [--loss-chunk N]
 * With --hf-config, --layers and --vocab (when given) override the file's num_hidden_layers and
 * vocab_size (a smaller model of the same shape); --width and --heads are GPT-2's only.
 * --init fast: random weights of the same scale without ct_model_init_weights' serial normal
 * draws (see fast_init_weights): for big models on a GPU, where those take half a minute.
 * --docs L: each training row packs documents of L tokens (positions restarting every L, attention
 * masked to each, as a masked dataset's rows are); the FLOP counts stay those of a whole causal
 * row, so compare ms/step, not MFU, with a run without it.
 * --recompute 1, --loss-chunk N: model.recompute block, model.loss_chunk N (-1, the default: auto).
 * --init-from DIR: the model of a Hugging Face folder (config.json and its weights, ct_hf_load)
 * instead of random weights: with bench/bench_hf.py --save DIR, both sides run the same weights.
 * The tokens (training batch, prompt) come from ct_rng seeded 7, token = u64 % vocab, the
 * targets the next token of the flattened batch (the last 0): bench_hf.py draws the same.
 * Threads: OMP_NUM_THREADS. Prints a human summary and one JSON line (prefix "json: "). */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#ifdef CTRAIN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "comm.h"
#include "hf_config.h"
#include "hf_model.h"
#include "json_file.h"
#include "lora.h"
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
    for (int i = 0; targets && i < BT; i++) targets[i] = i + 1 < BT ? tokens[i + 1] : 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_of(double *t, int n)
{
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* This process's peak resident memory so far, MiB (ru_maxrss is in KiB on Linux). */
static double peak_rss_mib(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? -1.0 : (double)ru.ru_maxrss / 1024.0;
}

/* What to run: the model, the batch, and how. */
typedef struct {
    ct_model_config cfg;
    char model[256];   /* a name for the summary: the config file, or "gpt2 (flags)" */
    int B, T;          /* micro-batch; T: the sequence (the prompt under --decode) */
    int steps, warmup;
    int lora_r;        /* 0: full training */
    float lora_alpha;
    int decode;        /* N new tokens; 0: training */
    int probe;         /* the sgemm probe (cpu) */
    double peak_tflops;
    const char *init_from; /* a Hugging Face folder whose weights to load, or NULL: random */
    int fast_init;         /* --init fast: fast_init_weights instead of ct_model_init_weights */
    int docs;              /* --docs L: packed documents of L tokens; 0: one a row */
    ct_model_memory mem;   /* --recompute 0|1, --loss-chunk N (model.recompute, model.loss_chunk) */
} bench_opts;

/* --docs L: positions of rows of documents of L tokens (NULL when L is 0) */
static int32_t *doc_positions(int B, int T, int L)
{
    int32_t *pos = L > 0 ? malloc(sizeof(int32_t) * (size_t)B * T) : NULL;
    for (int i = 0; pos && i < B * T; i++) pos[i] = i % T % L;
    return pos;
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* --init fast: weights of the same scale as ct_model_init_weights' in a fraction of its time
 * (which draws every normal on one host thread: half a minute for a 1B model, device time a GPU
 * pass cannot spare): matrices and embeddings uniform with standard deviation 0.02 from a
 * counter-based hash (parallel), vectors named *.weight (the norms) 1, the other vectors
 * (biases) 0. Speed does not depend on the values; losses differ from a --init rng run. */
static void fast_init_weights(ct_model *m, uint64_t seed)
{
    const ct_backend *be = ct_model_backend(m);
    ct_kctx *ctx = ct_model_kctx(m);
    size_t maxn = 0;
    for (int i = 0; i < ct_model_num_tensors(m); i++)
        if (ct_model_tensor(m, i)->numel > maxn) maxn = ct_model_tensor(m, i)->numel;
    float *host = malloc(maxn * sizeof(float));
    float *staged = be->alloc(maxn * sizeof(float));
    if (!host || !staged) {
        fprintf(stderr, "bench_step: out of memory initialising weights\n");
        exit(1);
    }
    const float a = 0.02f * 1.7320508f; /* U(-a, a) has standard deviation a / sqrt(3) */
    for (int i = 0; i < ct_model_num_tensors(m); i++) {
        const ct_param *p = ct_model_tensor(m, i);
        size_t n = p->numel, len = strlen(p->name);
        int ones = p->ndim == 1 && len > 7 && !strcmp(p->name + len - 7, ".weight");
        uint64_t base = mix64(seed * 0x9E3779B97F4A7C15ull + (uint64_t)i + 1);
#pragma omp parallel for schedule(static)
        for (size_t k = 0; k < n; k++)
            host[k] = p->ndim == 1 ? (ones ? 1.0f : 0.0f)
                                   : a * (2.0f * (float)(mix64(base + k) >> 40) * 0x1.0p-24f - 1.0f);
        be->upload(ctx, staged, host, n * sizeof(float));
        be->to_storage(ctx, (char *)ct_model_params(m) + p->offset * be->elem_size, staged, n);
    }
    be->sync(ctx);
    be->free(staged);
    free(host);
}

/* The model on backend be, random weights, adapters when asked; NULL with a message. */
static ct_model *make_model(const bench_opts *o, const ct_backend *be, ct_kctx *ctx, int T)
{
    char err[1024];
    ct_model *m;
    if (ct_model_init_memory(&m, &o->cfg, &o->mem, be, ctx, o->B, T, 1, err, sizeof err)) {
        fprintf(stderr, "bench_step: %s\n", err);
        return NULL;
    }
    double t0 = omp_get_wtime();
    if (!o->init_from && o->fast_init) fast_init_weights(m, 42);
    else if (!o->init_from) ct_model_init_weights(m, 42);
    else if (ct_hf_load(m, o->init_from, err, sizeof err)) {
        fprintf(stderr, "bench_step: --init-from: %s\n", err);
        ct_model_free(m);
        return NULL;
    }
    fprintf(stderr, "bench_step: weights (%s) in %.1f s\n",
            o->init_from ? o->init_from : o->fast_init ? "--init fast" : "ct_model_init_weights", omp_get_wtime() - t0);
    if (o->lora_r > 0) {
        ct_lora_spec spec = {.targets = "all-linear", .r = o->lora_r, .alpha = o->lora_alpha, .dropout = 0.0f};
        if (ct_lora_add(m, &spec, 1, 1, err, sizeof err)) {
            fprintf(stderr, "bench_step: --lora: %s\n", err);
            ct_model_free(m);
            return NULL;
        }
    }
    return m;
}

/* "llama, 30 layers, width 576, 9 heads (3 kv, dim 64), MLP 1536, vocab 49152, 134.5M parameters" */
static void describe(ct_model *m, char *out, size_t n)
{
    const ct_model_config *c = ct_model_config_of(m);
    char lora[160] = "";
    if (ct_model_has_lora(m)) {
        char counts[128];
        ct_lora_describe(m, counts, sizeof counts);
        snprintf(lora, sizeof lora, "; LoRA all-linear: %s", counts);
    }
    snprintf(out, n, "%s (%s), %d layers, width %d, %d heads (%d kv, dim %d), MLP %d, vocab %d, %.1fM parameters%s",
             c->model_type[0] ? c->model_type : "gpt2", ct_model_arch_name(m), c->n_layer, c->n_embd, c->n_head,
             c->n_kv_head, c->head_dim, c->n_inner, c->vocab_size, ct_model_count(m) / 1e6, lora);
}

/* The JSON fields every mode shares: what ran. */
static void json_model(ct_model *m, const bench_opts *o, const char *device)
{
    const ct_model_config *c = ct_model_config_of(m);
    ct_trainable tr = ct_model_trainable(m);
    size_t trainable = 0;
    for (int i = 0; i < tr.ntensors; i++) trainable += tr.tensors[i].numel;
    printf("json: {\"impl\": \"ctrain\", \"device\": \"%s\", \"model\": \"%s\", \"model_type\": \"%s\", "
           "\"layers\": %d, \"width\": %d, \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, \"inner\": %d, "
           "\"vocab\": %d, \"batch\": %d, \"seq\": %d, \"params\": %zu, \"trainable_params\": %zu, \"lora_r\": %d, "
           "\"lora_alpha\": %g, \"steps\": %d, \"warmup\": %d, \"docs\": %d, ",
           device, o->model, c->model_type[0] ? c->model_type : "gpt2", c->n_layer, c->n_embd, c->n_head,
           c->n_kv_head, c->head_dim, c->n_inner, c->vocab_size, o->B, o->T, ct_model_count(m), trainable, o->lora_r,
           o->lora_r ? o->lora_alpha : 0.0, o->steps, o->warmup, o->docs);
}

static int run_cpu(const bench_opts *o)
{
    int B = o->B, T = o->T, steps = o->steps, warmup = o->warmup;
    cpu = ct_backend_cpu();
    ct_backend timed = *cpu;
    timed.matmul_fwd = timed_matmul_fwd;
    timed.matmul_bwd = timed_matmul_bwd;
    ct_kctx *ctx = timed.kctx_init(0);

    char err[512];
    ct_model *m = make_model(o, &timed, ctx, T);
    if (!m) return 1;
    const ct_model_config *cfg = ct_model_config_of(m);
    ct_model_set_training(m, 1);
    if (ct_model_alloc_grads(m, err, sizeof err)) {
        fprintf(stderr, "bench_step: %s\n", err);
        return 1;
    }
    ct_trainable tr = ct_model_trainable(m);
    float *mom = calloc(tr.numel, 4), *vel = calloc(tr.numel, 4);
    int32_t *tokens = malloc(sizeof(int32_t) * B * T), *targets = malloc(sizeof(int32_t) * B * T);
    double *times = calloc((size_t)steps, sizeof(double));
    if (!mom || !vel || !tokens || !targets || !times) {
        fprintf(stderr, "bench_step: out of memory\n");
        return 1;
    }
    make_batch(tokens, targets, B * T, cfg->vocab_size);
    int32_t *pos = doc_positions(B, T, o->docs);

    double total = 0, first_loss = 0, last_loss = 0;
    for (int s = 0; s < warmup + steps; s++) {
        if (s == warmup) mm_seconds = mm_flops = 0;
        double t0 = omp_get_wtime();
        double loss_sum;
        long ntok;
        ct_model_zero_grad(m); /* before the forward, which adds the LM head's gradient */
        if (ct_model_forward(m, tokens, targets, pos, B, T, 1.0f / (float)(B * T), &loss_sum, &ntok, err, sizeof err)) {
            fprintf(stderr, "bench_step: %s\n", err);
            return 1;
        }
        ct_model_backward(m, NULL, NULL);
        float *p = tr.params, *g = tr.grads;
        for (int i = 0; i < tr.ntensors; i++) {
            const ct_param *t = &tr.tensors[i];
            ct_adamw_params hp = {.lr = 3e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                                  .weight_decay = t->decay && !o->lora_r ? 0.1f : 0.0f, .grad_scale = 1.0f,
                                  .step = s + 1};
            cpu->adamw(ctx, p + t->offset, p + t->offset, mom + t->offset, vel + t->offset, g + t->offset, t->numel,
                       &hp);
        }
        double dt = omp_get_wtime() - t0;
        if (s == 0) first_loss = loss_sum / ntok;
        last_loss = loss_sum / ntok;
        if (s >= warmup) total += dt, times[s - warmup] = dt;
    }
    double rss = peak_rss_mib(); /* before the sgemm probe's buffers */
    double step_s = total / steps, median_s = median_of(times, steps);
    /* ct_model_step_flops counts a full step (weight gradients included): not LoRA's */
    double flops = o->lora_r ? 0 : ct_model_step_flops(cfg, B, T);
    double sgemm = o->probe ? sgemm_gflops(B * T, cfg->n_embd, cfg->n_inner) : 0;
    double sgemm_head = o->probe ? sgemm_gflops(B * T, cfg->n_embd, cfg->vocab_size) : 0;
    double mm_rate = mm_seconds > 0 ? mm_flops / mm_seconds / 1e9 : 0;
    int threads = omp_get_max_threads();
    char what[512];
    describe(m, what, sizeof what);
    printf("ctrain cpu: %s; %s step, %d x %d tokens, %d threads\n", what, o->lora_r ? "LoRA" : "full", B, T,
           threads);
    printf("  step %.1f ms (median %.1f), %.0f tokens/s", step_s * 1e3, median_s * 1e3, B * T / step_s);
    if (flops > 0) printf(", %.1f GFLOP/s (model FLOPs)", flops / step_s / 1e9);
    printf(", loss %.4f -> %.4f, peak RSS %.0f MiB\n", first_loss, last_loss, rss);
    printf("  matmuls: %.0f%% of the step at %.1f GFLOP/s", 100.0 * mm_seconds / total, mm_rate);
    if (o->probe) printf("; sgemm alone: %.1f GFLOP/s (MLP shape), %.1f (head shape)", sgemm, sgemm_head);
    printf("\n");
    json_model(m, o, "cpu");
    printf("\"threads\": %d, \"ms_per_step\": %.2f, \"ms_median\": %.2f, \"tokens_per_s\": %.1f, ", threads,
           step_s * 1e3, median_s * 1e3, B * T / step_s);
    if (flops > 0) printf("\"gflops\": %.2f, ", flops / step_s / 1e9);
    else printf("\"gflops\": null, ");
    printf("\"matmul_share\": %.3f, \"matmul_gflops\": %.2f, \"sgemm_gflops\": %.2f, \"sgemm_head_gflops\": %.2f, "
           "\"peak_rss_mib\": %.1f, \"loss_first\": %.5f, \"loss_last\": %.5f}\n",
           mm_seconds / total, mm_rate, sgemm, sgemm_head, rss, first_loss, last_loss);
    free(mom), free(vel), free(tokens), free(targets), free(times), free(pos);
    ct_model_free(m);
    timed.kctx_free(ctx);
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

/* The CUDA backend and its context on device 0, or NULL with a message. */
static const ct_backend *cuda_backend(ct_kctx **ctx)
{
    const ct_backend *be = ct_backend_cuda();
    if (!be) {
        fprintf(stderr, "bench_step: --device cuda: no CUDA backend: this build has none (no nvcc at configure "
                        "time) or no CUDA device is visible\n");
        return NULL;
    }
    *ctx = be->kctx_init(0);
    if (!*ctx) {
        fprintf(stderr, "bench_step: --device cuda: cannot start the CUDA backend on device 0\n");
        return NULL;
    }
    return be;
}

static int run_cuda(const bench_opts *o)
{
    int B = o->B, T = o->T, steps = o->steps, warmup = o->warmup;
    ct_kctx *ctx;
    const ct_backend *be = cuda_backend(&ctx);
    if (!be) return 1;
    char err[1024];
    ct_comm *comm = ct_comm_init_single();
    if (!comm || ct_comm_attach_device(comm, 0, err, sizeof err)) {
        fprintf(stderr, "bench_step: %s\n", comm ? err : "out of memory");
        return 1;
    }
    ct_model *m = make_model(o, be, ctx, T);
    if (!m) return 1;
    const ct_model_config *cfg = ct_model_config_of(m);
    ct_model_set_training(m, 1);
    ct_optim *opt;
    if (ct_optim_init(&opt, m, comm, 1, 0, err, sizeof err)) {
        fprintf(stderr, "bench_step: %s\n", err);
        return 1;
    }
    int32_t *tokens = malloc(sizeof(int32_t) * B * T), *targets = malloc(sizeof(int32_t) * B * T);
    double *times = calloc((size_t)steps, sizeof(double));
    if (!tokens || !targets || !times) {
        fprintf(stderr, "bench_step: out of memory\n");
        return 1;
    }
    make_batch(tokens, targets, B * T, cfg->vocab_size);
    int32_t *pos = doc_positions(B, T, o->docs);
    ct_optim_hparams hp = {.lr = 3e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                           .weight_decay = o->lora_r ? 0.0f : 0.1f, .grad_clip = 1.0f};

    double total = 0, first_loss = 0, last_loss = 0, t_setup = omp_get_wtime();
    float norm = 0;
    for (int s = 0; s < warmup + steps; s++) {
        be->sync(ctx);
        double t0 = omp_get_wtime();
        double loss_sum;
        long ntok;
        ct_model_zero_grad(m);
        if (ct_model_forward(m, tokens, targets, pos, B, T, 1.0f / (float)(B * T), &loss_sum, &ntok, err, sizeof err)) {
            fprintf(stderr, "bench_step: %s\n", err);
            return 1;
        }
        ct_model_backward(m, NULL, NULL);
        if (ct_optim_step(opt, &hp, &norm)) {
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
    double step_s = total / steps, median_s = median_of(times, steps);
    /* MFU counts the full step's FLOPs; a LoRA step does less (no weight gradients of the base) */
    double flops = o->lora_r ? 0 : ct_model_step_flops(cfg, B, T);
    double tflops = flops / step_s / 1e12;
    double mfu = o->peak_tflops > 0 ? tflops / o->peak_tflops : 0;
    char gpu[256], what[512];
    double used_mib, total_mib;
    gpu_info(gpu, sizeof gpu, &used_mib, &total_mib);
    describe(m, what, sizeof what);
    printf("ctrain cuda (%s): %s; %s step, %d x %d tokens\n", gpu, what, o->lora_r ? "LoRA" : "full", B, T);
    printf("  step %.2f ms (median %.2f ms, %d timed after %d warm-up; all steps %.1f s), %.0f tokens/s", step_s * 1e3,
           median_s * 1e3, steps, warmup, wall, B * T / step_s);
    if (flops > 0) printf(", %.1f TFLOP/s (model FLOPs), MFU %.1f%% of %.1f TFLOP/s", tflops, 100 * mfu, o->peak_tflops);
    printf(", loss %.4f -> %.4f, grad norm %.3f\n", first_loss, last_loss, norm);
    printf("  GPU memory in use at the end: %.0f MiB of %.0f MiB (total - free: CUDA context and cuBLASLt "
           "workspace included; optimizer state %.1f MiB)\n",
           used_mib, total_mib, ct_optim_state_bytes(opt) / 1048576.0);
    json_model(m, o, "cuda");
    printf("\"gpu\": \"%s\", \"dtype\": \"bf16\", \"ms_per_step\": %.3f, \"ms_median\": %.3f, \"tokens_per_s\": %.1f, ",
           gpu, step_s * 1e3, median_s * 1e3, B * T / step_s);
    if (flops > 0) printf("\"tflops\": %.2f, \"peak_tflops\": %.1f, \"mfu\": %.4f, ", tflops, o->peak_tflops, mfu);
    else printf("\"tflops\": null, \"peak_tflops\": %.1f, \"mfu\": null, ", o->peak_tflops);
    printf("\"gpu_mem_used_mib\": %.0f, \"gpu_mem_total_mib\": %.0f, \"optim_state_mib\": %.1f, "
           "\"peak_rss_mib\": %.1f, \"loss_first\": %.5f, \"loss_last\": %.5f}\n",
           used_mib, total_mib, ct_optim_state_bytes(opt) / 1048576.0, peak_rss_mib(), first_loss, last_loss);
    free(tokens), free(targets), free(times), free(pos);
    ct_optim_free(opt);
    ct_model_free(m);
    be->kctx_free(ctx);
    ct_comm_free(comm);
    return 0;
}

/* Greedy sampling over the KV cache, as `ctrain sample` at temperature 0: see the top. */
static int run_decode(const bench_opts *o, int cuda)
{
    int B = o->B, P = o->T, N = o->decode, steps = o->steps, warmup = o->warmup;
    ct_kctx *ctx;
    const ct_backend *be = cuda ? cuda_backend(&ctx) : ct_backend_cpu();
    if (!be) return 1;
    if (!cuda) ctx = be->kctx_init(0);
    char err[1024];
    ct_model *m = make_model(o, be, ctx, P + N);
    if (!m) return 1;
    const ct_model_config *cfg = ct_model_config_of(m);
    int V = cfg->vocab_size, Vp = ct_model_logits_stride(m);
    int32_t *prompt = malloc(sizeof(int32_t) * B * P), *next = malloc(sizeof(int32_t) * B);
    float *logits = malloc(sizeof(float) * V);
    double *times = calloc((size_t)steps, sizeof(double));
    float *row = be->alloc(sizeof(float) * V);
    if (!prompt || !next || !logits || !times || !row) {
        fprintf(stderr, "bench_step: out of memory\n");
        return 1;
    }
    make_batch(prompt, NULL, B * P, V);
    double prefill = 0, total = 0;
    int *ids = calloc((size_t)N, sizeof(int)); /* sequence 0's new tokens, the last generation */
    if (!ids) {
        fprintf(stderr, "bench_step: out of memory\n");
        return 1;
    }
    for (int s = 0; s < warmup + steps; s++) {
        be->sync(ctx);
        double t0 = omp_get_wtime(), t1 = t0;
        for (int i = 0; i < N; i++) {
            int Tq = i == 0 ? P : 1;
            if (ct_model_decode(m, i == 0 ? prompt : next, B, Tq, i == 0 ? 0 : P + i - 1, err, sizeof err)) {
                fprintf(stderr, "bench_step: --decode: %s\n", err);
                return 1;
            }
            /* each sequence's newest logits, to the host, and their argmax (sample.c's pick) */
            for (int b = 0; b < B; b++) {
                be->to_f32(ctx, row, (const char *)ct_model_logits(m) + ((size_t)b * Tq + Tq - 1) * Vp * be->elem_size,
                           V);
                be->download(ctx, logits, row, sizeof(float) * V);
                int best = 0;
                for (int v = 1; v < V; v++)
                    if (logits[v] > logits[best]) best = v;
                next[b] = best;
            }
            ids[i] = next[0];
            if (i == 0) t1 = omp_get_wtime();
        }
        double dt = omp_get_wtime() - t0;
        if (s >= warmup) times[s - warmup] = dt, total += dt, prefill += t1 - t0;
    }
    double rss = peak_rss_mib();
    double gen_s = total / steps, prefill_s = prefill / steps, median_s = median_of(times, steps);
    double per_tok_s = N > 1 ? (gen_s - prefill_s) / (N - 1) : 0;
    char gpu[256] = "cpu", what[512];
    double used_mib = -1, total_mib = -1;
    if (cuda) gpu_info(gpu, sizeof gpu, &used_mib, &total_mib);
    describe(m, what, sizeof what);
    int threads = omp_get_max_threads();
    printf("ctrain %s decode%s%s%s: %s; %d x %d prompt tokens, %d new tokens each (greedy, KV cache), %d threads\n",
           cuda ? "cuda" : "cpu", cuda ? " (" : "", cuda ? gpu : "", cuda ? ")" : "", what, B, P, N, threads);
    printf("  generation %.1f ms (median %.1f): prefill %.1f ms, then %.2f ms per token; %.1f new tokens/s "
           "(prefill included), %.1f tokens/s decoding; first ids %d %d %d %d; peak RSS %.0f MiB\n",
           gen_s * 1e3, median_s * 1e3, prefill_s * 1e3, per_tok_s * 1e3, B * N / gen_s,
           per_tok_s > 0 ? B / per_tok_s : 0, ids[0], N > 1 ? ids[1] : -1, N > 2 ? ids[2] : -1, N > 3 ? ids[3] : -1,
           rss);
    json_model(m, o, cuda ? "cuda" : "cpu");
    printf("\"mode\": \"decode\", \"threads\": %d, \"new_tokens\": %d, \"ms_generate\": %.3f, \"ms_median\": %.3f, "
           "\"ms_prefill\": %.3f, \"ms_per_token\": %.4f, \"tokens_per_s\": %.2f, \"decode_tokens_per_s\": %.2f, "
           "\"peak_rss_mib\": %.1f, \"gpu_mem_used_mib\": %.0f, \"ids\": [",
           threads, N, gen_s * 1e3, median_s * 1e3, prefill_s * 1e3, per_tok_s * 1e3, B * N / gen_s,
           per_tok_s > 0 ? B / per_tok_s : 0, rss, used_mib);
    for (int i = 0; i < N; i++) printf("%s%d", i ? ", " : "", ids[i]);
    printf("]}\n");
    free(prompt), free(next), free(logits), free(times), free(ids);
    be->free(row);
    ct_model_free(m);
    be->kctx_free(ctx);
    return 0;
}

/* The config.json at path into cfg. */
static int read_hf_config(const char *path, ct_model_config *cfg)
{
    char err[1024];
    cJSON *root = ct_json_load(path, 1 << 20, err, sizeof err);
    if (!root) {
        fprintf(stderr, "bench_step: --hf-config: %s\n", err);
        return -1;
    }
    int rc = ct_hf_config_parse(root, path, cfg, err, sizeof err);
    cJSON_Delete(root);
    if (rc) fprintf(stderr, "bench_step: --hf-config: %s\n", err);
    return rc;
}

int main(int argc, char **argv)
{
    bench_opts o = {.cfg = {.vocab_size = 50257, .n_layer = 6, .n_head = 6, .n_embd = 384, .norm_eps = 1e-5f},
                    .B = 8, .T = 256, .steps = 5, .warmup = 1, .probe = 1,
                    .mem = {.recompute = CT_RECOMPUTE_NONE, .loss_chunk = CT_LOSS_CHUNK_AUTO},
                    .peak_tflops = 989.4 /* H100 SXM / H200, dense bf16 */};
    snprintf(o.model, sizeof o.model, "gpt2 (flags)");
    int cuda = 0, layers = 0, vocab = 0, width = 0, heads = 0, lora_alpha_set = 0;
    const char *hf = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i + 1];
        int v = atoi(a);
        if (!strcmp(argv[i], "--layers")) layers = v;
        else if (!strcmp(argv[i], "--width")) width = v;
        else if (!strcmp(argv[i], "--heads")) heads = v;
        else if (!strcmp(argv[i], "--seq")) o.T = v;
        else if (!strcmp(argv[i], "--batch")) o.B = v;
        else if (!strcmp(argv[i], "--vocab")) vocab = v;
        else if (!strcmp(argv[i], "--steps")) o.steps = v;
        else if (!strcmp(argv[i], "--warmup")) o.warmup = v;
        else if (!strcmp(argv[i], "--peak-tflops")) o.peak_tflops = atof(a);
        else if (!strcmp(argv[i], "--hf-config")) hf = a;
        else if (!strcmp(argv[i], "--init-from")) o.init_from = a;
        else if (!strcmp(argv[i], "--lora")) o.lora_r = v;
        else if (!strcmp(argv[i], "--lora-alpha")) o.lora_alpha = (float)atof(a), lora_alpha_set = 1;
        else if (!strcmp(argv[i], "--decode")) o.decode = v;
        else if (!strcmp(argv[i], "--probe")) o.probe = v;
        else if (!strcmp(argv[i], "--docs")) o.docs = v;
        else if (!strcmp(argv[i], "--recompute")) o.mem.recompute = v ? CT_RECOMPUTE_BLOCK : CT_RECOMPUTE_NONE;
        else if (!strcmp(argv[i], "--loss-chunk")) o.mem.loss_chunk = v;
        else if (!strcmp(argv[i], "--init")) {
            if (strcmp(a, "rng") && strcmp(a, "fast")) {
                fprintf(stderr, "bench_step: --init: \"%s\" is not one of rng|fast\n", a);
                return 2;
            }
            o.fast_init = !strcmp(a, "fast");
        }
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
    if (o.B < 1 || o.T < 1 || o.steps < 1 || o.warmup < 0 || o.lora_r < 0 || o.decode < 0 || o.docs < 0) {
        fprintf(stderr, "bench_step: --batch, --seq and --steps must be at least 1; --warmup, --lora, --decode and "
                        "--docs at least 0\n");
        return 2;
    }
    if (o.decode && o.lora_r) {
        fprintf(stderr, "bench_step: --decode samples from the base model: leave out --lora\n");
        return 2;
    }
    if (!lora_alpha_set) o.lora_alpha = 2.0f * (float)o.lora_r;
    if (hf && o.init_from) {
        fprintf(stderr, "bench_step: --init-from DIR reads DIR/config.json: leave out --hf-config\n");
        return 2;
    }
    if (o.init_from && (layers || vocab || width || heads)) {
        fprintf(stderr, "bench_step: --init-from: the folder's weights fix the shape: leave out --layers, --vocab, "
                        "--width and --heads\n");
        return 2;
    }
    if (o.init_from) {
        char err[1024];
        if (ct_hf_read_config(o.init_from, &o.cfg, err, sizeof err)) {
            fprintf(stderr, "bench_step: --init-from: %s\n", err);
            return 1;
        }
        snprintf(o.model, sizeof o.model, "%s", o.init_from);
    } else if (hf) {
        if (width || heads) {
            fprintf(stderr, "bench_step: --width and --heads shape a GPT-2: with --hf-config the file gives them\n");
            return 2;
        }
        if (read_hf_config(hf, &o.cfg)) return 1;
        const char *base = strrchr(hf, '/');
        snprintf(o.model, sizeof o.model, "%s", base ? base + 1 : hf);
    } else {
        if (width) o.cfg.n_embd = width;
        if (heads) o.cfg.n_head = heads;
        o.cfg.max_seq_len = o.T + o.decode; /* learned positions: as many as the run uses */
    }
    if (layers) o.cfg.n_layer = layers;
    if (vocab) o.cfg.vocab_size = vocab;
    if (hf && (layers || vocab)) {
        size_t n = strlen(o.model);
        if (layers) n += snprintf(o.model + n, sizeof o.model - n, " --layers %d", layers);
        if (vocab && n < sizeof o.model) snprintf(o.model + n, sizeof o.model - n, " --vocab %d", vocab);
    }
    if (o.decode) return run_decode(&o, cuda);
    return cuda ? run_cuda(&o) : run_cpu(&o);
}
