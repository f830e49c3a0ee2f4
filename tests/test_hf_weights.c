/* test_hf_weights.c — Hugging Face weight folders: single-file round trips in F32/BF16/F16, sharded
 * writes split as transformers splits them and read back exactly, stale files of an earlier save
 * removed, every malformed folder refused with a message naming the file and the tensor or key,
 * write failures that leave no partial files, and the tokenizer side files. Also built under
 * ASan/UBSan (test_hf_weights_asan).
 *
 * With an argument, only writes the sharded sample folder there (for checking by hand that the
 * Python safetensors library and transformers read what ctrain writes). */
#define _XOPEN_SOURCE 700

#include "hf_weights.h"

#include "check.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#define ERRLEN 1024

static char root[256];

/* A path under the test's root folder; a ring of buffers so several can be live at once. */
static const char *P(const char *fmt, const char *a)
{
    static char ring[16][512];
    static int next;
    char *p = ring[next++ % 16], name[256];
    snprintf(name, sizeof name, fmt, a ? a : "");
    snprintf(p, 512, "%s/%s", root, name);
    return p;
}

/* A copy of a path that outlives P()'s ring of buffers. */
#define KEEP(var, path) \
    char var[600];      \
    snprintf(var, sizeof var, "%s", path)

static int exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

static void put_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

