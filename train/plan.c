/* plan.c — the memory a training run will take per rank (plan.h). */
#include "plan.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"

#include "lora.h"
#include "run.h"

#ifdef CTRAIN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#define CT_PLAN_CPU_LIBS ((size_t)22 << 20)

static double mib(size_t b) { return (double)b / 1048576.0; }

int ct_plan_make(const ct_config *cfg, const ct_model_config *mc, const ct_backend *be, int world, size_t baseline,
                 ct_plan *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    ct_model *m;
    const int B = cfg->data.micro_batch, T = cfg->data.seq_len, stage = cfg->parallel.zero_stage;
    const ct_model_memory mem = ct_run_memory(cfg);
    if (ct_model_init_counting(&m, mc, &mem, be, B, T, world, err, errlen)) return -1;
    const int lora = ct_run_lora(cfg);
    ct_lora_spec spec;
    if (lora && (ct_lora_spec_from_config(cfg, &spec, err, errlen) || ct_lora_attach(m, &spec, world, err, errlen))) {
        ct_model_free(m);
        return -1;
    }
    const size_t es = be->elem_size, N = (size_t)world, P = ct_model_numel(m);
    const size_t Tn = ct_model_trainable(m).numel, S = stage >= 1 ? Tn / N : Tn;
    const size_t adapters = lora ? Tn * es : 0;
    p->activations = ct_model_bytes(m) - P * es - 2 * adapters;
    p->weights = (stage == 3 ? P / N : P) * es + adapters;
    p->grads = lora ? adapters : stage <= 1 ? P * es : 0;
    /* a ZeRO-3 model in fp32 keeps its slice as the master itself (counted under weights) */
    p->optimizer = 2 * 4 * S + (es != 4 ? 4 * S : 0);
    p->comm = stage >= 1 ? S * es : 0;

    /* the unit pool (optim.c): what is fetched at once, a buffer per unit kind and use */
    size_t lo, hi, pre, post, block = 0;
    const int L = ct_model_num_units(m) - 2, dev = strcmp(be->name, "cpu") != 0;
    for (int u = 0; u < L; u++) {
        ct_model_unit_range(m, u, &lo, &hi);
        if (hi - lo > block) block = hi - lo;
    }
    ct_model_unit_range(m, L, &lo, &hi);
    pre = hi - lo;
    ct_model_unit_range(m, L + 1, &lo, &hi);
    post = hi - lo;
    const int shard_grads = stage >= 2 && !lora, shard_weights = stage == 3;
    size_t units = 0;
    if (shard_weights && shard_grads) /* weights and gradients of the head's unit live together */
        units = (mc->untied ? pre : 2 * pre) + 2 * post + (dev ? 4 : 2) * block;
    else if (shard_weights || shard_grads)
        units = pre + post + (dev ? 2 : 1) * block;
    p->units = units * es;

    /* on the CPU, what the libraries touch while training beyond the baseline (OpenBLAS's GEMM
     * buffer, HDF5's caches, the host transport's chunk-sized temporaries): 20.7-22.2 MiB in
     * tests/memory_plan.sh's runs (VmHWM over the plan without it, 1 and 3 ranks, stages 0-3) */
    p->baseline = baseline + (dev ? 0 : CT_PLAN_CPU_LIBS);
    p->step = p->baseline + p->weights + p->grads + p->optimizer + p->comm + p->units + p->activations;
    p->device = dev;

    /* Transients. Loads and saves stage one tensor at a time in fp32: a host copy and one in backend
     * memory (a Hugging Face load a second host copy, for the conversion); on a GPU only the
     * latter is device memory. A checkpoint read holds the whole trainable set twice (the file's
     * /model on the host, then in backend memory; ZeRO-3: this rank's slice of it) and this rank's
     * optimizer state on the host. */
    size_t maxn = 0;
    for (int i = 0; i < ct_model_num_tensors(m); i++)
        if (ct_model_tensor(m, i)->numel > maxn) maxn = ct_model_tensor(m, i)->numel;
    const size_t f4 = sizeof(float), stage1 = maxn * f4; /* one tensor, fp32 */
    struct stat st;
    const int from_ckpt = cfg->model.init_from[0] && stat(cfg->model.init_from, &st) == 0 && S_ISREG(st.st_mode);
    const int from_hf = cfg->model.init_from[0] && !from_ckpt;
    size_t staging = dev ? stage1 : (from_hf ? 3 : 2) * stage1;
    if (from_ckpt) staging = dev ? P * f4 : 2 * P * f4;
    /* the model just made and filled: before the optimizer and the gradients exist, and (host
     * memory) before the activations are first touched, which only then become resident */
    size_t load = p->baseline + (shard_weights && !lora ? P / N : P) * es + (dev ? p->activations : 0) + staging;
    /* ZeRO-3 with LoRA: the base was loaded whole and is sharded when the optimizer starts */
    size_t shard = shard_weights && lora ? p->step - p->units + P * es : 0;
    char latest[CT_PATH_MAX + 64], e[256];
    size_t resume = 0;
    if (ct_ckpt_latest(cfg->run.dir, latest, sizeof latest, e, sizeof e) == 1)
        resume = p->step - p->units + (shard_weights && !lora ? (dev ? S * f4 : 5 * S * f4) /* its slice alone */
                                                              : (dev ? Tn * f4 : 2 * Tn * f4 + 3 * S * f4));
    /* the end: the whole model's save (ZeRO-3: gathered on rank 0 after the moments are freed) */
    size_t finish = (shard_weights && !lora ? p->step - p->units - 2 * 4 * S + P * es : p->step) +
                    (lora ? 0 : dev ? stage1 : 2 * stage1); /* LoRA saves its adapters: small tensors */
    /* a checkpoint's writer copies this rank's slice of 4 groups (weights, master, m, v) from a GPU
     * to the host (host memory, not the device's); on the CPU it writes them from where they are */
    p->save = dev ? 4 * (Tn / N) * f4 : 0;
    p->start = load > shard ? load : shard;
    p->finish = finish;
    p->peak = p->step;
    p->peak_at = "a step";
    if (load > p->peak) p->peak = load, p->peak_at = "the start (loading the weights a tensor at a time)";
    if (shard > p->peak) p->peak = shard, p->peak_at = "the start (the whole base model, before it is sharded)";
    if (resume > p->peak) p->peak = resume, p->peak_at = "the resume (the checkpoint's trainable set, twice)";
    if (finish > p->peak) p->peak = finish, p->peak_at = "the end (the final save; ZeRO-3: the model gathered on rank 0)";
    ct_model_free(m);
    return 0;
}

