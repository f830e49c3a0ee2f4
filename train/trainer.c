/* trainer.c — the training loop: global batches, loss normalised over the whole step,
 * ZeRO-1 AdamW, the learning-rate schedule, evaluation, logging and the final weights; steps
 * whose loss or gradient norm is not finite are never applied. */
#include "trainer.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "eval.h"
#include "hf_model.h"
#include "lora.h"
#include "optim.h"
#include "plan.h"
#include "resume.h"
#include "run.h"
#include "rundir.h"
#include "tfevents.h"
#include "watch.h"
#include "write_file.h"

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

static void format_duration(char *out, size_t n, double s)
{
    if (s < 60) snprintf(out, n, "%.0fs", s);
    else if (s < 3600) snprintf(out, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(out, n, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
}

/* Set by SIGTERM or SIGUSR1 (a scheduler's notice of preemption); the ranks agree on it at the
 * next step boundary, save and exit. A signal handler can only reach a global. */
static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) { stop_requested = sig; }

static void catch_stop_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

static uint64_t dropout_seed(int64_t seed, int step, int slot)
{
    uint64_t z = (uint64_t)seed * 0x9E3779B97F4A7C15ull ^ (uint64_t)step << 20 ^ (uint64_t)slot;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Everything a run holds; freed in one place. */
typedef struct {
    ct_kctx *ctx;
    const ct_backend *be;
    int device;           /* the GPU this rank drives (cuda) */
    ct_model *model;
    ct_optim *optim;
    ct_loader *train, *val;
    int32_t *tokens, *targets; /* [grad_accum][B*T] */
    int32_t *pos;              /* [grad_accum][B*T] positions of packed documents; NULL unless data.train is masked */
    FILE *metrics;
    char metrics_path[CT_PATH_MAX + 32];
    char *config_json;         /* the resolved config, saved in every checkpoint */
    char resume[CT_PATH_MAX + 64]; /* checkpoint to resume from, or "" */
    ct_ckpt_state st;          /* step, tokens, loader cursor, rng: what a checkpoint restores */
    ct_ckpt_state data;        /* data.train's identity (data_* fields), recorded in every checkpoint */
    ct_resume_plan plan;       /* how the data goes on after a resume (checkpoint.allow_new_data) */
    ct_plan mem;               /* the memory plan, made before the model */
    char good[CT_PATH_MAX + 64]; /* the newest checkpoint of a state that was all finite, or "" */
    int lock_fd;               /* rank 0: run.dir/ctrain.lock, held until the end; -1 none */
    ct_tfevents *tb;           /* rank 0: this start's TensorBoard event file */
    double *sums;              /* [2 + world] reduced each step: loss sum, stop flag, each rank's memory (GiB) */
    ct_watch_progress progress; /* rank 0: checkpoint progress lines */
} run_state;

static void run_free(run_state *s)
{
    ct_rundir_unlock(s->lock_fd);
    if (s->metrics) fclose(s->metrics);
    ct_tfevents_close(s->tb, NULL, 0);
    ct_ckpt_on_progress(NULL, NULL);
    free(s->sums);
    free(s->config_json);
    free(s->tokens);
    free(s->targets);
    free(s->pos);
    ct_loader_free(s->train);
    ct_loader_free(s->val);
    ct_optim_free(s->optim);
    ct_model_free(s->model);
    if (s->be && s->ctx) s->be->kctx_free(s->ctx);
}

/* The memory plan, before anything of the model exists: printed by rank 0, and a run that will
 * not fit is refused with the changes that would make it fit. */
static int plan_memory(const ct_config *cfg, ct_comm *comm, run_state *s, char *err, size_t errlen)
{
    ct_model_config mc;
    char path[CT_PATH_MAX + 64];
    int is_ckpt, world = ct_comm_size(comm);
    if (ct_run_model_source(cfg, CT_WEIGHTS_CONFIG, &mc, path, sizeof path, &is_ckpt, err, errlen)) return -1;
    size_t baseline = strcmp(s->be->name, "cpu") ? 0 : ct_plan_rss_now();
    if (ct_plan_make(cfg, &mc, s->be, world, baseline, &s->mem, err, errlen)) return -1;
    if (ct_comm_rank(comm) == 0) {
        ct_plan_print(stdout, &s->mem, cfg, world);
        fflush(stdout);
    }
    size_t avail = ct_plan_available(s->be, s->device, ct_comm_local_size(comm), baseline);
    return ct_plan_check(cfg, &mc, s->be, world, &s->mem, avail, err, errlen);
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
    if (ct_run_backend(cfg, comm, &s->be, &s->ctx, &s->device, err, errlen)) return -1;
    /* resume: the latest checkpoint of run.dir, or a checkpoint named by model.init_from */
    int latest = ct_ckpt_latest(cfg->run.dir, s->resume, sizeof s->resume, err, errlen);
    if (latest < 0) return -1;
    struct stat sb;
    if (!latest && cfg->model.init_from[0] && stat(cfg->model.init_from, &sb) == 0 && S_ISREG(sb.st_mode))
        snprintf(s->resume, sizeof s->resume, "%s", cfg->model.init_from);
    if (plan_memory(cfg, comm, s, err, errlen) ||
        ct_run_model(cfg, CT_WEIGHTS_CONFIG, s->be, s->ctx, B, T, world,
                     cfg->parallel.zero_stage == 3 && !ct_run_lora(cfg) ? rank : -1, comm, &s->model, from, fromlen,
                     err, errlen))
        return -1;
    if (!(s->config_json = ct_config_to_json(cfg, 1))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* the data must be in the model's language: the dataset names the tokenizer that made it */
    ct_tokenizer *tok = NULL;
    int bad = ct_run_tokenizer(cfg, NULL, &tok, err, errlen) ||
              ct_run_check_dataset(tok, "data.train", cfg->data.train, err, errlen) ||
              (cfg->data.val[0] && ct_run_check_dataset(tok, "data.val", cfg->data.val, err, errlen));
    ct_tokenizer_free(tok);
    if (bad) return -1;
    /* a resume goes on with the data, windows, batch and model the checkpoint was trained with */
    if (ct_resume_data_id(cfg->data.train, &s->data.data_tokens, &s->data.data_sample, s->data.data_digest, err,
                          errlen))
        return -1;
    if (s->resume[0]) {
        ct_ckpt_state saved;
        if (ct_ckpt_read_state(s->resume, &saved, err, errlen) ||
            ct_resume_check(cfg, world, ct_model_config_of(s->model), &s->data, s->resume, &saved, &s->plan, err,
                            errlen))
            return -1;
    }
    int V = ct_model_config_of(s->model)->vocab_size;
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
    if (ct_optim_init(&s->optim, s->model, comm, cfg->parallel.zero_stage, cfg->parallel.overlap_comm, err, errlen))
        return -1;
    s->tokens = malloc(sizeof(int32_t) * (size_t)A * B * T);
    s->targets = malloc(sizeof(int32_t) * (size_t)A * B * T);
    if (ct_loader_masked(s->train)) s->pos = malloc(sizeof(int32_t) * (size_t)A * B * T);
    s->sums = calloc(2 + (size_t)world, sizeof(double));
    if (!s->tokens || !s->targets || (ct_loader_masked(s->train) && !s->pos) || !s->sums) {
        snprintf(err, errlen, "out of memory for %d micro-batches of %d x %d tokens", A, B, T);
        return -1;
    }
    return 0;
}

/* Before anything else: run.dir must not overlap the inputs, and no other job may hold it
 * (rank 0 locks it for the job's lifetime). Writes nothing into run.dir but the lock file. */
static int claim(const ct_config *cfg, ct_comm *comm, run_state *s, char *err, size_t errlen)
{
    if (ct_rundir_check_inputs(cfg, err, errlen)) return -1;
    return ct_comm_rank(comm) == 0 ? ct_rundir_lock(cfg->run.dir, &s->lock_fd, err, errlen) : 0;
}

/* Rank 0, once every check has passed: run.dir/ctrain.json, the resolved config (written whole
 * and synced under a temporary name, then renamed: a full disk leaves the old one). */
static int write_config(const ct_config *cfg, const run_state *s, char *err, size_t errlen)
{
    char path[CT_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/ctrain.json", cfg->run.dir);
    size_t len = strlen(s->config_json);
    char *text = malloc(len + 1);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(text, s->config_json, len);
    text[len] = '\n';
    int rc = ct_file_replace(path, text, len + 1, err, errlen);
    free(text);
    return rc ? -1 : 0;
}

/* Rank 0: metrics.jsonl, truncated to the steps up to resume_step when a run resumes (a run
 * that died after its last checkpoint logged steps that will now run again; a line cut short by
 * a full disk is dropped). */
static int open_metrics(const ct_config *cfg, run_state *s, int64_t resume_step, char *err, size_t errlen)
{
    char *path = s->metrics_path, tmp[CT_PATH_MAX + 40], line[4096];
    snprintf(path, sizeof s->metrics_path, "%s/metrics.jsonl", cfg->run.dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *old = resume_step > 0 ? fopen(path, "r") : NULL;
    if (old) {
        FILE *kept = fopen(tmp, "w");
        int ok = kept != NULL;
        while (ok && fgets(line, sizeof line, old)) {
            const char *at = strstr(line, "\"step\": ");
            size_t n = strlen(line);
            if (at && atoll(at + 8) <= resume_step && n && line[n - 1] == '\n') ok = fputs(line, kept) >= 0;
        }
        fclose(old);
        ok = ok && fflush(kept) == 0 && fsync(fileno(kept)) == 0;
        if (kept && fclose(kept) != 0) ok = 0;
        if (!ok || rename(tmp, path)) {
            snprintf(err, errlen, "%s: cannot rewrite: %s", path, strerror(errno));
            unlink(tmp);
            return -1;
        }
    }
    if (!(s->metrics = fopen(path, resume_step > 0 ? "a" : "w"))) {
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* A write to what failed (errno: why) ends the job at once: the other ranks may be anywhere in
 * the step. No checkpoint is written after it, so `latest` stays the newest good one, and the
 * same command, run again once there is room, resumes there and logs the steps after it again. */
static _Noreturn void write_failed(ct_comm *comm, const char *what, int errnum)
{
    char msg[CT_PATH_MAX + 256];
    snprintf(msg, sizeof msg, "%s: write failed: %s; the run stops here (run the same command again once there is "
             "room: it resumes from the newest checkpoint)", what, strerror(errnum));
    ct_run_die(comm, msg);
}

/* Rank 0: one line of metrics.jsonl, flushed at once; any failure ends the job (write_failed). */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void metrics_line(ct_comm *comm, run_state *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errno = 0;
    int bad = vfprintf(s->metrics, fmt, ap) < 0;
    va_end(ap);
    bad |= fflush(s->metrics) != 0 || ferror(s->metrics);
    if (bad) write_failed(comm, s->metrics_path, errno ? errno : EIO);
}

/* Rank 0: the log lines on stdout (often a file a launcher keeps) reached it, or the job ends. */
static void log_flush(ct_comm *comm)
{
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) write_failed(comm, "standard output (the log)", errno ? errno : EIO);
}

/* Rank 0: metrics.jsonl synced and closed; -1 with err when that fails. */
static int close_metrics(run_state *s, char *err, size_t errlen)
{
    int tb = ct_tfevents_close(s->tb, err, errlen);
    s->tb = NULL;
    if (tb) return -1;
    errno = 0;
    int bad = fflush(s->metrics) != 0 || ferror(s->metrics) || fsync(fileno(s->metrics)) != 0;
    int e = errno;
    if (fclose(s->metrics) != 0 && !bad) bad = 1, e = errno;
    s->metrics = NULL;
    if (bad) snprintf(err, errlen, "%s: write failed: %s", s->metrics_path, strerror(e ? e : EIO));
    return bad ? -1 : 0;
}

/* A failure every rank finds alike, from reduced values: rank 0 says it once (no rank named: it
 * is the job's), and every rank returns -1; no collective is needed. */
static int fail_alike(ct_comm *comm, const char *err)
{
    if (ct_comm_rank(comm) == 0) {
        fprintf(stderr, "ctrain: error: %s\n", err);
        fflush(stderr);
    }
    return -1;
}

/* x for a message: %g, but NaN as "nan" whatever its sign bit */
static const char *show(char *buf, size_t n, double x)
{
    if (isnan(x)) snprintf(buf, n, "nan");
    else snprintf(buf, n, "%g", x);
    return buf;
}

/* The newest checkpoint of a finite state, for messages. */
static const char *newest_good(const run_state *s)
{
    return s->good[0] ? s->good : "none was written";
}

/* Evaluates after step; -1 with err, on every rank alike (the loss is reduced), when the val
 * loss is not finite: the run then stops before it saves anything of this state. */
static int evaluate(const ct_config *cfg, ct_comm *comm, run_state *s, int step, double *val_loss, char *err,
                    size_t errlen)
{
    if (ct_eval_loss(s->model, s->val, cfg->log.eval_batches, cfg->data.micro_batch, cfg->data.seq_len, comm,
                     val_loss, err, errlen))
        ct_run_die(comm, err); /* rank-local failures: the other ranks wait in a collective */
    if (!isfinite(*val_loss)) {
        char v[32];
        snprintf(err, errlen, "step %d: val_loss %s on data.val is not finite: the model's outputs overflow; no "
                 "checkpoint of this step is written (the newest checkpoint: %s); lower optim.lr or check data.val",
                 step, show(v, sizeof v, *val_loss), newest_good(s));
        return -1;
    }
    if (ct_comm_rank(comm) == 0) {
        printf("step %5d | val_loss %.4f\n", step, *val_loss);
        metrics_line(comm, s, "{\"step\": %d, \"val_loss\": %.6f}\n", step, *val_loss);
        if (ct_tfevents_write(s->tb, step, &(ct_tb_scalar){"val/loss", *val_loss}, 1))
            write_failed(comm, ct_tfevents_path(s->tb), errno);
        log_flush(comm);
    }
    return 0;
}

/* Whether the weights are all finite (collective); -1 with err naming the step when not, so
 * that nothing of them is saved. */
static int weights_finite(ct_comm *comm, run_state *s, int step, char *err, size_t errlen)
{
    int fin = ct_optim_params_finite(s->optim);
    if (fin < 0) ct_run_die(comm, "communication failed");
    if (fin) return 0;
    snprintf(err, errlen, "step %d: the weights are not finite after this step: nothing of them is saved (the newest "
             "checkpoint: %s); lower optim.lr or set optim.grad_clip", step, newest_good(s));
    return -1;
}

/* Saves a checkpoint of the state after `step`; returns as ct_ckpt_save, and the caller reports. */
static int save(const ct_config *cfg, ct_comm *comm, run_state *s, int step, long tokens_per_step, char *err,
                size_t errlen)
{
    s->st.step = step;
    s->st.tokens = (int64_t)step * tokens_per_step;
    s->st.cursor = ct_loader_tell(s->train);
    s->st.world = ct_comm_size(comm);
    s->st.zero_stage = cfg->parallel.zero_stage;
    s->st.data_tokens = s->data.data_tokens;
    s->st.data_sample = s->data.data_sample;
    snprintf(s->st.data_digest, sizeof s->st.data_digest, "%s", s->data.data_digest);
    if (weights_finite(comm, s, step, err, errlen)) return -1;
    char path[CT_PATH_MAX + 64];
    /* the metrics of the steps this checkpoint holds are on disk before it is */
    if (ct_comm_rank(comm) == 0 && fsync(fileno(s->metrics)) != 0) write_failed(comm, s->metrics_path, errno);
    if (ct_comm_rank(comm) == 0 && ct_tfevents_sync(s->tb)) write_failed(comm, ct_tfevents_path(s->tb), errno);
    double t0 = omp_get_wtime();
    int rc = ct_ckpt_save(cfg->run.dir, cfg->checkpoint.keep, s->model, s->optim, &s->st, s->config_json, comm, path,
                          sizeof path, err, errlen);
    if (rc) return rc; /* -1 here, -2 where only another rank failed: ct_run_agree reports the right one */
    snprintf(s->good, sizeof s->good, "%s", path);
    if (ct_comm_rank(comm) == 0) {
        printf("step %5d | checkpoint %s (%.2f s)\n", step, path, omp_get_wtime() - t0);
        log_flush(comm);
    }
    return 0;
}

int ct_train(const ct_config *cfg, ct_comm *comm)
{
    int rank = ct_comm_rank(comm), world = ct_comm_size(comm);
    int B = cfg->data.micro_batch, T = cfg->data.seq_len, A = cfg->parallel.grad_accum;
    run_state s = {.lock_fd = -1};
    char err[2048] = "", from[CT_PATH_MAX + 64] = "";
    ct_run_threads(comm);
    catch_stop_signals();
    int rc = claim(cfg, comm, &s, err, sizeof err);
    if (ct_run_agree(comm, rc, err)) {
        run_free(&s);
        return -1;
    }
    rc = setup(cfg, comm, &s, from, sizeof from, err, sizeof err);
    if (ct_run_agree(comm, rc, err)) {
        run_free(&s);
        return -1;
    }
    /* GPU memory: gradients and parameters are reduced over NCCL (copied, with one rank). Only
     * now, with every rank set up: a rank failing here may leave the others inside NCCL's
     * start, so it ends the job. */
    if (s.be->stream(s.ctx) && ct_comm_attach_device(comm, s.device, err, sizeof err)) ct_run_die(comm, err);
    ct_rng_seed(&s.st.rng, (uint64_t)cfg->run.seed);
    if (rank == 0) ct_ckpt_on_progress(ct_watch_ckpt_progress, &s.progress);
    double load_s = omp_get_wtime();
    if (s.resume[0]) {
        rc = ct_ckpt_read(s.resume, s.model, s.optim, &s.st, comm, err, sizeof err);
        if (ct_run_agree(comm, rc, err)) {
            run_free(&s);
            return -1;
        }
        ct_loader_seek(s.train, ct_resume_cursor(&s.plan, s.st.cursor, (uint64_t)B * A * world));
        snprintf(s.good, sizeof s.good, "%s", s.resume);
    }
    load_s = omp_get_wtime() - load_s;
    /* every check has passed: only now is anything of run.dir written */
    rc = rank == 0 && (write_config(cfg, &s, err, sizeof err) || open_metrics(cfg, &s, s.st.step, err, sizeof err) ||
                       ct_tfevents_open(&s.tb, cfg->run.dir, s.st.step, err, sizeof err))
             ? -1 : 0;
    if (ct_run_agree(comm, rc, err)) {
        run_free(&s);
        return -1;
    }

    const ct_model_config *mc = ct_model_config_of(s.model);
    long tokens_per_step = (long)B * T * A * world;
    /* MFU: the model FLOPs of one rank's step (a full step's: not LoRA's, which skips the base's
     * weight gradients) over the step time and one device's peak */
    char peak_note[512];
    double peak = ct_watch_peak(cfg, s.be, s.device, peak_note, sizeof peak_note), mem_peak = 0;
    double rank_flops = ct_model_has_lora(s.model) ? 0 : ct_model_step_flops(mc, B, T) * A;
    if (rank == 0) {
        char *line = ct_config_to_json(cfg, 0);
        printf("ctrain: config (resolved; saved as %s/ctrain.json): %s\n", cfg->run.dir, line ? line : "?");
        free(line);
        printf("ctrain: %d rank%s (%s), %s backend, %d threads per rank\n", world, world > 1 ? "s" : "",
               ct_comm_transport(comm), s.be->name, omp_get_max_threads());
        printf("ctrain: %s %d layers, %d heads (%d key/value), width %d, vocab %d: %zu parameters, from %s\n",
               mc->model_type, mc->n_layer, mc->n_head, mc->n_kv_head, mc->n_embd, mc->vocab_size,
               ct_model_count(s.model), from);
        char counts[256];
        ct_lora_describe(s.model, counts, sizeof counts);
        printf("ctrain: %s\n", counts);
        if (s.resume[0])
            printf("ctrain: resumed from %s at step %lld (saved by %d rank%s; loaded in %.2f s)\n", s.resume,
                   (long long)s.st.step, s.st.world, s.st.world > 1 ? "s" : "", load_s);
        if (s.plan.note[0])
            printf("ctrain: changed since the checkpoint, as checkpoint.allow_new_data allows: %s; the data goes on "
                   "%s\n", s.plan.note, s.plan.restart ? "from its beginning" : "from the same share of its epoch");
        printf("ctrain: %ld tokens per step = %d micro-batch x %d tokens x %d accumulation x %d ranks; "
               "%llu steps per epoch\n",
               tokens_per_step, B, T, A, world, (unsigned long long)ct_loader_steps_per_epoch(s.train));
        ct_trainable tr = ct_model_trainable(s.model);
        size_t es = s.be->elem_size;
        double weights = (double)ct_model_numel(s.model) * es + (ct_model_has_lora(s.model) ? (double)tr.numel * es : 0);
        printf("ctrain: memory per rank: weights %.1f MiB, gradients %.1f MiB, optimizer state %.1f MiB (ZeRO stage "
               "%d)\n", weights / 1048576.0, (double)tr.numel * es / 1048576.0,
               ct_optim_state_bytes(s.optim) / 1048576.0, cfg->parallel.zero_stage);
        printf("ctrain: %s; TensorBoard: %s\n", rank_flops ? peak_note : "MFU not computed for LoRA (a LoRA step "
               "skips the base's weight gradients, which model FLOPs count)", ct_tfevents_path(s.tb));
        log_flush(comm);
    }

    ct_optim_hparams hp = {.beta1 = (float)cfg->optim.beta1, .beta2 = (float)cfg->optim.beta2,
                           .eps = (float)cfg->optim.eps, .weight_decay = (float)cfg->optim.weight_decay,
                           .grad_clip = (float)cfg->optim.grad_clip};
    size_t BT = (size_t)B * T;
    int first = (int)s.st.step + 1, saved_at = s.resume[0] ? (int)s.st.step : -1, preempted = 0;
    double t_start = omp_get_wtime(), val_loss = 0;
    uint64_t bytes_start = ct_comm_bytes(comm);
    for (int step = first; step <= cfg->optim.max_steps; step++) {
        double t0 = omp_get_wtime();
        /* The step's loss is the mean over every target token of every micro-batch on every
         * rank, so all micro-batches are read first and their tokens counted globally. */
        double count = 0;
        for (int a = 0; a < A; a++) {
            if (ct_loader_next(s.train, s.tokens + a * BT, s.targets + a * BT, s.pos ? s.pos + a * BT : NULL, err,
                               sizeof err))
                ct_run_die(comm, err);
            for (size_t i = 0; i < BT; i++) count += s.targets[a * BT + i] >= 0;
        }
        if (ct_comm_allreduce_sum_f64(comm, &count, 1)) ct_run_die(comm, "communication failed");
        float dloss = count > 0 ? (float)(1.0 / count) : 0.0f;
        double *sums = s.sums; /* loss sum; ranks asked to stop; each rank's memory */
        memset(sums, 0, (2 + (size_t)world) * sizeof *sums);
        sums[1] = stop_requested != 0;
        ct_model_zero_grad(s.model);
        ct_model_set_training(s.model, 1);
        for (int a = 0; a < A; a++) {
            double sum;
            long ntok;
            /* LoRA dropout masks follow the micro-batch's place in the global batch (rank r's
             * micro-batch a holds the windows of slot a * world + r), not the rank: a resharded
             * resume draws the same masks for the same windows */
            ct_model_set_dropout_seed(s.model, dropout_seed(cfg->run.seed, step, a * world + rank));
            if (ct_model_forward(s.model, s.tokens + a * BT, s.targets + a * BT, s.pos ? s.pos + a * BT : NULL, B, T,
                                 dloss, &sum, &ntok, err, sizeof err))
                ct_run_die(comm, err);
            /* the last micro-batch's backward hands each finished layer to the reduction (every
             * micro-batch's under ZeRO-2 and 3) */
            ct_model_backward(s.model, ct_optim_ready(s.optim, a == A - 1), s.optim);
            sums[0] += sum;
        }
        ct_model_set_training(s.model, 0);
        /* the loss first (the same reduction as always, moved): whether the step may be applied
         * is decided from reduced values, which every rank sees alike */
        sums[2 + rank] = mem_peak = fmax(mem_peak, ct_watch_memory_gib(s.be, s.device));
        if (ct_comm_allreduce_sum_f64(comm, sums, 2 + (size_t)world)) ct_run_die(comm, "communication failed");
        double loss = count > 0 ? sums[0] / count : 0.0;
        hp.lr = ct_lr_at(cfg, step);
        hp.hold = !isfinite(loss);
        float norm;
        rc = ct_optim_step(s.optim, &hp, &norm);
        if (rc < 0) ct_run_die(comm, "communication failed in the optimizer step");
        int held = rc == 1; /* not applied: the loss or the gradient norm is NaN or Inf */
        /* steps not applied so far, this one included (the optimizer counts the applied ones,
         * and a checkpoint restores both counts) */
        int skipped = step - ct_optim_steps_taken(s.optim);
        double dt = omp_get_wtime() - t0;

        if (rank == 0) {
            double tps = tokens_per_step / dt, mfu = ct_watch_mfu(rank_flops, dt, peak), mem = 0;
            for (int r = 0; r < world; r++) mem = fmax(mem, sums[2 + r]);
            char l[32] = "null", g[32] = "null", u[32] = "null"; /* JSON has no NaN or Inf */
            if (isfinite(loss)) snprintf(l, sizeof l, "%.8f", loss);
            if (isfinite(norm)) snprintf(g, sizeof g, "%.6f", norm);
            if (isfinite(mfu)) snprintf(u, sizeof u, "%.6f", mfu);
            metrics_line(comm, &s,
                         "{\"step\": %d, \"loss\": %s, \"lr\": %.6g, \"grad_norm\": %s, \"ms\": %.2f, "
                         "\"tokens_per_s\": %.1f, \"tokens\": %ld, \"mfu\": %s, \"memory_gib\": %.4f%s}\n",
                         step, l, hp.lr, g, dt * 1e3, tps, tokens_per_step * (long)step, u, mem,
                         held ? ", \"nonfinite\": true" : "");
            ct_tb_scalar tb[] = {{"train/loss", loss}, {"train/lr", hp.lr}, {"train/grad_norm", norm},
                                 {"train/tokens_per_s", tps}, {"train/mfu", mfu}, {"train/memory_gib", mem}};
            if (ct_tfevents_write(s.tb, step, tb, 6)) write_failed(comm, ct_tfevents_path(s.tb), errno);
            if (held && skipped <= cfg->optim.skip_nonfinite)
                fprintf(stderr, "ctrain: warning: step %d: loss %s, gradient norm %s: not finite: the step is skipped, "
                        "not applied (%d of the %d steps optim.skip_nonfinite allows)\n", step, show(l, sizeof l, loss),
                        show(g, sizeof g, norm), skipped, cfg->optim.skip_nonfinite);
            if (step % cfg->log.every == 0 || step == first || step == cfg->optim.max_steps) {
                char eta[32];
                double elapsed = omp_get_wtime() - t_start;
                format_duration(eta, sizeof eta, elapsed / (step - first + 1) * (cfg->optim.max_steps - step));
                if (isfinite(mfu)) snprintf(u, sizeof u, " | mfu %.1f%%", 100 * mfu);
                else u[0] = 0;
                printf("step %5d/%d | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s%s | mem %.2f GiB | %.0f ms | eta %s\n",
                       step, cfg->optim.max_steps, loss, hp.lr, norm, tps, u, mem, dt * 1e3, eta);
                log_flush(comm);
            }
        }
        if (held && skipped > cfg->optim.skip_nonfinite) { /* every rank alike: the values are reduced */
            char l[32], g[32];
            snprintf(err, sizeof err, "step %d: loss %s, gradient norm %s: not finite (a NaN or Inf weight or input, "
                     "or too high an optim.lr): the step was not applied and nothing of it is saved; %d such step%s, "
                     "optim.skip_nonfinite allows %d; the newest checkpoint: %s", step, show(l, sizeof l, loss),
                     show(g, sizeof g, norm), skipped, skipped > 1 ? "s" : "", cfg->optim.skip_nonfinite,
                     newest_good(&s));
            fail_alike(comm, err);
            run_free(&s);
            return -1;
        }
        if (sums[1] > 0) { /* preempted: every rank saw the flag in the same reduction */
            preempted = step;
            break;
        }
        int last = step == cfg->optim.max_steps;
        if (s.val && ((cfg->log.eval_every && step % cfg->log.eval_every == 0) || last) &&
            evaluate(cfg, comm, &s, step, &val_loss, err, sizeof err)) {
            fail_alike(comm, err);
            run_free(&s);
            return -1;
        }
        if ((cfg->checkpoint.every && step % cfg->checkpoint.every == 0) || last) {
            rc = save(cfg, comm, &s, step, tokens_per_step, err, sizeof err);
            if (ct_run_agree(comm, rc, err)) {
                run_free(&s);
                return -1;
            }
            saved_at = step;
        }
    }
    if (preempted) {
        rc = saved_at == preempted ? 0 : save(cfg, comm, &s, preempted, tokens_per_step, err, sizeof err);
        if (rank == 0 && rc == 0) rc = close_metrics(&s, err, sizeof err);
        if (rank == 0 && rc == 0)
            printf("ctrain: stopped by a signal after step %d; checkpoint saved: run again to resume\n", preempted);
        rc = ct_run_agree(comm, rc, err);
        run_free(&s);
        return rc;
    }

    /* payload handed to collectives per step (evaluations and checkpoints add a few bytes) */
    int ran = cfg->optim.max_steps - first + 1;
    double comm_per_step = ran > 0 ? (double)(ct_comm_bytes(comm) - bytes_start) / ran : 0;
    rc = weights_finite(comm, &s, cfg->optim.max_steps, err, sizeof err);
    if (rc == 0 && !ct_run_lora(cfg) && ct_optim_gather_model(s.optim)) /* ZeRO-3: the whole model for the save */
        ct_run_die(comm, "out of memory or communication failed gathering the weights for the final save");
    if (rc == 0 && rank == 0) {
        size_t flat = ct_model_trainable(s.model).numel;
        printf("ctrain: %.3f MiB passed to collectives per step per rank; flat buffer %zu floats (%.3f MiB)\n",
               comm_per_step / 1048576.0, flat, flat * 4 / 1048576.0);
        ct_lora_spec spec;
        rc = close_metrics(&s, err, sizeof err);
        if (rc == 0 && !ct_run_lora(cfg)) rc = ct_hf_save(s.model, cfg->run.dir, ct_run_side_files(cfg), 0, err, sizeof err);
        else if (rc == 0 && (rc = ct_lora_spec_from_config(cfg, &spec, err, sizeof err)) == 0)
            rc = ct_lora_save_peft(s.model, &spec, cfg->model.init_from, cfg->run.dir, err, sizeof err);
        if (rc == 0) {
            printf("ctrain: done in %.1f s; %s in %s\n", omp_get_wtime() - t_start,
                   ct_run_lora(cfg) ? "adapters (adapter_model.safetensors, adapter_config.json)"
                                    : "weights (model.safetensors, config.json)",
                   cfg->run.dir);
            errno = 0;
            if (fflush(stdout) != 0 || ferror(stdout))
                rc = -1, snprintf(err, sizeof err, "standard output (the log): write failed: %s", strerror(errno ? errno : EIO));
        }
    }
    if (!strcmp(s.be->name, "cpu")) { /* the plan against what the ranks used (the largest) */
        double *hwm = calloc((size_t)world, sizeof *hwm), top = 0;
        if (hwm) hwm[rank] = (double)ct_plan_rss_peak();
        if (hwm && ct_comm_allreduce_sum_f64(comm, hwm, (size_t)world) == 0 && rank == 0) {
            for (int r = 0; r < world; r++) top = fmax(top, hwm[r]);
            printf("ctrain: peak memory per rank %.1f MiB (VmHWM, the largest rank); planned %.1f MiB\n",
                   top / 1048576.0, (double)s.mem.peak / 1048576.0);
        }
        free(hwm);
    }
    rc = ct_run_agree(comm, rc, err);
    run_free(&s);
    return rc;
}