/* The file's bytes (NUL-terminated), or NULL. */
static char *get_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *b = malloc(1 << 20);
    size_t n = b ? fread(b, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (b)
        b[n] = '\0';
    if (len)
        *len = n;
    return b;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_rf(const char *path)
{
    if (exists(path))
        nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void fresh_dir(const char *path)
{
    rm_rf(path);
    if (mkdir(path, 0755) != 0) {
        perror(path);
        exit(2);
    }
}

/* Names of the files in dir, sorted, joined by spaces (".", ".." left out). */
static const char *listing(const char *dir)
{
    static char out[4096];
    char *names[256];
    int n = 0;
    DIR *d = opendir(dir);
    out[0] = '\0';
    if (!d)
        return out;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            names[n++] = strdup(e->d_name);
    closedir(d);
    for (int i = 0; i < n; i++) /* insertion sort: a handful of names */
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    for (int i = 0; i < n; i++) {
        size_t l = strlen(out);
        snprintf(out + l, sizeof out - l, "%s%s", i ? " " : "", names[i]);
        free(names[i]);
    }
    return out;
}

#define CHECK_LISTING(dir, want)                                                                     \
    do {                                                                                             \
        const char *got_ = listing(dir);                                                             \
        if (strcmp(got_, want))                                                                      \
            fprintf(stderr, "%s:%d: files in %s: \"%s\", want \"%s\"\n", __FILE__, __LINE__, dir, got_, \
                    want);                                                                           \
        CHECK(!strcmp(got_, want));                                                                  \
    } while (0)

/* ---- a model to write: tensors with known values, fetched one at a time ---- */

#define MAXT 8
typedef struct {
    int n;
    ct_hf_out_tensor t[MAXT];
    float *data[MAXT];
    size_t numel[MAXT];
    int calls[MAXT];
    int fail_at;        /* tensor whose fetch fails, or -1 */
    int fail_silently;  /* fail without filling err */
} model;

static void model_add(model *m, const char *name, int ndim, int64_t d0, int64_t d1, uint64_t *seed, int f16_exact)
{
    int i = m->n++;
    m->t[i].name = name;
    m->t[i].ndim = ndim;
    m->t[i].shape[0] = d0;
    m->t[i].shape[1] = d1;
    size_t numel = 1;
    for (int d = 0; d < ndim; d++)
        numel *= (size_t)m->t[i].shape[d];
    m->numel[i] = numel;
    m->data[i] = ct_test_alloc(numel);
    if (f16_exact) /* multiples of 1/256 in [-8, 8): exact in F16 (11 significant bits) and BF16 too when small */
        for (size_t k = 0; k < numel; k++)
            m->data[i][k] = (float)((int)(ct_test_rand_u64(seed) % 4096) - 2048) / 256.0f;
    else
        ct_test_fill(m->data[i], numel, seed, -3.0f, 3.0f);
}

static void model_free(model *m)
{
    for (int i = 0; i < m->n; i++)
        free(m->data[i]);
}

static int fetch(void *user, int i, float *dst, char *err, size_t errlen)
{
    model *m = user;
    if (i < 0 || i >= m->n)
        return -1;
    m->calls[i]++;
    if (i == m->fail_at) {
        if (!m->fail_silently)
            snprintf(err, errlen, "fetch: tensor '%s': the device is on fire", m->t[i].name);
        return -1;
    }
    memcpy(dst, m->data[i], m->numel[i] * sizeof(float));
    return 0;
}

static const char *const META[] = {"format", "pt", NULL};

/* Writes a model whose tensors were not fetched yet: must succeed, fetching each tensor once. */
static int write_fresh(const char *dir, model *m, ct_dtype dtype, uint64_t limit)
{
    char err[ERRLEN] = "";
    int rc = ct_hf_weights_write(dir, m->t, m->n, dtype, limit, fetch, m, META, err, sizeof err);
    if (rc)
        fprintf(stderr, "write %s: %s\n", dir, err);
    CHECK(rc == 0);
    for (int i = 0; i < m->n; i++)
        CHECK(m->calls[i] == 1);
    return rc;
}

/* Opens dir and checks every tensor of m: shape, stored dtype, values (rounded as dtype stores them,
 * which must come back bit-exact), and the shard holding it (want_file[i], a file name, or NULL). */
static void check_folder(const char *dir, const model *m, ct_dtype dtype, const char *const *want_file)
{
    ct_hf_weights *w = NULL;
    char err[ERRLEN] = "";
    int rc = ct_hf_weights_open(&w, dir, err, sizeof err);
    if (rc)
        fprintf(stderr, "open %s: %s\n", dir, err);
    CHECK(rc == 0 && w);
    if (rc)
        return;
    CHECK(ct_hf_weights_count(w) == m->n);
    CHECK(ct_hf_weights_dtype(w) == dtype);
    for (int i = 0; i < m->n; i++) {
        const ct_st_tensor *t = ct_hf_weights_find(w, m->t[i].name);
        CHECK(t != NULL);
        if (!t)
            continue;
        CHECK(!strcmp(t->name, m->t[i].name));
        CHECK(t->dtype == dtype && t->ndim == m->t[i].ndim && t->numel == m->numel[i]);
        for (int d = 0; d < t->ndim; d++)
            CHECK(t->shape[d] == m->t[i].shape[d]);
        if (want_file && want_file[i]) {
            const char *f = ct_hf_weights_file(w, t);
            char want[600];
            snprintf(want, sizeof want, "%s/%s", dir, want_file[i]);
            if (!f || strcmp(f, want))
                fprintf(stderr, "tensor '%s' in %s, want %s\n", t->name, f ? f : "(null)", want);
            CHECK(f && !strcmp(f, want));
        }
        float *got = ct_test_alloc(t->numel);
        CHECK(ct_hf_weights_read_f32(w, t, got, t->numel, err, sizeof err) == 0);
        size_t bad = 0;
        for (size_t k = 0; k < t->numel; k++) {
            float want = dtype == CT_DT_BF16 ? ct_test_bf16(m->data[i][k]) : m->data[i][k];
            bad += memcmp(&got[k], &want, 4) != 0;
        }
        if (bad)
            fprintf(stderr, "tensor '%s' (%s): %zu of %zu values differ\n", t->name, ct_dtype_name(dtype), bad,
                    t->numel);
        CHECK(bad == 0);
        free(got);
    }
    /* ct_hf_weights_at covers every tensor once */
    int seen = 0;
    for (int i = 0; i < ct_hf_weights_count(w); i++) {
        const ct_st_tensor *t = ct_hf_weights_at(w, i);
        CHECK(t && ct_hf_weights_find(w, t->name) == t && ct_hf_weights_file(w, t) != NULL);
        seen += t != NULL;
    }
    CHECK(seen == m->n);
    CHECK(ct_hf_weights_at(w, -1) == NULL && ct_hf_weights_at(w, m->n) == NULL);
    CHECK(ct_hf_weights_find(w, "no.such.tensor") == NULL);
    ct_hf_weights_close(w);
}

static void test_single(ct_dtype dtype)
{
    KEEP(dir, P("single_%s", ct_dtype_name(dtype)));
    fresh_dir(dir);
    uint64_t seed = 11 + (uint64_t)dtype;
    model m = {.fail_at = -1};
    model_add(&m, "model.embed_tokens.weight", 2, 16, 8, &seed, dtype == CT_DT_F16);
    model_add(&m, "model.norm.weight", 1, 8, 0, &seed, dtype == CT_DT_F16);
    model_add(&m, "scale", 0, 0, 0, &seed, dtype == CT_DT_F16);
    model_add(&m, "empty", 2, 0, 4, &seed, 0);
    write_fresh(dir, &m, dtype, 0);
    char err[ERRLEN] = "";
    CHECK_LISTING(dir, "model.safetensors");
    const char *files[MAXT] = {"model.safetensors", "model.safetensors", "model.safetensors", "model.safetensors"};
    check_folder(dir, &m, dtype, files);
    ct_safetensors *st = NULL;
    char path[700];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(ct_st_open(&st, path, err, sizeof err) == 0);
    CHECK(st && ct_st_metadata(st, "format") && !strcmp(ct_st_metadata(st, "format"), "pt"));
    ct_st_close(st);
    /* a limit larger than the data: still one file */
    int rc = ct_hf_weights_write(dir, m.t, m.n, dtype, 1u << 20, fetch, &m, META, err, sizeof err);
    CHECK(rc == 0);
    CHECK_LISTING(dir, "model.safetensors");
    model_free(&m);
    rm_rf(dir);
}

/* Tensors of 10, 10, 50, 10 and 10 elements (BF16: 20, 20, 100, 20, 20 bytes) under a 50-byte limit.
 * transformers: a, b fill a shard; c is larger than the limit and becomes a shard at once (00001); d
 * does not fit beside a and b, so {a, b} is closed as 00002; {d, e} ends as 00003. */
static void sample_model(model *m)
{
    uint64_t seed = 99;
    *m = (model){.fail_at = -1};
    model_add(m, "layers.0.a", 2, 2, 5, &seed, 0);
    model_add(m, "layers.0.b", 1, 10, 0, &seed, 0);
    model_add(m, "big.weight", 2, 5, 10, &seed, 0);
    model_add(m, "layers.1.d", 1, 10, 0, &seed, 0);
    model_add(m, "layers.1.e", 2, 10, 1, &seed, 0);
}

static const char *const SAMPLE_FILES[] = {"model-00002-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                           "model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors",
                                           "model-00003-of-00003.safetensors"};
#define SAMPLE_LISTING                                                                                        \
    "model-00001-of-00003.safetensors model-00002-of-00003.safetensors model-00003-of-00003.safetensors " \
    "model.safetensors.index.json"

/* A fresh folder root/name (its path into dir[600]) holding the sample model m, written once. */
static void sample_folder(char *dir, const char *name, model *m, ct_dtype dtype, uint64_t limit)
{
    snprintf(dir, 600, "%s", P(name, NULL));
    fresh_dir(dir);
    sample_model(m);
    write_fresh(dir, m, dtype, limit);
}

static void test_sharded(void)
{
    char dir[600];
    model m;
    sample_folder(dir, "sharded", &m, CT_DT_BF16, 50);
    char err[ERRLEN] = "";
    CHECK_LISTING(dir, SAMPLE_LISTING);
    check_folder(dir, &m, CT_DT_BF16, (const char *const *)SAMPLE_FILES);

    /* the index: total_size is the data bytes, weight_map names every tensor's shard */
    char *text = get_text(P("sharded/model.safetensors.index.json", NULL), NULL);
    cJSON *idx = text ? cJSON_Parse(text) : NULL;
    CHECK(idx != NULL);
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(idx, "metadata");
    const cJSON *total = cJSON_GetObjectItemCaseSensitive(meta, "total_size");
    CHECK(cJSON_IsNumber(total) && total->valuedouble == 180);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    CHECK(cJSON_GetArraySize(wm) == m.n);
    for (int i = 0; i < m.n; i++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(wm, m.t[i].name);
        CHECK(cJSON_IsString(f) && !strcmp(f->valuestring, SAMPLE_FILES[i]));
    }
    CHECK(text && strstr(text, "\n  \"weight_map\": {\n    \"big.weight\": \"model-00001-of-00003.safetensors\","));
    cJSON_Delete(idx);
    free(text);

    /* F32 with a limit every tensor exceeds: a shard each, in tensor order */
    int rc = ct_hf_weights_write(dir, m.t, m.n, CT_DT_F32, 8, fetch, &m, META, err, sizeof err);
    CHECK(rc == 0);
    CHECK_LISTING(dir, "model-00001-of-00005.safetensors model-00002-of-00005.safetensors "
                       "model-00003-of-00005.safetensors model-00004-of-00005.safetensors "
                       "model-00005-of-00005.safetensors model.safetensors.index.json");
    const char *each[MAXT] = {"model-00001-of-00005.safetensors", "model-00002-of-00005.safetensors",
                              "model-00003-of-00005.safetensors", "model-00004-of-00005.safetensors",
                              "model-00005-of-00005.safetensors"};
    check_folder(dir, &m, CT_DT_F32, each);

    /* a tensor exactly at the limit fits; a single tensor larger than the limit is a single file */
    model one = {.fail_at = -1};
    uint64_t seed = 5;
    model_add(&one, "only", 1, 100, 0, &seed, 0);
    rc = ct_hf_weights_write(dir, one.t, one.n, CT_DT_F16, 16, fetch, &one, META, err, sizeof err);
    CHECK(rc == 0);
    CHECK_LISTING(dir, "model.safetensors");
    model_free(&one);
    model_free(&m);
    rm_rf(dir);
}

/* Switching single <-> sharded, and 3 shards -> 2: files of the earlier save go, others stay. */
static void test_stale(void)
{
    KEEP(dir, P("stale", NULL));
    fresh_dir(dir);
    put_text(P("stale/config.json", NULL), "{}\n");
    put_text(P("stale/notes-00001-of-00002.safetensors", NULL), "not ours\n");
    put_text(P("stale/model-00001-of-00002.bin", NULL), "not ours either\n");
    /* listings are sorted: model-00001-of-00002.bin < model-NNNNN... < model.safetensors < notes... */
    model m;
    sample_model(&m);
    char err[ERRLEN] = "";

    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_BF16, 0, fetch, &m, META, err, sizeof err) == 0);
    CHECK_LISTING(dir, "config.json model-00001-of-00002.bin model.safetensors notes-00001-of-00002.safetensors");

    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_BF16, 50, fetch, &m, META, err, sizeof err) == 0);
    /* model.safetensors removed: it would win over the index */
    CHECK_LISTING(dir, "config.json model-00001-of-00002.bin " SAMPLE_LISTING " notes-00001-of-00002.safetensors");
    check_folder(dir, &m, CT_DT_BF16, (const char *const *)SAMPLE_FILES);

    /* 2 shards now: 00001-of-00003 .. 00003-of-00003 all go */
    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_BF16, 140, fetch, &m, META, err, sizeof err) == 0);
    CHECK_LISTING(dir, "config.json model-00001-of-00002.bin model-00001-of-00002.safetensors "
                       "model-00002-of-00002.safetensors model.safetensors.index.json "
                       "notes-00001-of-00002.safetensors");
    check_folder(dir, &m, CT_DT_BF16, NULL);

    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_F16, 0, fetch, &m, META, err, sizeof err) == 0);
    CHECK_LISTING(dir, "config.json model-00001-of-00002.bin model.safetensors notes-00001-of-00002.safetensors");
    model_free(&m);
    rm_rf(dir);
}

