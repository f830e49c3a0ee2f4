/* test_hf_gpt2.c — Hugging Face folders: save/load round trip and every malformed-input case
 * giving a clear error (file and field or tensor named) instead of a crash. Also built with
 * AddressSanitizer (test_hf_gpt2_asan). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "model.h"
#include "hf_model.h"
#include "safetensors.h"

static char tmpdir[64];
static const ct_backend *be;
static ct_kctx *ctx;

static const ct_model_config tiny = {.vocab_size = 13, .max_seq_len = 8, .n_layer = 2, .n_head = 2, .n_embd = 8,
                                    .norm_eps = 1e-5f};

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); exit(2); }
    fputs(text, f);
    fclose(f);
}

static char *subdir(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    mkdir(path, 0777);
    return path;
}

/* Reads the config of dir and expects an error mentioning every string in `needles`. */
static void expect_config_error(const char *dir, const char *const *needles)
{
    ct_model_config cfg;
    char err[1024] = "";
    int rc = ct_hf_read_config(dir, &cfg, err, sizeof err);
    CHECK(rc == -1);
    for (; *needles; needles++) {
        if (!strstr(err, *needles)) {
            fprintf(stderr, "  error message \"%s\" lacks \"%s\"\n", err, *needles);
            ct_test_failures++;
        }
    }
}

static ct_model *make_model(const ct_model_config *cfg, uint64_t seed)
{
    ct_model *m = NULL;
    char err[512];
    if (ct_model_init(&m, cfg, be, ctx, 1, cfg->max_seq_len, 1, err, sizeof err)) {
        fprintf(stderr, "init: %s\n", err);
        exit(2);
    }
    ct_model_init_weights(m, seed);
    return m;
}

static void expect_load_error(ct_model *m, const char *dir, const char *needle1, const char *needle2)
{
    char err[1024] = "";
    CHECK(ct_hf_load(m, dir, err, sizeof err) == -1);
    if (!strstr(err, needle1) || (needle2 && !strstr(err, needle2))) {
        fprintf(stderr, "  error message \"%s\" lacks \"%s\" / \"%s\"\n", err, needle1, needle2 ? needle2 : "");
        ct_test_failures++;
    }
}

static void test_round_trip(void)
{
    ct_model *a = make_model(&tiny, 1), *b = make_model(&tiny, 2);
    char err[1024];
    char *dir = subdir("roundtrip");
    CHECK(ct_hf_save(a, dir, NULL, 0, err, sizeof err) == 0);
    ct_model_config cfg;
    CHECK(ct_hf_read_config(dir, &cfg, err, sizeof err) == 0);
    ct_model_config want = tiny;
    CHECK(ct_model_config_check(&want, err, sizeof err) == 0);
    CHECK(ct_model_config_same(&cfg, &want));
    CHECK(memcmp(ct_model_params(a), ct_model_params(b), ct_model_numel(a) * 4) != 0);
    CHECK(ct_hf_load(b, dir, err, sizeof err) == 0);
    CHECK(!memcmp(ct_model_params(a), ct_model_params(b), ct_model_numel(a) * 4));

    /* Conv1D weights are stored transposed: [in, out] */
    ct_safetensors *st = NULL;
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(ct_st_open(&st, path, err, sizeof err) == 0);
    if (st) {
        const ct_st_tensor *t = ct_st_find(st, "transformer.h.1.mlp.c_fc.weight");
        CHECK(t && t->ndim == 2 && t->shape[0] == tiny.n_embd && t->shape[1] == 4 * tiny.n_embd);
        const ct_param *p = ct_model_find(a, "transformer.h.1.mlp.c_fc.weight");
        float *w = calloc(t ? t->numel : 1, 4);
        if (t && p && ct_st_read_f32(st, t, w, t->numel, err, sizeof err) == 0) {
            const float *mine = (const float *)ct_model_params(a) + p->offset; /* [4C, C] */
            CHECK(w[1 * 4 * tiny.n_embd + 5] == mine[5 * tiny.n_embd + 1]);
        }
        free(w);
        CHECK(ct_st_find(st, "lm_head.weight") == NULL); /* tied: not written, as transformers does */
        CHECK(ct_st_metadata(st, "format") && !strcmp(ct_st_metadata(st, "format"), "pt"));
        ct_st_close(st);
    }
    ct_model_free(a);
    ct_model_free(b);
}

/* A folder whose tensors are named as GPT2Model saves them (no "transformer." prefix),
 * with the attention-mask buffers older files carry. */
