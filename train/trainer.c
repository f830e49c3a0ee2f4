/* trainer.c — the training loop: global batches, loss normalised over the whole step,
 * ZeRO-1 AdamW, the learning-rate schedule, evaluation, logging and the final weights. */
#include "trainer.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "eval.h"
#include "hf_gpt2.h"
#include "optim.h"
#include "run.h"

float ct_lr_at(const ct_config *c, int step)
{
    double lr = c->optim.lr, floor_lr = c->optim.min_lr;
    int warm = c->optim.warmup_steps;
    if (step <= warm) return (float)(lr * step / warm);
    if (!strcmp(c->optim.schedule, "constant")) return (float)lr;
    int span = c->optim.max_steps - warm;
    double progress = span > 0 ? (double)(step - warm) / span : 1.0;
    if (progress > 1) progress = 1;
    if (!strcmp(c->optim.schedule, "linear")) return (float)(lr - (lr - floor_lr) * progress);
    return (float)(floor_lr + 0.5 * (lr - floor_lr) * (1 + cos(M_PI * progress)));
}

/* mkdir -p */
static int make_dirs(const char *path, char *err, size_t errlen)
{
    char buf[CT_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "run.dir: cannot create %s: %s", buf, strerror(errno));
                return -1;
            }
            *p = c;
            if (!c) break;
        }
    }
    return 0;
}

