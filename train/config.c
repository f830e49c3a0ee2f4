/* config.c — the key table (defaults, ranges, help), JSON loading, overrides, validation. */
#include "config.h"

#include "json_check.h"
#include "json_file.h"
#include "model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef enum { K_INT, K_I64, K_REAL, K_STR, K_BOOL } key_type;

typedef struct {
    const char *key;      /* "section.name" */
    key_type type;
    size_t offset, size;  /* within ct_config; size for strings */
    const char *def;      /* default, as JSON text */
    double min, max;      /* numbers: inclusive range */
    const char *choices;  /* strings: "a|b|c", or NULL for free text */
    const char *help;
} key_info;

#define F(field) offsetof(ct_config, field), sizeof(((ct_config *)0)->field)
#define BIG 1e15

static const key_info keys[] = {
    {"run.dir", K_STR, F(run.dir), "\"runs/default\"", 0, 0, NULL, "run directory: metrics.jsonl, ctrain.json, final weights"},
    {"run.seed", K_I64, F(run.seed), "1337", 0, 9007199254740991.0, NULL, "seed for initialisation, shuffling and sampling"},
    {"run.device", K_STR, F(run.device), "\"auto\"", 0, 0, "auto|cpu|cuda", "compute backend; auto picks CUDA where a GPU is found"},
    {"model.init_from", K_STR, F(model.init_from), "\"\"", 0, 0, NULL, "\"\": random init from the keys below; else a Hugging Face model folder (gpt2, llama, mistral, qwen2: its config.json wins) or a checkpoint"},
    {"model.arch", K_STR, F(model.arch), "\"gpt2\"", 0, 0, "gpt2|llama", "family of a random init: gpt2 (LayerNorm, GELU, learned positions) or llama (RMSNorm, SwiGLU, RoPE, grouped-query attention)"},
    {"model.vocab_size", K_INT, F(model.vocab_size), "257", 1, CT_MAX_VOCAB, NULL, "vocabulary size (257: the byte tokenizer)"},
    {"model.max_seq_len", K_INT, F(model.max_seq_len), "256", 1, 1 << 20, NULL, "positions the model has (n_positions)"},
    {"model.n_layer", K_INT, F(model.n_layer), "4", 1, CT_MAX_LAYERS, NULL, "transformer blocks"},
    {"model.n_head", K_INT, F(model.n_head), "4", 1, CT_MAX_HEADS, NULL, "attention heads"},
    {"model.n_embd", K_INT, F(model.n_embd), "128", 1, CT_MAX_WIDTH, NULL, "width; a multiple of n_head"},
    {"model.n_kv_head", K_INT, F(model.n_kv_head), "0", 0, CT_MAX_HEADS, NULL, "llama: key/value heads (grouped-query attention; 0: n_head)"},
    {"model.n_inner", K_INT, F(model.n_inner), "0", 0, CT_MAX_INNER, NULL, "llama: the MLP's width (intermediate_size; 0: 4 * n_embd)"},
    {"model.rope_theta", K_REAL, F(model.rope_theta), "10000", 1, 1e12, NULL, "llama: RoPE base"},
    {"model.norm_eps", K_REAL, F(model.norm_eps), "1e-05", 1e-12, 1, NULL, "llama: RMSNorm epsilon (GPT-2 uses 1e-5)"},
    {"model.tie_embeddings", K_BOOL, F(model.tie_embeddings), "true", 0, 1, NULL, "llama: the LM head shares the embedding (GPT-2 always does)"},
    {"model.recompute", K_STR, F(model.recompute), "\"none\"", 0, 0, "none|block", "activation memory: none keeps every block's activations for the backward; block keeps only each block's input and recomputes them just before the block's backward (each block's forward runs again, less its MLP's output projection; the same losses and gradients)"},
    {"model.loss_chunk", K_INT, F(model.loss_chunk), "-1", -1, 1 << 30, NULL, "tokens per chunk of the LM head and loss, so only a chunk's logits exist at once (rounded up to a multiple of 256); 0: the whole micro-batch at once; -1: chunks of at most 256 MiB of logits"},
    {"data.text", K_STR, F(data.text), "\"\"", 0, 0, NULL, "what `ctrain prepare` turns into data.train and data.val: a text file, a .jsonl file (data.text_field, or supervised prompt/response or messages examples), a folder or a glob of .txt and .jsonl files"},
    {"data.text_field", K_STR, F(data.text_field), "\"text\"", 0, 0, NULL, "the string field of each .jsonl line that holds a document's text"},
    {"data.tokenizer", K_STR, F(data.tokenizer), "\"\"", 0, 0, NULL, "tokenizer of `prepare` and the model: a folder or a tokenizer.json; \"\": model.init_from's tokenizer.json, else bytes; \"bytes\": the byte-level tokenizer"},
    {"data.chat_template", K_STR, F(data.chat_template), "\"\"", 0, 0, NULL, "template of messages examples: \"\" (the model's own, recognised by its markers; plain without one), chatml, llama3, llama2, mistral, gemma or plain"},
    {"data.train_on_prompt", K_BOOL, F(data.train_on_prompt), "false", 0, 1, NULL, "supervised data: the loss covers the prompts and templates too, not only the assistant's turns"},
    {"data.packing", K_STR, F(data.packing), "\"\"", 0, 0, "|masked|plain|none", "how `prepare` packs examples into sequences: masked (each attends only to itself, positions restart; the default for supervised data), plain (the default for text), none (one example per sequence, padded)"},
    {"data.val_fraction", K_REAL, F(data.val_fraction), "0.05", 1e-9, 1 - 1e-9, NULL, "share of data.text that becomes the val set: of its documents (at least one), or of its bytes when it is one text file"},
    {"data.prepare_threads", K_INT, F(data.prepare_threads), "0", 0, 4096, NULL, "`prepare`: worker threads per rank (0: the node's online cores shared among its ranks)"},
    {"data.prepare_chunk_kb", K_INT, F(data.prepare_chunk_kb), "16384", 1, 1 << 22, NULL, "`prepare`: KiB of text per chunk, the unit of work and of memory (a shard of each set per chunk)"},
    {"data.train", K_STR, F(data.train), "\"\"", 0, 0, NULL, "HDF5 token dataset to train on"},
    {"data.val", K_STR, F(data.val), "\"\"", 0, 0, NULL, "HDF5 token dataset to evaluate on"},
    {"data.seq_len", K_INT, F(data.seq_len), "128", 1, 1 << 20, NULL, "tokens per sequence (at most model.max_seq_len)"},
    {"data.micro_batch", K_INT, F(data.micro_batch), "8", 1, 1 << 20, NULL, "sequences per micro-batch per rank"},
    {"optim.lr", K_REAL, F(optim.lr), "1e-3", 0, 10, NULL, "peak learning rate"},
    {"optim.min_lr", K_REAL, F(optim.min_lr), "1e-4", 0, 10, NULL, "learning rate at the end of the decay"},
    {"optim.schedule", K_STR, F(optim.schedule), "\"cosine\"", 0, 0, "cosine|linear|constant", "decay after warmup"},
    {"optim.warmup_steps", K_INT, F(optim.warmup_steps), "100", 0, 1e9, NULL, "linear warmup from 0 to optim.lr"},
    {"optim.max_steps", K_INT, F(optim.max_steps), "1000", 1, 1e9, NULL, "optimizer steps in the run"},
    {"optim.weight_decay", K_REAL, F(optim.weight_decay), "0.1", 0, 10, NULL, "AdamW decoupled weight decay, on matrices and embeddings only"},
    {"optim.beta1", K_REAL, F(optim.beta1), "0.9", 0, 1 - 1e-12, NULL, "AdamW beta1"},
    {"optim.beta2", K_REAL, F(optim.beta2), "0.95", 0, 1 - 1e-12, NULL, "AdamW beta2"},
    {"optim.eps", K_REAL, F(optim.eps), "1e-8", 0, 1, NULL, "AdamW epsilon"},
    {"optim.skip_nonfinite", K_INT, F(optim.skip_nonfinite), "0", 0, 1e9, NULL, "steps whose loss or gradient norm is NaN or Inf that may be skipped (not applied, logged) before the run stops with an error; 0: the first stops it"},
    {"optim.grad_clip", K_REAL, F(optim.grad_clip), "1.0", 0, BIG, NULL, "clip the global gradient norm to this; 0: no clipping"},
    {"parallel.grad_accum", K_INT, F(parallel.grad_accum), "1", 1, 1 << 20, NULL, "micro-batches per step on each rank"},
    {"parallel.overlap_comm", K_BOOL, F(parallel.overlap_comm), "true", 0, 1, NULL, "reduce each layer's gradients while backward goes on (last micro-batch of a step)"},
    {"parallel.zero_stage", K_INT, F(parallel.zero_stage), "1", 0, 3, NULL, "0: all-reduce, full optimizer state everywhere; 1: optimizer state sharded across ranks; 2: and gradients; 3: and weights (each block gathered when used)"},
    {"lora.targets", K_STR, F(lora.targets), "\"\"", 0, 0, NULL, "LoRA on these linear layers (PEFT target_modules, comma-separated, e.g. \"c_attn,c_proj\", or \"all-linear\"); \"\": full training"},
    {"lora.r", K_INT, F(lora.r), "8", 1, 1 << 16, NULL, "adapter rank"},
    {"lora.alpha", K_REAL, F(lora.alpha), "16", 1e-9, 1e9, NULL, "adapter scale numerator: scale = alpha / r"},
    {"lora.dropout", K_REAL, F(lora.dropout), "0", 0, 1 - 1e-9, NULL, "dropout on the adapter's input, in [0, 1)"},
    {"lora.rslora", K_BOOL, F(lora.rslora), "false", 0, 1, NULL, "rank-stabilised scale alpha / sqrt(r)"},
    {"lora.init_from", K_STR, F(lora.init_from), "\"\"", 0, 0, NULL, "a PEFT adapter folder to continue training (its adapter_config.json sets r, alpha, targets)"},
    {"checkpoint.every", K_INT, F(checkpoint.every), "0", 0, 1e9, NULL, "save a checkpoint every N steps (0: only at the end and when preempted)"},
    {"checkpoint.keep", K_INT, F(checkpoint.keep), "2", 1, 1e6, NULL, "newest checkpoints kept in run.dir"},
    {"checkpoint.allow_new_data", K_BOOL, F(checkpoint.allow_new_data), "false", 0, 1, NULL, "a resume may change data.train, data.seq_len or the global batch (micro_batch x grad_accum x ranks): the data then starts again from its beginning (another batch: where the epoch stood); false: such a resume is refused"},
    {"log.every", K_INT, F(log.every), "10", 1, 1e9, NULL, "a log line every N steps (metrics.jsonl gets every step)"},
    {"log.eval_every", K_INT, F(log.eval_every), "200", 0, 1e9, NULL, "evaluate on data.val every N steps (0: only at the end)"},
    {"log.eval_batches", K_INT, F(log.eval_batches), "20", 0, 1e9, NULL, "micro-batches per rank per evaluation (0: the whole val set)"},
    {"log.peak_tflops", K_REAL, F(log.peak_tflops), "0", 0, 1e6, NULL, "peak TFLOP/s of one rank's device, for MFU (0: a known GPU's dense bf16 peak; on the CPU no MFU)"},
    {"sample.prompt", K_STR, F(sample.prompt), "\"\"", 0, 0, NULL, "text the sample continues"},
    {"sample.temperature", K_REAL, F(sample.temperature), "0.8", 0, 100, NULL, "softmax temperature (0: greedy)"},
    {"sample.top_k", K_INT, F(sample.top_k), "40", 0, 1 << 24, NULL, "sample from the k most likely tokens (0: all)"},
    {"sample.format", K_STR, F(sample.format), "\"text\"", 0, 0, "text|ids", "text: the prompt and output are text in the model's tokenizer (bytes without one); ids: token ids separated by spaces"},
    {"sample.system", K_STR, F(sample.system), "\"\"", 0, 0, NULL, "`ctrain chat`: the system message every conversation starts with (\"\": none)"},
    {"sample.max_tokens", K_INT, F(sample.max_tokens), "256", 1, 1 << 24, NULL, "tokens to generate"},
};
#define NKEYS (int)(sizeof keys / sizeof keys[0])