static void test_unprefixed_names(void)
{
    ct_model *a = make_model(&tiny, 3), *b = make_model(&tiny, 4);
    char err[1024];
    char *src = strdup(subdir("prefixed"));
    CHECK(ct_hf_save(a, src, NULL, 0, err, sizeof err) == 0);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    ct_safetensors *st = NULL;
    CHECK(ct_st_open(&st, path, err, sizeof err) == 0);
    int n = st ? ct_st_count(st) : 0;
    ct_st_entry *e = calloc((size_t)n + 1, sizeof *e);
    float **data = calloc((size_t)n + 1, sizeof *data);
    char **names = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        const ct_st_tensor *t = ct_st_at(st, i);
        data[i] = malloc(t->numel * 4);
        ct_st_read_f32(st, t, data[i], t->numel, err, sizeof err);
        names[i] = strdup(t->name + strlen("transformer."));
        e[i].name = names[i];
        e[i].data = data[i];
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof e[i].shape);
    }
    float mask[4] = {1, 0, 1, 1};
    data[n] = mask;
    e[n] = (ct_st_entry){.name = "h.0.attn.bias", .data = mask, .ndim = 2, .shape = {2, 2}};
    char *dst = subdir("unprefixed");
    snprintf(path, sizeof path, "%s/model.safetensors", dst);
    CHECK(ct_st_write(path, e, n + 1, CT_DT_F32, NULL, err, sizeof err) == 0);
    CHECK(ct_hf_load(b, dst, err, sizeof err) == 0);
    CHECK(!memcmp(ct_model_params(a), ct_model_params(b), ct_model_numel(a) * 4));

    /* the same folder with one tensor dropped, then with one renamed */
    snprintf(path, sizeof path, "%s/model.safetensors", dst);
    CHECK(ct_st_write(path, e + 1, n, CT_DT_F32, NULL, err, sizeof err) == 0);
    expect_load_error(b, dst, "tensor 'transformer.wte.weight'", "missing");
    e[0].name = "wte.weights";
    CHECK(ct_st_write(path, e, n, CT_DT_F32, NULL, err, sizeof err) == 0);
    expect_load_error(b, dst, "tensor 'wte.weights'", "not part of");
    /* both spellings of one tensor */
    e[0].name = names[0];
    e[n] = e[1];
    e[n].name = "transformer.wpe.weight";
    CHECK(ct_st_write(path, e, n + 1, CT_DT_F32, NULL, err, sizeof err) == 0);
    expect_load_error(b, dst, "wpe.weight", "twice");

    for (int i = 0; i < n; i++) free(data[i]), free(names[i]);
    free(data);
    free(names);
    free(e);
    free(src);
    ct_st_close(st);
    ct_model_free(a);
    ct_model_free(b);
}

static void test_shape_mismatch(void)
{
    ct_model_config wide = tiny;
    wide.n_embd = 12;
    ct_model *a = make_model(&tiny, 5), *b = make_model(&wide, 6);
    char err[1024];
    char *dir = subdir("mismatch");
    CHECK(ct_hf_save(a, dir, NULL, 0, err, sizeof err) == 0);
    expect_load_error(b, dir, "model.safetensors: tensor 'transformer.wte.weight'", "[13, 8]");
    ct_model_free(a);
    ct_model_free(b);
}

static void test_missing_and_unsupported_files(void)
{
    ct_model *m = make_model(&tiny, 7);
    char *dir = subdir("nofiles");
    static const char *const nocfg[] = {"nofiles/config.json", "cannot open", NULL};
    expect_config_error(dir, nocfg);
    expect_load_error(m, dir, "no model.safetensors", "index.json");
    write_file(dir, "model.safetensors.index.json", "{}");
    expect_load_error(m, dir, "index.json", "weight_map");
    /* a truncated weights file: the safetensors reader's error, naming the file */
    dir = subdir("truncated");
    char err[1024], path[600];
    CHECK(ct_hf_save(m, dir, NULL, 0, err, sizeof err) == 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat sb;
    stat(path, &sb);
    CHECK(truncate(path, sb.st_size / 2) == 0);
    expect_load_error(m, dir, "truncated/model.safetensors", NULL);
    ct_model_free(m);
}

/* A file's bytes, malloc'd (NULL when it cannot be read). */
static char *slurp(const char *path, long *n)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    *n = -1;
    if (f && fseek(f, 0, SEEK_END) == 0 && (*n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)*n + 1)) && fread(buf, 1, (size_t)*n, f) != (size_t)*n)
        free(buf), buf = NULL;
    if (f) fclose(f);
    return buf;
}