void ct_plan_print(FILE *f, const ct_plan *p, const ct_config *cfg, int world)
{
    fprintf(f, "ctrain: memory plan per rank (%s; ZeRO-%d on %d rank%s; micro-batch %d x %d%s):\n",
            p->device ? "GPU memory" : "host memory", cfg->parallel.zero_stage, world, world > 1 ? "s" : "",
            cfg->data.micro_batch, cfg->data.seq_len, ct_run_lora(cfg) ? "; LoRA" : "");
    fprintf(f, "  weights       %10.1f MiB\n", mib(p->weights));
    fprintf(f, "  gradients     %10.1f MiB\n", mib(p->grads));
    fprintf(f, "  optimizer     %10.1f MiB  (AdamW m, v and fp32 masters of this rank's slice)\n", mib(p->optimizer));
    fprintf(f, "  communication %10.1f MiB  (the reduced gradients of the slice)\n", mib(p->comm));
    fprintf(f, "  unit buffers  %10.1f MiB  (gathered weights, unit gradients: ZeRO-2/3)\n", mib(p->units));
    fprintf(f, "  activations   %10.1f MiB  (one micro-batch, logits included)\n", mib(p->activations));
    if (!p->device)
        fprintf(f, "  process       %10.1f MiB  (before the model, and the libraries' working buffers)\n",
                mib(p->baseline));
    fprintf(f, "  step total    %10.1f MiB\n", mib(p->step));
    fprintf(f, "  peak          %10.1f MiB  (at %s)\n", mib(p->peak), p->peak_at);
    if (p->save) fprintf(f, "  (a checkpoint save also takes %.1f MiB of host memory: this rank's slices)\n", mib(p->save));
}

/* The value of "key:" in a /proc file of "key: value kB" lines, in KiB; 0 when absent. */
static size_t proc_kib(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    char line[256];
    size_t v = 0, n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') {
            v = strtoull(line + n + 1, NULL, 10);
            break;
        }
    if (f) fclose(f);
    return v;
}

size_t ct_plan_available(const ct_backend *be, int device, int local_size, size_t baseline)
{
    if (!strcmp(be->name, "cpu")) {
        size_t avail = proc_kib("/proc/meminfo", "MemAvailable") * 1024;
        return avail ? avail / (size_t)(local_size > 0 ? local_size : 1) + baseline : 0;
    }
#ifdef CTRAIN_HAVE_CUDA
    size_t free_b = 0, total_b = 0;
    (void)device;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) return free_b;
#else
    (void)device;
#endif
    return 0;
}

size_t ct_plan_rss_now(void) { return proc_kib("/proc/self/status", "VmRSS") * 1024; }
size_t ct_plan_rss_peak(void) { return proc_kib("/proc/self/status", "VmHWM") * 1024; }