static const key_info *find_key(const char *key)
{
    for (int i = 0; i < NKEYS; i++)
        if (!strcmp(keys[i].key, key)) return &keys[i];
    return NULL;
}

/* Levenshtein distance, for "did you mean" (keys are short). */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    int d[64][64];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    return d[la][lb];
}

/* The valid key (or, with sections_only, section) nearest to `key`. */
static const char *nearest(const char *key, int sections_only)
{
    const char *best = NULL;
    int best_d = 1 << 30;
    char section[64];
    for (int i = 0; i < NKEYS; i++) {
        const char *cand = keys[i].key;
        if (sections_only) {
            size_t n = (size_t)(strchr(cand, '.') - cand);
            memcpy(section, cand, n);
            section[n] = 0;
            cand = section;
        }
        /* a key that contains what was typed (warmup -> warmup_steps) beats a short edit */
        int d = (strstr(cand, key) || strstr(key, cand)) ? 1 : edit_distance(key, cand);
        if (d < best_d) best_d = d, best = keys[i].key;
    }
    if (sections_only && best) {
        static _Thread_local char out[64];
        size_t n = (size_t)(strchr(best, '.') - best);
        memcpy(out, best, n);
        out[n] = 0;
        return out;
    }
    return best;
}

/* Sets one key from a JSON value. `where` names the source for messages. */
static int set_value(ct_config *cfg, const key_info *k, const cJSON *v, const char *where, char *err, size_t errlen)
{
    char *dst = (char *)cfg + k->offset;
    if (k->type == K_STR) {
        if (!cJSON_IsString(v)) {
            snprintf(err, errlen, "%s: %s: expected a string", where, k->key);
            return -1;
        }
        if (strlen(v->valuestring) >= k->size) {
            snprintf(err, errlen, "%s: %s: longer than %zu characters", where, k->key, k->size - 1);
            return -1;
        }
        if (k->choices) {
            size_t n = strlen(v->valuestring);
            const char *c = k->choices;
            int ok = 0;
            while (*c && !ok) {
                const char *bar = strchr(c, '|');
                size_t len = bar ? (size_t)(bar - c) : strlen(c);
                ok = len == n && !strncmp(c, v->valuestring, n);
                c += len + (bar != NULL);
            }
            if (!ok) {
                snprintf(err, errlen, "%s: %s: \"%s\" is not one of %s", where, k->key, v->valuestring, k->choices);
                return -1;
            }
        }
        strcpy(dst, v->valuestring);
        return 0;
    }
    if (k->type == K_BOOL) {
        if (!cJSON_IsBool(v)) {
            snprintf(err, errlen, "%s: %s: expected true or false", where, k->key);
            return -1;
        }
        *(int *)dst = cJSON_IsTrue(v);
        return 0;
    }
    if (!cJSON_IsNumber(v)) {
        snprintf(err, errlen, "%s: %s: expected a number", where, k->key);
        return -1;
    }
    double x = v->valuedouble;
    if ((k->type == K_INT || k->type == K_I64) && x != floor(x)) {
        snprintf(err, errlen, "%s: %s: expected a whole number, got %g", where, k->key, x);
        return -1;
    }
    if (!(x >= k->min && x <= k->max)) {
        snprintf(err, errlen, "%s: %s: %g is out of range [%.10g, %.10g]", where, k->key, x, k->min, k->max);
        return -1;
    }
    if (k->type == K_INT) *(int *)dst = (int)x;
    else if (k->type == K_I64) *(int64_t *)dst = (int64_t)x;
    else *(double *)dst = x;
    return 0;
}