/* ---- malformed folders ---- */

/* ct_hf_weights_open(dir) must fail: -1, handle NULL, message containing every non-NULL want. */
static void expect_open_fail(const char *dir, const char *label, const char *w1, const char *w2, const char *w3)
{
    ct_hf_weights *w = (ct_hf_weights *)&w;
    char err[ERRLEN] = "";
    int rc = ct_hf_weights_open(&w, dir, err, sizeof err);
    int ok = rc == -1 && !w && (!w1 || strstr(err, w1)) && (!w2 || strstr(err, w2)) && (!w3 || strstr(err, w3));
    if (!ok)
        fprintf(stderr, "case '%s': rc %d, message \"%s\" (want \"%s\", \"%s\", \"%s\")\n", label, rc, err,
                w1 ? w1 : "", w2 ? w2 : "", w3 ? w3 : "");
    CHECK(ok);
    if (rc == 0)
        ct_hf_weights_close(w);
}

/* A shard file holding tensors named in the comma-separated list (2 F32 values each). */
static void put_shard(const char *path, const char *names)
{
    char buf[256], *save = NULL;
    snprintf(buf, sizeof buf, "%s", names);
    ct_st_entry e[8];
    float x[2] = {1, 2};
    int n = 0;
    for (char *s = strtok_r(buf, ",", &save); s && n < 8; s = strtok_r(NULL, ",", &save))
        e[n++] = (ct_st_entry){.name = s, .data = x, .ndim = 1, .shape = {2}};
    char err[ERRLEN];
    if (ct_st_write(path, e, n, CT_DT_F32, META, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        exit(2);
    }
}

/* A fresh folder "bad" with the given index text and shards s1 (names1) and s2 (names2), when given. */
static const char *bad_folder(const char *index, const char *names1, const char *names2)
{
    const char *dir = P("bad", NULL);
    fresh_dir(dir);
    if (index)
        put_text(P("bad/model.safetensors.index.json", NULL), index);
    if (names1)
        put_shard(P("bad/s1.safetensors", NULL), names1);
    if (names2)
        put_shard(P("bad/s2.safetensors", NULL), names2);
    return dir;
}

static void test_bad_folders(void)
{
    char index[600], s1[600], s2[600];
    snprintf(index, sizeof index, "%s", P("bad/model.safetensors.index.json", NULL));
    snprintf(s1, sizeof s1, "%s", P("bad/s1.safetensors", NULL));
    snprintf(s2, sizeof s2, "%s", P("bad/s2.safetensors", NULL));
    KEEP(dir, bad_folder(NULL, NULL, NULL));
    expect_open_fail(dir, "empty folder", dir, "no model.safetensors or model.safetensors.index.json", NULL);
    expect_open_fail(P("no_such_folder", NULL), "missing folder", P("no_such_folder", NULL), "cannot open", NULL);
    put_text(P("bad/plain", NULL), "x");
    expect_open_fail(P("bad/plain", NULL), "folder is a file", P("bad/plain", NULL), "not a directory", NULL);

    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\",", "a", NULL);
    expect_open_fail(dir, "index not JSON", index, "malformed JSON", NULL);
    bad_folder("[1, 2]", "a", NULL);
    expect_open_fail(dir, "index an array", index, "not a JSON object", NULL);
    bad_folder("{\"metadata\": {}}", "a", NULL);
    expect_open_fail(dir, "no weight_map", index, "weight_map", "missing");
    bad_folder("{\"weight_map\": [\"s1.safetensors\"]}", "a", NULL);
    expect_open_fail(dir, "weight_map an array", index, "weight_map: not a JSON object", NULL);
    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\"}, \"weight_map\": {\"a\": \"s1.safetensors\"}}", "a",
               NULL);
    expect_open_fail(dir, "weight_map twice", index, "weight_map: key given twice", NULL);
    bad_folder("{\"metadata\": 5, \"weight_map\": {\"a\": \"s1.safetensors\"}}", "a", NULL);
    expect_open_fail(dir, "metadata a number", index, "metadata", "not a JSON object");
    bad_folder("{\"weight_map\": {\"a\": 1}}", "a", NULL);
    expect_open_fail(dir, "value not a string", index, "'a'", "not a string");
    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\", \"a\": \"s1.safetensors\"}}",
               "a,b", NULL);
    expect_open_fail(dir, "tensor listed twice", index, "weight_map.a: key given twice", NULL);
    /* a NUL would have cut a tensor or shard name short */
    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\\u0000.bak\"}}", "a", NULL);
    expect_open_fail(dir, "NUL in a shard name", index, "weight_map.a: holds \\u0000", NULL);

    /* shard names must be plain file names, even when the file outside exists and is valid */
    put_shard(P("x.safetensors", NULL), "a");
    bad_folder("{\"weight_map\": {\"a\": \"../x.safetensors\"}}", NULL, NULL);
    expect_open_fail(dir, "shard outside the folder", index, "'a'", "'../x.safetensors' is not a plain file name");
    bad_folder("{\"weight_map\": {\"a\": \"sub/s1.safetensors\"}}", NULL, NULL);
    CHECK(mkdir(P("bad/sub", NULL), 0755) == 0);
    put_shard(P("bad/sub/s1.safetensors", NULL), "a");
    expect_open_fail(dir, "shard in a subfolder", index, "'a'", "not a plain file name");
    snprintf(s2, sizeof s2, "{\"weight_map\": {\"a\": \"%s\"}}", P("x.safetensors", NULL));
    bad_folder(s2, NULL, NULL);
    expect_open_fail(dir, "absolute shard path", index, "'a'", "not a plain file name");
    bad_folder("{\"weight_map\": {\"a\": \"..\"}}", NULL, NULL);
    expect_open_fail(dir, "shard ..", index, "'a'", "not a plain file name");
    bad_folder("{\"weight_map\": {\"a\": \"\"}}", NULL, NULL);
    expect_open_fail(dir, "empty shard name", index, "'a'", "not a plain file name");
    unlink(P("x.safetensors", NULL));
    snprintf(s2, sizeof s2, "%s", P("bad/s2.safetensors", NULL));

    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}", "a", NULL);
    expect_open_fail(dir, "shard missing", s2, "cannot open", index);
    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}", "a", NULL);
    put_text(s2, "garbage");
    expect_open_fail(dir, "shard invalid", s2, "too short", index);
    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}", "a", NULL);
    CHECK(mkdir(s2, 0755) == 0);
    expect_open_fail(dir, "shard a directory", s2, "not a regular file", index);

    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\", \"zz\": \"s1.safetensors\"}}", "a", NULL);
    expect_open_fail(dir, "listed tensor not in its shard", index, "'zz'", "'s1.safetensors', which does not hold it");
    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\"}}", "a,extra", NULL);
    expect_open_fail(dir, "shard tensor not listed", s1, "'extra'", "not listed in");
    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\", \"c\": \"s2.safetensors\"}}",
               "a,b", "c");
    expect_open_fail(dir, "tensor listed under another shard", index, "'b'", "'s2.safetensors', which does not hold");
    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\", \"c\": \"s2.safetensors\"}}",
               "a,b", "b,c");
    expect_open_fail(dir, "tensor in two shards", s2, "'b'", "two shards");
    expect_open_fail(dir, "tensor in two shards (names the other)", s1, NULL, NULL);

    /* both present: model.safetensors wins, as in transformers (the index is not even parsed) */
    bad_folder("not json at all", "a,b", NULL);
    put_shard(P("bad/model.safetensors", NULL), "only");
    ct_hf_weights *w = NULL;
    char err[ERRLEN] = "";
    CHECK(ct_hf_weights_open(&w, dir, err, sizeof err) == 0);
    CHECK(w && ct_hf_weights_count(w) == 1 && ct_hf_weights_find(w, "only") && !ct_hf_weights_find(w, "a"));
    ct_hf_weights_close(w);
    /* a broken model.safetensors is an error even when a valid index exists */
    bad_folder("{\"weight_map\": {\"a\": \"s1.safetensors\"}}", "a", NULL);
    put_text(P("bad/model.safetensors", NULL), "short");
    expect_open_fail(dir, "broken single file beside an index", P("bad/model.safetensors", NULL), "too short", NULL);

    /* an empty weight_map is a folder without tensors, not an error */
    bad_folder("{\"metadata\": {\"total_size\": 0}, \"weight_map\": {}}", NULL, NULL);
    w = NULL;
    CHECK(ct_hf_weights_open(&w, dir, err, sizeof err) == 0);
    CHECK(w && ct_hf_weights_count(w) == 0 && ct_hf_weights_dtype(w) == CT_DT_F32);
    ct_hf_weights_close(w);
    rm_rf(dir);
}