/* dir holds exactly the NULL-terminated names (in any order) */
static int holds_only(const char *dir, const char *const *names)
{
    int want = 0, found = 0;
    for (; names[want]; want++) {
        char path[600];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, names[want]);
        found += stat(path, &sb) == 0;
    }
    char cmd[700];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq %d", dir, want);
    return found == want && system(cmd) == 0;
}

/* A save that fails part-way (here a side file that cannot be copied: every file is written
 * before any is renamed) leaves the folder as it was: an earlier save's files byte-identical,
 * a fresh folder empty, no .tmp files. */
static void test_save_all_or_nothing(void)
{
    ct_model *a = make_model(&tiny, 21), *b = make_model(&tiny, 22);
    char err[1024] = "", path[600];
    char *side = strdup(subdir("side_bad"));
    write_file(side, "tokenizer_config.json", "{}");
    snprintf(path, sizeof path, "%s/tokenizer.json", side);
    mkdir(path, 0777); /* not a regular file: copying it fails */
    char *dir = strdup(subdir("saved_before"));
    CHECK(ct_hf_save(a, dir, NULL, 0, err, sizeof err) == 0);
    long n0, c0, n1, c1;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    char *w0 = slurp(path, &n0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *cfg0 = slurp(path, &c0);
    CHECK(ct_hf_save(b, dir, side, 0, err, sizeof err) == -1);
    CHECK(strstr(err, "tokenizer.json") != NULL);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    char *w1 = slurp(path, &n1);
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *cfg1 = slurp(path, &c1);
    CHECK(w0 && w1 && n0 == n1 && !memcmp(w0, w1, (size_t)n0));
    CHECK(cfg0 && cfg1 && c0 == c1 && !memcmp(cfg0, cfg1, (size_t)c0));
    CHECK(holds_only(dir, (const char *const[]){"model.safetensors", "config.json", NULL}));
    char *fresh = subdir("saved_fresh");
    err[0] = 0;
    CHECK(ct_hf_save(b, fresh, side, 0, err, sizeof err) == -1);
    CHECK(strstr(err, "tokenizer.json") != NULL);
    CHECK(holds_only(fresh, (const char *const[]){NULL}));
    free(w0);
    free(w1);
    free(cfg0);
    free(cfg1);
    free(dir);
    free(side);
    ct_model_free(a);
    ct_model_free(b);
}

static void test_bad_configs(void)
{
    static const struct {
        const char *json;
        const char *needle;
    } cases[] = {
        {"{\"n_embd\": 8,\n \"n_layer\": 2,,}", "line 2, column"},
        {"[1, 2]", "expected a JSON object"},
        {"{\"model_type\": \"falcon\", \"vocab_size\": 13}", "model_type: \"falcon\" is not a family"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 13}", "hidden_size: missing"},
#define LLAMA "\"model_type\": \"llama\", \"vocab_size\": 13, \"hidden_size\": 8, \"num_hidden_layers\": 2, " \
              "\"num_attention_heads\": 4, \"intermediate_size\": 16, \"max_position_embeddings\": 8"
        {"{" LLAMA ", \"hidden_act\": \"gelu\"}", "hidden_act: \"gelu\" is not supported"},
        {"{" LLAMA ", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 2}}",
         "rope_scaling.rope_type: \"yarn\" is not supported"},
        {"{" LLAMA ", \"rope_parameters\": {\"rope_type\": \"dynamic\"}}", "rope_parameters.rope_type"},
        {"{" LLAMA ", \"rope_parameters\": {\"rope_type\": \"llama3\", \"factor\": 8}}", "low_freq_factor"},
        {"{" LLAMA ", \"num_key_value_heads\": 3}", "num_key_value_heads: 3 does not divide"},
        {"{" LLAMA ", \"torch_dtype\": \"int8\"}", "torch_dtype: \"int8\" is not supported"},
        {"{" LLAMA ", \"pretraining_tp\": 2}", "pretraining_tp"},
        {"{\"model_type\": \"qwen2\", \"vocab_size\": 13, \"hidden_size\": 8, \"num_hidden_layers\": 2, "
         "\"num_attention_heads\": 4, \"intermediate_size\": 16, \"max_position_embeddings\": 8, "
         "\"use_sliding_window\": true, \"sliding_window\": 4, \"layer_types\": [\"sliding_attention\", "
         "\"full_attention\"]}", "layer_types"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_layer\": 2, \"n_head\": 2}", "n_embd: missing"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": \"8\", \"n_layer\": 2, \"n_head\": 2}",
         "n_embd: expected a positive integer"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 8.5, \"n_layer\": 2, \"n_head\": 2}",
         "n_embd: expected a positive integer"},
        {"{\"vocab_size\": -1, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2}", "vocab_size"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 9, \"n_layer\": 2, \"n_head\": 2}",
         "multiple of n_head"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2, "
         "\"activation_function\": \"relu\"}",
         "activation_function"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2, "
         "\"tie_word_embeddings\": false}",
         "tie_word_embeddings"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2, \"n_inner\": 7}",
         "n_inner"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2, "
         "\"layer_norm_epsilon\": -1}",
         "layer_norm_epsilon"},
        {"", "malformed JSON"},
        /* limits, before anything is sized: GPT-2's learned positions would be 1e9 x 8 floats */
        {"{\"vocab_size\": 13, \"n_positions\": 1000000000, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2}",
         "n_positions: 1000000000 is more than ctrain's limit of 16777216"},
        {"{\"vocab_size\": 13, \"n_positions\": 3e9, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2}",
         "n_positions: 3000000000 is more than ctrain's limit"},
        {"{\"vocab_size\": 1e300, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2}",
         "e+300 is more than ctrain's limit of 16777216"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 100000, \"n_head\": 2}",
         "n_layer: 100000 is more than ctrain's limit of 1024"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 131072, \"n_layer\": 2, \"n_head\": 2}",
         "n_embd: 131072 is more than ctrain's limit of 65536"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 4096}",
         "n_head: 4096 is more than ctrain's limit of 1024"},
        {"{" LLAMA ", \"num_key_value_heads\": 2048}", "num_key_value_heads: 2048 is more than ctrain's limit"},
        {"{" LLAMA ", \"head_dim\": 1000000}", "head_dim: 1000000 is more than ctrain's limit of 65536"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 13, \"hidden_size\": 8, \"num_hidden_layers\": 2, "
         "\"num_attention_heads\": 4, \"intermediate_size\": 2000000, \"max_position_embeddings\": 8}",
         "intermediate_size: 2000000 is more than ctrain's limit of 1048576"},
        {"{\"model_type\": \"mistral\", \"vocab_size\": 13, \"hidden_size\": 8, \"num_hidden_layers\": 2, "
         "\"num_attention_heads\": 4, \"intermediate_size\": 16, \"max_position_embeddings\": 8, \"sliding_window\": 20000000}",
         "sliding_window: 20000000 is more than ctrain's limit of 16777216"},
        /* each key within its limit, their product not: an int would have overflowed (2^24 x 2^16 x 2) */
        {"{\"model_type\": \"llama\", \"vocab_size\": 16777216, \"hidden_size\": 65536, \"num_hidden_layers\": 1, "
         "\"num_attention_heads\": 512, \"intermediate_size\": 8, \"max_position_embeddings\": 8}",
         "makes more than ctrain's limit of 1099511627776 parameters"},
        /* what cJSON lets through */
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2, \"n_layer\": 3}",
         "n_layer: key given twice"},
        {"{\"vocab_size\": 13, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2, "
         "\"activation_function\": \"gelu_new\\u0000relu\"}",
         "activation_function: holds \\u0000"},
    };
    char *dir = subdir("badcfg");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(dir, "config.json", cases[i].json);
        const char *needles[] = {"badcfg/config.json", cases[i].needle, NULL};
        expect_config_error(dir, needles);
    }
    /* n_ctx is accepted for n_positions, as older configs spell it */
    write_file(dir, "config.json", "{\"vocab_size\": 13, \"n_ctx\": 8, \"n_embd\": 8, \"n_layer\": 2, \"n_head\": 2}");
    ct_model_config cfg;
    char err[512];
    CHECK(ct_hf_read_config(dir, &cfg, err, sizeof err) == 0 && cfg.max_seq_len == 8);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ct_hf_gpt2_XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 2; }
    be = ct_backend_cpu();
    ctx = be->kctx_init(0);
    test_round_trip();
    test_unprefixed_names();
    test_shape_mismatch();
    test_missing_and_unsupported_files();
    test_save_all_or_nothing();
    test_bad_configs();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    return ct_test_finish("test_hf_gpt2");
}