void ct_config_defaults(ct_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    char err[256];
    for (int i = 0; i < NKEYS; i++) {
        cJSON *v = cJSON_Parse(keys[i].def);
        if (!v || set_value(cfg, &keys[i], v, "defaults", err, sizeof err)) abort(); /* a broken table */
        cJSON_Delete(v);
    }
}

static int apply_json(ct_config *cfg, const cJSON *root, const char *path, char *err, size_t errlen)
{
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: expected a JSON object of sections (run, model, data, optim, parallel, lora, checkpoint, log, sample)",
                 path);
        return -1;
    }
    for (const cJSON *sec = root->child; sec; sec = sec->next) {
        char key[128];
        snprintf(key, sizeof key, "%s.", sec->string);
        int known = 0;
        for (int i = 0; i < NKEYS && !known; i++) known = !strncmp(keys[i].key, key, strlen(key));
        if (!known) {
            snprintf(err, errlen, "%s: unknown section '%s' (did you mean '%s'?)", path, sec->string,
                     nearest(sec->string, 1));
            return -1;
        }
        if (!cJSON_IsObject(sec)) {
            snprintf(err, errlen, "%s: %s: expected an object of keys", path, sec->string);
            return -1;
        }
        for (const cJSON *item = sec->child; item; item = item->next) {
            snprintf(key, sizeof key, "%s.%s", sec->string, item->string);
            const key_info *k = find_key(key);
            if (!k) {
                snprintf(err, errlen, "%s: unknown key '%s' (did you mean '%s'?)", path, key, nearest(key, 0));
                return -1;
            }
            if (set_value(cfg, k, item, path, err, errlen)) return -1;
        }
    }
    return 0;
}