static void format_duration(char *out, size_t n, double s)
{
    if (s < 60) snprintf(out, n, "%.0fs", s);
    else if (s < 3600) snprintf(out, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(out, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
}

/* Everything a run holds; freed in one place. */
typedef struct {
    ct_kctx *ctx;
    const ct_backend *be;
    ct_gpt2 *model;
    ct_optim *optim;
    ct_loader *train, *val;
    int32_t *tokens, *targets; /* [grad_accum][B*T] */
    FILE *metrics;
} run_state;

static void run_free(run_state *s)
{
    if (s->metrics) fclose(s->metrics);
    free(s->tokens);
    free(s->targets);
    ct_loader_free(s->train);
    ct_loader_free(s->val);
    ct_optim_free(s->optim);
    ct_gpt2_free(s->model);
    if (s->be && s->ctx) s->be->kctx_free(s->ctx);
}

/* Sets up everything that can fail on bad input, on every rank. */
static int setup(const ct_config *cfg, ct_comm *comm, run_state *s, char *from, size_t fromlen, char *err,
                 size_t errlen)
{
    int rank = ct_comm_rank(comm), world = ct_comm_size(comm);
    int B = cfg->data.micro_batch, T = cfg->data.seq_len, A = cfg->parallel.grad_accum;
    if (!cfg->data.train[0]) {
        snprintf(err, errlen, "data.train: empty: name an HDF5 token dataset (ctrain prepare makes one)");
        return -1;
    }
    if (ct_run_backend(cfg, &s->be, err, errlen)) return -1;
    if (!(s->ctx = s->be->kctx_init(ct_comm_local_rank(comm)))) {
        snprintf(err, errlen, "run.device: cannot start the %s backend", s->be->name);
        return -1;
    }
    if (ct_run_model(cfg, CT_WEIGHTS_CONFIG, s->be, s->ctx, B, T, world, &s->model, from, fromlen, err, errlen))
        return -1;
    int V = ct_gpt2_config_of(s->model)->vocab_size;
    ct_loader_opts lo = {.path = cfg->data.train, .seq_len = T, .micro_batch = B, .grad_accum = A, .rank = rank,
                         .world = world, .seed = (uint64_t)cfg->run.seed, .shuffle = 1, .vocab_size = V};
    if (ct_loader_init(&s->train, &lo, err, errlen)) return -1;
    if (cfg->data.val[0]) {
        ct_loader_opts vo = lo;
        vo.path = cfg->data.val;
        vo.grad_accum = 1;
        vo.shuffle = 0;
        if (ct_loader_init(&s->val, &vo, err, errlen)) return -1;
    }
    if (ct_optim_init(&s->optim, s->model, comm, cfg->parallel.zero_stage, err, errlen)) return -1;
    s->tokens = malloc(sizeof(int32_t) * (size_t)A * B * T);
    s->targets = malloc(sizeof(int32_t) * (size_t)A * B * T);
    if (!s->tokens || !s->targets) {
        snprintf(err, errlen, "out of memory for %d micro-batches of %d x %d tokens", A, B, T);
        return -1;
    }
    if (rank == 0) {
        if (make_dirs(cfg->run.dir, err, errlen)) return -1;
        char path[CT_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/ctrain.json", cfg->run.dir);
        char *json = ct_config_to_json(cfg);
        FILE *f = fopen(path, "w");
        int ok = json && f && fputs(json, f) >= 0 && fputc('\n', f) != EOF;
        if (f && fclose(f)) ok = 0;
        free(json);
        if (!ok) {
            snprintf(err, errlen, "run.dir: cannot write %s: %s", path, strerror(errno));
            return -1;
        }
        snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->run.dir);
        if (!(s->metrics = fopen(path, "w"))) {
            snprintf(err, errlen, "run.dir: cannot write %s: %s", path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void evaluate(const ct_config *cfg, ct_comm *comm, run_state *s, int step, double *val_loss)
{
    char err[1024];
    if (ct_eval_loss(s->model, s->val, cfg->log.eval_batches, cfg->data.micro_batch, cfg->data.seq_len, comm,
                     val_loss, err, sizeof err))
        ct_run_die(comm, err); /* rank-local failures: the other ranks wait in a collective */
    if (ct_comm_rank(comm) == 0) {
        printf("step %5d | val_loss %.4f\n", step, *val_loss);
        fprintf(s->metrics, "{\"step\": %d, \"val_loss\": %.6f}\n", step, *val_loss);
        fflush(s->metrics);
        fflush(stdout);
    }
}

int ct_train(const ct_config *cfg, ct_comm *comm)
{
    int rank = ct_comm_rank(comm), world = ct_comm_size(comm);
    int B = cfg->data.micro_batch, T = cfg->data.seq_len, A = cfg->parallel.grad_accum;
    run_state s = {0};
    char err[2048] = "", from[CT_PATH_MAX + 64] = "";
    ct_run_threads(comm);
    int rc = setup(cfg, comm, &s, from, sizeof from, err, sizeof err);
    if (ct_run_agree(comm, rc, err)) {
        run_free(&s);
        return -1;
    }

    const ct_gpt2_config *mc = ct_gpt2_config_of(s.model);
    long tokens_per_step = (long)B * T * A * world;
    if (rank == 0) {
        char *json = ct_config_to_json(cfg);
        printf("ctrain: config (resolved, saved as %s/ctrain.json):\n%s\n", cfg->run.dir, json ? json : "?");
        free(json);
        printf("ctrain: %d rank%s (%s), %s backend, %d threads per rank\n", world, world > 1 ? "s" : "",
               ct_comm_transport(comm), s.be->name, omp_get_max_threads());
        printf("ctrain: GPT-2 %d layers, %d heads, width %d, vocab %d: %zu parameters, from %s\n", mc->n_layer,
               mc->n_head, mc->n_embd, mc->vocab_size, ct_gpt2_count(s.model), from);
        printf("ctrain: %ld tokens per step = %d micro-batch x %d tokens x %d accumulation x %d ranks; "
               "%llu steps per epoch\n",
               tokens_per_step, B, T, A, world, (unsigned long long)ct_loader_steps_per_epoch(s.train));
        printf("ctrain: optimizer state %.1f MiB per rank (ZeRO stage %d)\n",
               ct_optim_state_bytes(s.optim) / 1048576.0, cfg->parallel.zero_stage);
        fflush(stdout);
    }

    ct_optim_hparams hp = {.beta1 = (float)cfg->optim.beta1, .beta2 = (float)cfg->optim.beta2,
                           .eps = (float)cfg->optim.eps, .weight_decay = (float)cfg->optim.weight_decay,
                           .grad_clip = (float)cfg->optim.grad_clip};
    size_t BT = (size_t)B * T;
    double t_start = omp_get_wtime(), val_loss = 0;
    uint64_t bytes_start = ct_comm_bytes(comm);
    for (int step = 1; step <= cfg->optim.max_steps; step++) {
        double t0 = omp_get_wtime();
        /* The step's loss is the mean over every target token of every micro-batch on every
         * rank, so all micro-batches are read first and their tokens counted globally. */
        double counts[2] = {0, 0}; /* [0]: tokens counted here; later [0] loss sum, [1] tokens */
        for (int a = 0; a < A; a++) {
            if (ct_loader_next(s.train, s.tokens + a * BT, s.targets + a * BT, err, sizeof err)) ct_run_die(comm, err);
            for (size_t i = 0; i < BT; i++) counts[0] += s.targets[a * BT + i] >= 0;
        }
        if (ct_comm_allreduce_sum_f64(comm, counts, 1)) ct_run_die(comm, "communication failed");
        double total = counts[0];
        float dloss = total > 0 ? (float)(1.0 / total) : 0.0f;
        double loss_sum = 0;
        ct_gpt2_zero_grad(s.model);
        for (int a = 0; a < A; a++) {
            double sum;
            long ntok;
            if (ct_gpt2_forward(s.model, s.tokens + a * BT, s.targets + a * BT, B, T, &sum, &ntok, err, sizeof err))
                ct_run_die(comm, err);
            ct_gpt2_backward(s.model, dloss);
            loss_sum += sum;
        }
        hp.lr = ct_lr_at(cfg, step);
        float norm;
        if (ct_optim_step(s.optim, &hp, &norm)) ct_run_die(comm, "communication failed in the optimizer step");
        if (ct_comm_allreduce_sum_f64(comm, &loss_sum, 1)) ct_run_die(comm, "communication failed");
        double loss = total > 0 ? loss_sum / total : 0.0;
        double dt = omp_get_wtime() - t0;

        if (rank == 0) {
            double tps = tokens_per_step / dt;
            fprintf(s.metrics,
                    "{\"step\": %d, \"loss\": %.8f, \"lr\": %.6g, \"grad_norm\": %.6f, \"ms\": %.2f, "
                    "\"tokens_per_s\": %.1f, \"tokens\": %ld}\n",
                    step, loss, hp.lr, norm, dt * 1e3, tps, tokens_per_step * (long)step);
            if (step % cfg->log.every == 0 || step == 1 || step == cfg->optim.max_steps) {
                char eta[32];
                double elapsed = omp_get_wtime() - t_start;
                format_duration(eta, sizeof eta, elapsed / step * (cfg->optim.max_steps - step));
                printf("step %5d/%d | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | %.0f ms | eta %s\n", step,
                       cfg->optim.max_steps, loss, hp.lr, norm, tps, dt * 1e3, eta);
                fflush(stdout);
                fflush(s.metrics);
            }
        }
        int last = step == cfg->optim.max_steps;
        if (s.val && ((cfg->log.eval_every && step % cfg->log.eval_every == 0) || last))
            evaluate(cfg, comm, &s, step, &val_loss);
    }

    /* payload handed to collectives per step (an evaluation adds 16 bytes) */
    double comm_per_step = (double)(ct_comm_bytes(comm) - bytes_start) / cfg->optim.max_steps;
    rc = 0;
    if (rank == 0) {
        printf("ctrain: %.3f MiB passed to collectives per step per rank; flat buffer %zu floats (%.3f MiB)\n",
               comm_per_step / 1048576.0, ct_gpt2_numel(s.model), ct_gpt2_numel(s.model) * 4 / 1048576.0);
        rc = ct_hf_gpt2_save(s.model, cfg->run.dir, err, sizeof err);
        if (rc == 0) {
            printf("ctrain: done in %.1f s; weights in %s (model.safetensors, config.json)\n",
                   omp_get_wtime() - t_start, cfg->run.dir);
            fflush(stdout);
        }
    }
    rc = ct_run_agree(comm, rc, err);
    run_free(&s);
    return rc;
}
