/* run.c — backend choice, threads, model construction and collective failure for the verbs. */
#include "run.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "hf_model.h"
#include "lora.h"

int ct_run_backend(const ct_config *cfg, ct_comm *comm, const ct_backend **be, ct_kctx **ctx, int *device,
                   char *err, size_t errlen)
{
    *ctx = NULL;
    *device = 0;
    const ct_backend *cuda = ct_backend_cuda(); /* NULL without the backend or a GPU */
    if (!strcmp(cfg->run.device, "cuda") && !cuda) {
        snprintf(err, errlen, "run.device: \"cuda\": no CUDA device is usable: this ctrain was built without the "
                 "CUDA backend (no nvcc at build time, or -DCTRAIN_CUDA=OFF), or no GPU is visible (check nvidia-smi "
                 "and CUDA_VISIBLE_DEVICES); use \"cpu\" or \"auto\"");
        return -1;
    }
    *be = strcmp(cfg->run.device, "cpu") && cuda ? cuda : ct_backend_cpu();
    int count = (*be)->device_count();
    *device = count > 0 ? ct_comm_local_rank(comm) % count : 0;
    if (!(*ctx = (*be)->kctx_init(*device))) {
        snprintf(err, errlen, "run.device: cannot start the %s backend on device %d (of %d visible)", (*be)->name,
                 *device, count);
        return -1;
    }
    return 0;
}

void ct_run_threads(ct_comm *comm)
{
    if (getenv("OMP_NUM_THREADS")) return;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int per_rank = (int)(cores / ct_comm_local_size(comm));
    omp_set_num_threads(per_rank > 0 ? per_rank : 1);
}

static int has_weights(const char *dir)
{
    char path[CT_PATH_MAX + 32];
    struct stat sb;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    return dir[0] && stat(path, &sb) == 0;
}

static int is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int ct_run_model_source(const ct_config *cfg, ct_weights_source source, ct_model_config *mc, char *path,
                        size_t pathlen, int *is_ckpt, char *err, size_t errlen)
{
    path[0] = 0;
    *is_ckpt = 0;
    if (ct_run_lora(cfg)) source = CT_WEIGHTS_CONFIG; /* the base: model.init_from, always */
    if (source == CT_WEIGHTS_TRAINED) {
        int latest = ct_ckpt_latest(cfg->run.dir, path, pathlen, err, errlen);
        if (latest < 0) return -1;
        if (has_weights(cfg->run.dir)) snprintf(path, pathlen, "%s", cfg->run.dir), latest = 0;
        *is_ckpt = latest;
        if (!path[0] && !cfg->model.init_from[0]) {
            snprintf(err, errlen, "run.dir: \"%s\" holds no trained model (model.safetensors or a checkpoint) and "
                     "model.init_from is empty: train first, or name a Hugging Face model folder or checkpoint in "
                     "model.init_from", cfg->run.dir);
            return -1;
        }
    }
    if (!path[0] && cfg->model.init_from[0]) {
        snprintf(path, pathlen, "%s", cfg->model.init_from);
        *is_ckpt = is_file(path);
    }
    if (*is_ckpt) return ct_ckpt_read_config(path, mc, err, errlen);
    if (path[0]) return ct_hf_read_config(path, mc, err, errlen);
    *mc = (ct_model_config){.arch = ct_arch_by_name(cfg->model.arch), .vocab_size = cfg->model.vocab_size,
                            .max_seq_len = cfg->model.max_seq_len, .n_layer = cfg->model.n_layer,
                            .n_head = cfg->model.n_head, .n_embd = cfg->model.n_embd, .norm_eps = 1e-5f};
    if (!strcmp(cfg->model.arch, "llama")) {
        mc->n_kv_head = cfg->model.n_kv_head;
        mc->n_inner = cfg->model.n_inner;
        mc->rope_theta = cfg->model.rope_theta;
        mc->norm_eps = (float)cfg->model.norm_eps;
        mc->untied = !cfg->model.tie_embeddings;
    }
    return ct_model_config_check(mc, err, errlen);
}

const char *ct_run_hf_source(const ct_config *cfg)
{
    struct stat sb;
    const char *dir = cfg->model.init_from;
    return dir[0] && stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode) ? dir : NULL;
}