static int apply_override(ct_config *cfg, const char *ov, char *err, size_t errlen)
{
    const char *eq = strchr(ov, '=');
    char key[128], where[1200];
    snprintf(where, sizeof where, "--set %s", ov);
    if (!eq || eq == ov || (size_t)(eq - ov) >= sizeof key) {
        snprintf(err, errlen, "%s: expected key.path=value", where);
        return -1;
    }
    memcpy(key, ov, (size_t)(eq - ov));
    key[eq - ov] = 0;
    const key_info *k = find_key(key);
    if (!k) {
        snprintf(err, errlen, "%s: unknown key '%s' (did you mean '%s'?)", where, key, nearest(key, 0));
        return -1;
    }
    /* a JSON value, or else a bare string (--set run.dir=runs/x) */
    cJSON *v = cJSON_Parse(eq + 1);
    if (v && ct_json_check(eq + 1, strlen(eq + 1), v, where, err, errlen)) {
        cJSON_Delete(v);
        return -1;
    }
    if (!v || (k->type == K_STR && !cJSON_IsString(v))) {
        cJSON_Delete(v);
        v = cJSON_CreateString(eq + 1);
    }
    int rc = set_value(cfg, k, v, where, err, errlen);
    cJSON_Delete(v);
    return rc;
}