/* A good sharded folder, then a shard cut short (open fails), and one cut after open (read fails). */
static void test_truncated(void)
{
    char dir[600];
    model m;
    sample_folder(dir, "trunc", &m, CT_DT_BF16, 50);
    char err[ERRLEN] = "";
    KEEP(shard, P("trunc/model-00003-of-00003.safetensors", NULL));
    struct stat sb;
    CHECK(stat(shard, &sb) == 0);

    ct_hf_weights *w = NULL;
    CHECK(ct_hf_weights_open(&w, dir, err, sizeof err) == 0);
    CHECK(truncate(shard, sb.st_size - 2) == 0);
    const ct_st_tensor *t = w ? ct_hf_weights_find(w, "layers.1.e") : NULL;
    float buf[10];
    CHECK(t && ct_hf_weights_read_f32(w, t, buf, 10, err, sizeof err) == -1);
    CHECK(strstr(err, shard) && strstr(err, "'layers.1.e'") && strstr(err, "read failed"));
    /* a tensor of another handle is refused, not read from the wrong file */
    ct_hf_weights *w2 = NULL;
    CHECK(ct_hf_weights_open(&w2, P("single_ok", NULL), err, sizeof err) == 0);
    const ct_st_tensor *other = w2 ? ct_hf_weights_find(w2, "layers.1.e") : NULL;
    CHECK(other && ct_hf_weights_file(w, other) == NULL);
    CHECK(other && ct_hf_weights_read_f32(w, other, buf, 10, err, sizeof err) == -1);
    CHECK(strstr(err, "not a tensor of this folder") && strstr(err, "'layers.1.e'"));
    ct_hf_weights_close(w2);
    ct_hf_weights_close(w);

    expect_open_fail(dir, "truncated shard", shard, "'layers.1.e'", "end beyond the data section");
    model_free(&m);
    rm_rf(dir);
}