/* One change to cfg that might fit: its description and the plan's peak under it. */
static int try_change(const ct_config *cfg, const ct_model_config *mc, const ct_backend *be, int world,
                      size_t baseline, size_t avail, const char *what, char *out, size_t outlen)
{
    ct_plan q;
    char err[256];
    if (ct_plan_make(cfg, mc, be, world, baseline, &q, err, sizeof err) || q.peak > avail) return 0;
    size_t used = strlen(out);
    snprintf(out + used, outlen - used, "%s%s (peak %.1f MiB)", used ? "; " : "", what, mib(q.peak));
    return 1;
}

int ct_plan_check(const ct_config *cfg, const ct_model_config *mc, const ct_backend *be, int world,
                  const ct_plan *p, size_t avail, char *err, size_t errlen)
{
    if (!avail || p->peak <= avail) return 0;
    char fits[1024] = "", what[160];
    ct_config c = *cfg;
    /* a smaller micro-batch, the global batch kept by accumulating more */
    for (int mb = cfg->data.micro_batch / 2; mb >= 1; mb /= 2) {
        c = *cfg;
        c.data.micro_batch = mb;
        c.parallel.grad_accum = cfg->parallel.grad_accum * (cfg->data.micro_batch / mb);
        snprintf(what, sizeof what, "--set data.micro_batch=%d --set parallel.grad_accum=%d", mb, c.parallel.grad_accum);
        if (cfg->data.micro_batch % mb == 0 && try_change(&c, mc, be, world, p->baseline, avail, what, fits, sizeof fits))
            break;
    }
    if (strcmp(cfg->model.recompute, "block")) { /* the same step, for a block's forward more compute */
        c = *cfg;
        snprintf(c.model.recompute, sizeof c.model.recompute, "block");
        try_change(&c, mc, be, world, p->baseline, avail, "--set model.recompute=block", fits, sizeof fits);
    }
    for (int st = cfg->parallel.zero_stage + 1; st <= 3 && world > 1; st++) {
        c = *cfg;
        c.parallel.zero_stage = st;
        snprintf(what, sizeof what, "--set parallel.zero_stage=%d", st);
        if (try_change(&c, mc, be, world, p->baseline, avail, what, fits, sizeof fits)) break;
    }
    if (!ct_run_lora(cfg)) {
        c = *cfg;
        snprintf(c.lora.targets, sizeof c.lora.targets, "all-linear");
        c.lora.r = 16;
        try_change(&c, mc, be, world, p->baseline, avail, "LoRA: --set lora.targets=all-linear --set lora.r=16", fits,
                   sizeof fits);
    }
    snprintf(err, errlen, "the memory plan needs %.1f MiB per rank at %s, but %.1f MiB are available to each of this "
             "node's ranks (%s): %s%s", mib(p->peak), p->peak_at, mib(avail),
             p->device ? "the GPU's free memory" : "MemAvailable shared by the node's ranks, plus what each holds",
             fits[0] ? "these changes fit: " : "no single change of recompute, micro-batch, ZeRO stage or LoRA fits; add ranks",
             fits);
    return -1;
}

int ct_plan_command(const ct_config *cfg, ct_comm *comm, char *err, size_t errlen)
{
    const ct_backend *be;
    ct_kctx *ctx;
    int device, world = ct_comm_size(comm), rc = -1;
    ct_model_config mc;
    char path[CT_PATH_MAX + 64];
    int is_ckpt;
    if (ct_run_backend(cfg, comm, &be, &ctx, &device, err, errlen)) return -1;
    ct_plan p;
    size_t baseline = strcmp(be->name, "cpu") ? 0 : ct_plan_rss_now();
    if (ct_run_model_source(cfg, CT_WEIGHTS_CONFIG, &mc, path, sizeof path, &is_ckpt, err, errlen) ||
        ct_plan_make(cfg, &mc, be, world, baseline, &p, err, errlen))
        goto done;
    size_t avail = ct_plan_available(be, device, ct_comm_local_size(comm), baseline);
    if (ct_comm_rank(comm) == 0) {
        ct_plan_print(stdout, &p, cfg, world);
        if (avail) printf("  available     %10.1f MiB  (%s)\n", mib(avail),
                          p.device ? "the GPU's free memory" : "this node's MemAvailable over its ranks, plus the baseline");
        printf("peak per rank by world size and ZeRO stage (MiB; the same micro-batch):\n  ranks");
        for (int st = 0; st <= 3; st++) printf("   stage %d", st);
        printf("\n");
        for (int w = 1; w <= 64; w *= 2) {
            printf("  %5d", w);
            for (int st = 0; st <= 3; st++) {
                ct_config c = *cfg;
                c.parallel.zero_stage = st;
                ct_plan q;
                if (ct_plan_make(&c, &mc, be, w, baseline, &q, err, errlen)) goto done;
                printf(" %9.1f", mib(q.peak));
            }
            printf("\n");
        }
    }
    rc = ct_plan_check(cfg, &mc, be, world, &p, avail, err, errlen);
done:
    be->kctx_free(ctx);
    return rc;
}