static int has_tokenizer_json(const char *dir)
{
    char path[CT_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    return dir[0] && is_file(path);
}

int ct_run_tokenizer(const ct_config *cfg, const char *dir, ct_tokenizer **tok, char *err, size_t errlen)
{
    *tok = NULL;
    const char *from = cfg->data.tokenizer;
    if (!strcmp(from, "bytes")) from = "";
    else if (from[0]) {
        if (ct_tokenizer_load(tok, from, err, errlen) == 0) return 0;
        size_t n = strlen(err); /* say which key named it */
        snprintf(err + n, errlen - n, " (data.tokenizer)");
        return -1;
    } else if (dir && has_tokenizer_json(dir)) from = dir;
    else if (ct_run_hf_source(cfg) && has_tokenizer_json(cfg->model.init_from)) from = cfg->model.init_from;
    if (!from[0]) {
        *tok = (ct_tokenizer *)ct_tokenizer_bytes(); /* static; ct_tokenizer_free leaves it */
        return 0;
    }
    return ct_tokenizer_load(tok, from, err, errlen);
}

int ct_run_chat_template(const ct_config *cfg, const char *dir, const ct_tokenizer *tok, ct_chat_template **tpl,
                         char *err, size_t errlen)
{
    char buf[CT_PATH_MAX + 64] = "";
    const char *cands[3] = {cfg->data.tokenizer, dir ? dir : "", cfg->model.init_from};
    for (int i = 0; i < 3 && !buf[0]; i++) {
        if (!cands[i][0] || !strcmp(cands[i], "bytes")) continue;
        snprintf(buf, sizeof buf, "%s", cands[i]);
        if (is_file(buf)) { /* a tokenizer.json: its folder */
            char *slash = strrchr(buf, '/');
            if (slash) *slash = 0;
            else snprintf(buf, sizeof buf, ".");
        }
        if (!has_tokenizer_json(buf)) buf[0] = 0;
    }
    return ct_chat_template_load(tpl, buf, cfg->data.chat_template, tok, err, errlen);
}

int ct_run_check_dataset(const ct_tokenizer *tok, const char *key, const char *path, char *err, size_t errlen)
{
    ct_dataset *ds = NULL;
    if (ct_dataset_open(&ds, path, err, errlen)) return -1;
    const ct_dataset_meta *m = ct_dataset_meta_of(ds);
    char want[17];
    ct_tokenizer_digest_str(tok, want);
    int rc = 0;
    if (strcmp(m->digest, want)) {
        snprintf(err, errlen,
                 "%s: %s: made with tokenizer \"%s\" (digest %s, vocabulary %d), but the model speaks \"%s\" "
                 "(digest %s, vocabulary %d): prepare the data again with the model's tokenizer (ctrain prepare; "
                 "data.tokenizer names another)",
                 key, path, m->tokenizer, m->digest[0] ? m->digest : "none recorded", m->vocab_size,
                 ct_tokenizer_name(tok), want, ct_tokenizer_vocab_size(tok));
        rc = -1;
    }
    ct_dataset_close(ds);
    return rc;
}

const char *ct_run_side_files(const ct_config *cfg)
{
    static char dir[CT_PATH_MAX];
    const char *t = cfg->data.tokenizer;
    if (!t[0] || !strcmp(t, "bytes")) return ct_run_hf_source(cfg);
    snprintf(dir, sizeof dir, "%s", t);
    if (is_file(dir)) {
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
    }
    return dir;
}

int ct_run_lora(const ct_config *cfg) { return cfg->lora.targets[0] || cfg->lora.init_from[0]; }

/* Adds the config's adapters to m and fills them: for a trained model, from run.dir's PEFT
 * export or latest checkpoint; else from lora.init_from, or PEFT's fresh initialisation. */
static int add_adapters(const ct_config *cfg, ct_weights_source source, ct_model *m, int shards, ct_comm *comm,
                        char *from, size_t fromlen, char *err, size_t errlen)
{
    ct_lora_spec spec;
    if (ct_lora_spec_from_config(cfg, &spec, err, errlen) ||
        ct_lora_add(m, &spec, (uint64_t)cfg->run.seed, shards, err, errlen))
        return -1;
    char path[CT_PATH_MAX + 64], ckpt[CT_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", cfg->run.dir);
    size_t used = strlen(from);
    if (source == CT_WEIGHTS_TRAINED) {
        int latest = ct_ckpt_latest(cfg->run.dir, ckpt, sizeof ckpt, err, errlen);
        if (latest < 0) return -1;
        if (is_file(path)) {
            snprintf(from + used, fromlen - used, " + adapters %s", cfg->run.dir);
            return ct_lora_load_peft(m, cfg->run.dir, err, errlen);
        }
        if (latest) {
            snprintf(from + used, fromlen - used, " + adapters %s", ckpt);
            return ct_ckpt_read(ckpt, m, NULL, NULL, comm, err, errlen);
        }
        if (!cfg->lora.init_from[0]) {
            snprintf(err, errlen, "run.dir: \"%s\" holds no trained adapters (adapter_model.safetensors or a "
                     "checkpoint): train first, or name a PEFT adapter in lora.init_from", cfg->run.dir);
            return -1;
        }
    }
    if (cfg->lora.init_from[0]) {
        snprintf(from + used, fromlen - used, " + adapters %s", cfg->lora.init_from);
        return ct_lora_load_peft(m, cfg->lora.init_from, err, errlen);
    }
    snprintf(from + used, fromlen - used, " + new rank-%d adapters (%s)", spec.r, spec.targets);
    return 0;
}

int ct_run_model(const ct_config *cfg, ct_weights_source source, const ct_backend *be, ct_kctx *ctx, int B, int T,
                 int shards, int slice, ct_comm *comm, ct_model **out, char *from, size_t fromlen, char *err,
                 size_t errlen)
{
    *out = NULL;
    ct_model_config mc;
    int is_ckpt;
    if (ct_run_model_source(cfg, source, &mc, from, fromlen, &is_ckpt, err, errlen)) return -1;
    if (T > mc.max_seq_len) {
        snprintf(err, errlen, "data.seq_len: %d does not fit the model's %d positions%s%s", T, mc.max_seq_len,
                 from[0] ? " in " : "", from);
        return -1;
    }
    if (slice >= 0 ? ct_model_init_slice(out, &mc, be, ctx, B, T, shards, slice, err, errlen)
                   : ct_model_init(out, &mc, be, ctx, B, T, shards, err, errlen))
        return -1;
    int rc = 0;
    if (is_ckpt) rc = ct_ckpt_read(from, *out, NULL, NULL, comm, err, errlen);
    else if (from[0]) rc = ct_hf_load(*out, from, err, errlen);
    else {
        ct_model_init_weights(*out, (uint64_t)cfg->run.seed);
        snprintf(from, fromlen, "random init (seed %lld)", (long long)cfg->run.seed);
    }
    if (rc == 0 && ct_run_lora(cfg)) rc = add_adapters(cfg, source, *out, shards, comm, from, fromlen, err, errlen);
    if (rc) {
        ct_model_free(*out);
        *out = NULL;
    }
    return rc;
}

int ct_run_agree(ct_comm *comm, int rc, const char *err)
{
    int world = ct_comm_size(comm), rank = ct_comm_rank(comm);
    float *failed = calloc((size_t)world, sizeof(float));
    if (!failed) ct_run_die(comm, "out of memory");
    failed[rank] = rc == 0 ? 0 : rc == -2 ? 1 : 2; /* -2: failed only because another rank did */
    if (ct_comm_allgather(comm, failed, 1)) ct_run_die(comm, "communication failed");
    int first = -1; /* the lowest rank with a failure of its own, else the lowest failing rank */
    for (int r = 0; r < world && first < 0; r++)
        if (failed[r] == 2) first = r;
    for (int r = 0; r < world && first < 0; r++)
        if (failed[r] == 1) first = r;
    free(failed);
    if (first < 0) return 0;
    if (first == rank) {
        if (world > 1) fprintf(stderr, "ctrain: error: rank %d: %s\n", rank, err);
        else fprintf(stderr, "ctrain: error: %s\n", err);
    }
    return -1;
}

_Noreturn void ct_run_die(ct_comm *comm, const char *msg)
{
    if (ct_comm_size(comm) > 1) fprintf(stderr, "ctrain: error: rank %d: %s\n", ct_comm_rank(comm), msg);
    else fprintf(stderr, "ctrain: error: %s\n", msg);
    fflush(stderr);
    ct_comm_abort(comm, 1);
}