/* Write failures: nothing of the failed save stays, and the earlier save is untouched. */
static void test_write_errors(void)
{
    char dir[600];
    model m;
    sample_folder(dir, "werr", &m, CT_DT_F32, 0);
    char err[ERRLEN] = "";
    size_t before_len = 0, after_len = 0;
    char *before = get_text(P("werr/model.safetensors", NULL), &before_len);

    /* fetch fails in the last shard: every earlier shard's .tmp is removed too */
    m.fail_at = 4;
    err[0] = '\0';
    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_BF16, 50, fetch, &m, META, err, sizeof err) == -1);
    CHECK(strstr(err, "'layers.1.e'") && strstr(err, "on fire"));
    CHECK_LISTING(dir, "model.safetensors");
    m.fail_silently = 1;
    err[0] = '\0';
    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_BF16, 0, fetch, &m, META, err, sizeof err) == -1);
    CHECK(strstr(err, dir) && strstr(err, "'layers.1.e'") && strstr(err, "could not be fetched"));
    CHECK_LISTING(dir, "model.safetensors");
    m.fail_at = -1;

    /* bad arguments: nothing is written */
    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_I64, 0, fetch, &m, META, err, sizeof err) == -1);
    CHECK(strstr(err, dir) && strstr(err, "I64"));
    model dup = m;
    dup.t[4].name = "layers.0.a";
    CHECK(ct_hf_weights_write(dir, dup.t, dup.n, CT_DT_BF16, 50, fetch, &dup, META, err, sizeof err) == -1);
    CHECK(strstr(err, dir) && strstr(err, "'layers.0.a'") && strstr(err, "duplicate"));
    dup.t[4].name = "__metadata__";
    CHECK(ct_hf_weights_write(dir, dup.t, dup.n, CT_DT_BF16, 50, fetch, &dup, META, err, sizeof err) == -1);
    CHECK(strstr(err, "reserved"));
    dup.t[4].name = m.t[4].name;
    dup.t[1].shape[0] = -3;
    CHECK(ct_hf_weights_write(dir, dup.t, dup.n, CT_DT_BF16, 50, fetch, &dup, META, err, sizeof err) == -1);
    CHECK(strstr(err, "'layers.0.b'") && strstr(err, "negative"));
    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_BF16, 50, NULL, &m, META, err, sizeof err) == -1);
    const char *badmeta[] = {"format", NULL};
    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_BF16, 50, fetch, &m, badmeta, err, sizeof err) == -1);
    CHECK_LISTING(dir, "model.safetensors");
    for (int i = 0; i < m.n; i++)
        CHECK(m.calls[i] == 3); /* the first save and the two failed ones (up to and including tensor 4) */

    /* rename fails (the final name is a directory): the .tmp files go, the earlier save stays */
    CHECK(mkdir(P("werr/model-00003-of-00003.safetensors", NULL), 0755) == 0);
    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_BF16, 50, fetch, &m, META, err, sizeof err) == -1);
    CHECK(strstr(err, "model-00003-of-00003.safetensors") && strstr(err, "rename"));
    CHECK(rmdir(P("werr/model-00003-of-00003.safetensors", NULL)) == 0);
    /* shards 1 and 2 were renamed before the failure; no index names them, so model.safetensors still rules */
    CHECK_LISTING(dir, "model-00001-of-00003.safetensors model-00002-of-00003.safetensors model.safetensors");
    char *after = get_text(P("werr/model.safetensors", NULL), &after_len);
    CHECK(before && after && before_len == after_len && !memcmp(before, after, before_len));
    free(before);
    free(after);
    /* the next good save cleans them up */
    CHECK(ct_hf_weights_write(dir, m.t, m.n, CT_DT_F32, 0, fetch, &m, META, err, sizeof err) == 0);
    CHECK_LISTING(dir, "model.safetensors");

    /* the output is a file, not a folder */
    put_text(P("werr/file", NULL), "x");
    CHECK(ct_hf_weights_write(P("werr/file", NULL), m.t, m.n, CT_DT_F32, 0, fetch, &m, META, err, sizeof err) == -1);
    CHECK(strstr(err, P("werr/file", NULL)) && strstr(err, "not a directory"));
    /* a missing folder is created */
    CHECK(ct_hf_weights_write(P("werr/new", NULL), m.t, m.n, CT_DT_F32, 0, fetch, &m, META, err, sizeof err) == 0);
    CHECK_LISTING(P("werr/new", NULL), "model.safetensors");
    /* no tensors: an empty model.safetensors */
    CHECK(ct_hf_weights_write(P("werr/none", NULL), NULL, 0, CT_DT_BF16, 10, NULL, NULL, META, err, sizeof err) == 0);
    CHECK_LISTING(P("werr/none", NULL), "model.safetensors");
    model_free(&m);
    rm_rf(dir);
}