int ct_config_parse(ct_config *cfg, const char *text, const char *name, char *err, size_t errlen)
{
    ct_config_defaults(cfg);
    cJSON *root = cJSON_Parse(text);
    if (!root) return snprintf(err, errlen, "%s: malformed JSON", name), -1;
    int rc = ct_json_check(text, strlen(text), root, name, err, errlen);
    if (rc == 0) rc = apply_json(cfg, root, name, err, errlen);
    if (rc == 0) rc = ct_config_check(cfg, err, errlen);
    cJSON_Delete(root);
    return rc;
}

int ct_config_load(ct_config *cfg, const char *path, const char *const *overrides, int noverrides, char *err,
                   size_t errlen)
{
    ct_config_defaults(cfg);
    cJSON *root = ct_json_load(path, 1 << 20, err, errlen);
    if (!root) return -1;
    int rc = -1;
    if (apply_json(cfg, root, path, err, errlen) == 0) {
        rc = 0;
        for (int i = 0; i < noverrides && rc == 0; i++) rc = apply_override(cfg, overrides[i], err, errlen);
        if (rc == 0) rc = ct_config_check(cfg, err, errlen);
        if (rc && !strstr(err, path) && strncmp(err, "--set", 5)) {
            char inner[1024];
            snprintf(inner, sizeof inner, "%s", err);
            snprintf(err, errlen, "%s: %s", path, inner);
        }
    }
    cJSON_Delete(root);
    return rc;
}