static void test_side_files(void)
{
    KEEP(src, P("side_src", NULL));
    KEEP(dst, P("side_dst", NULL));
    fresh_dir(src);
    rm_rf(dst);
    put_text(P("side_src/tokenizer.json", NULL), "{\"model\": {}}\n");
    put_text(P("side_src/merges.txt", NULL), "#version: 0.2\na b\n");
    put_text(P("side_src/chat_template.jinja", NULL), "{{ messages }}");
    put_text(P("side_src/config.json", NULL), "{}");
    char err[ERRLEN] = "";
    CHECK(ct_hf_copy_side_files(src, dst, err, sizeof err) == 0);
    CHECK_LISTING(dst, "chat_template.jinja merges.txt tokenizer.json");
    char *a = get_text(P("side_dst/merges.txt", NULL), NULL);
    CHECK(a && !strcmp(a, "#version: 0.2\na b\n"));
    free(a);
    /* again, over the copies; and src == dst is a no-op */
    CHECK(ct_hf_copy_side_files(src, dst, err, sizeof err) == 0);
    CHECK(ct_hf_copy_side_files(dst, dst, err, sizeof err) == 0);
    CHECK_LISTING(dst, "chat_template.jinja merges.txt tokenizer.json");
    /* unreadable: a directory where a file should be */
    CHECK(mkdir(P("side_src/tokenizer_config.json", NULL), 0755) == 0);
    CHECK(ct_hf_copy_side_files(src, dst, err, sizeof err) == -1);
    CHECK(strstr(err, P("side_src/tokenizer_config.json", NULL)) && strstr(err, "not a regular file"));
    rmdir(P("side_src/tokenizer_config.json", NULL));
    /* unwritable: the temporary name is taken by a directory */
    CHECK(mkdir(P("side_dst/tokenizer.json.tmp", NULL), 0755) == 0);
    CHECK(ct_hf_copy_side_files(src, dst, err, sizeof err) == -1);
    CHECK(strstr(err, P("side_dst/tokenizer.json.tmp", NULL)) && strstr(err, "cannot create"));
    rmdir(P("side_dst/tokenizer.json.tmp", NULL));
    CHECK(ct_hf_copy_side_files(P("side_none", NULL), dst, err, sizeof err) == -1);
    CHECK(strstr(err, P("side_none", NULL)) && strstr(err, "cannot open"));
    rm_rf(src);
    rm_rf(dst);
}

int main(int argc, char **argv)
{
    if (argc > 1) { /* by hand: write the sample folder for other readers */
        model m;
        sample_model(&m);
        int rc = write_fresh(argv[1], &m, CT_DT_BF16, 50);
        model_free(&m);
        return rc ? 1 : 0;
    }
    snprintf(root, sizeof root, "%s/ct_test_hf_weights_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 2;
    }
    test_single(CT_DT_F32);
    test_single(CT_DT_BF16);
    test_single(CT_DT_F16);
    test_sharded();
    test_stale();
    test_bad_folders();
    { /* a second folder for test_truncated's foreign-tensor case */
        char dir[600];
        model m;
        sample_folder(dir, "single_ok", &m, CT_DT_F32, 0);
        model_free(&m);
    }
    test_truncated();
    test_write_errors();
    test_side_files();
    rm_rf(P("single_ok", NULL));
    CHECK(rmdir(root) == 0); /* every test removed its files */
    return ct_test_finish("test_hf_weights");
}