int ct_config_check(const ct_config *c, char *err, size_t errlen)
{
    if (c->model.n_kv_head && c->model.n_head % c->model.n_kv_head) {
        snprintf(err, errlen, "model.n_kv_head: %d does not divide model.n_head (%d)", c->model.n_kv_head,
                 c->model.n_head);
        return -1;
    }
    if (c->model.n_embd % c->model.n_head) {
        snprintf(err, errlen, "model.n_embd: %d is not a multiple of model.n_head (%d)", c->model.n_embd,
                 c->model.n_head);
        return -1;
    }
    if (c->optim.warmup_steps > c->optim.max_steps) {
        snprintf(err, errlen, "optim.warmup_steps: %d is more than optim.max_steps (%d)", c->optim.warmup_steps,
                 c->optim.max_steps);
        return -1;
    }
    if (c->optim.min_lr > c->optim.lr) {
        snprintf(err, errlen, "optim.min_lr: %g is above optim.lr (%g)", c->optim.min_lr, c->optim.lr);
        return -1;
    }
    if ((c->lora.targets[0] || c->lora.init_from[0]) && !c->model.init_from[0]) {
        snprintf(err, errlen, "%s: LoRA fine-tunes a base model: name it in model.init_from",
                 c->lora.targets[0] ? "lora.targets" : "lora.init_from");
        return -1;
    }
    if (!c->model.init_from[0] && c->data.seq_len > c->model.max_seq_len) {
        snprintf(err, errlen, "data.seq_len: %d does not fit model.max_seq_len (%d)", c->data.seq_len,
                 c->model.max_seq_len);
        return -1;
    }
    return 0;
}

char *ct_config_to_json(const ct_config *cfg, int pretty)
{
    cJSON *root = cJSON_CreateObject();
    for (int i = 0; i < NKEYS && root; i++) {
        const key_info *k = &keys[i];
        char section[64];
        const char *dot = strchr(k->key, '.');
        snprintf(section, sizeof section, "%.*s", (int)(dot - k->key), k->key);
        cJSON *sec = cJSON_GetObjectItemCaseSensitive(root, section);
        if (!sec) sec = cJSON_AddObjectToObject(root, section);
        const char *src = (const char *)cfg + k->offset;
        if (k->type == K_STR) cJSON_AddStringToObject(sec, dot + 1, src);
        else if (k->type == K_INT) cJSON_AddNumberToObject(sec, dot + 1, *(const int *)src);
        else if (k->type == K_I64) cJSON_AddNumberToObject(sec, dot + 1, (double)*(const int64_t *)src);
        else if (k->type == K_BOOL) cJSON_AddBoolToObject(sec, dot + 1, *(const int *)src);
        else cJSON_AddNumberToObject(sec, dot + 1, *(const double *)src);
    }
    char *text = !root ? NULL : pretty ? cJSON_Print(root) : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

void ct_config_describe(FILE *f)
{
    static const char *const type_names[] = {"int", "int", "number", "string", "bool"};
    fprintf(f, "config keys (JSON sections; override any with --set key=value):\n");
    for (int i = 0; i < NKEYS; i++) {
        const key_info *k = &keys[i];
        fprintf(f, "  %-20s %-7s default %-16s %s", k->key, type_names[k->type], k->def, k->help);
        if (k->choices) fprintf(f, " (%s)", k->choices);
        fputc('\n', f);
    }
}
