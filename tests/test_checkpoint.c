/* test_checkpoint.c — HDF5 checkpoints on one rank: an exact round trip of the model, the
 * AdamW state and the run state; the run directory (ckpt_<step>.h5, `latest`, rotation); and
 * every damaged or foreign file failing with a message naming the file (and the dataset),
 * leaving the target model, optimizer and state as they were and the file untouched. The
 * damage is done with the HDF5 C API (deleted links, rewritten attributes) and by flipping a
 * byte inside a dataset's data (H5Dget_offset: the datasets are contiguous). */
#include <dirent.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "checkpoint.h"
#include "comm.h"
#include "lora.h"
#include "model.h"
#include "optim.h"
#include "rng.h"

#if defined(__SANITIZE_ADDRESS__)
/* HDF5 (uninstrumented) leaks some of what it allocated when it refuses a damaged file: its
 * leaks are not ctrain's. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libhdf5\n"; }
const char *__lsan_default_options(void);
const char *__lsan_default_options(void) { return "print_suppressions=0"; }
#endif

static char tmpdir[64];
static const ct_backend *be;
static ct_kctx *ctx;
static ct_comm *comm;

enum { B = 2, T = 8 };
static const ct_model_config tiny = {.vocab_size = 13, .max_seq_len = 8, .n_layer = 2, .n_head = 2, .n_embd = 8,
                                    .norm_eps = 1e-5f};
static const ct_optim_hparams hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                                    .weight_decay = 0.1f, .grad_clip = 1.0f};

/* ---------------------------------------------------------------- helpers */

static char *tmp_path(const char *name)
{
    static char path[8][512];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, sizeof path[0], "%s/%s", tmpdir, name);
    return p;
}

/* err must contain every string of the NULL-terminated list */
static void check_message(int line, const char *err, const char *const *needles)
{
    if (getenv("CT_TEST_VERBOSE")) fprintf(stderr, "  line %d: %s\n", line, err);
    for (; *needles; needles++) {
        if (!strstr(err, *needles)) {
            fprintf(stderr, "%s:%d: error message \"%s\" lacks \"%s\"\n", __FILE__, line, err, *needles);
            ct_test_failures++;
        }
    }
}
#define CHECK_MESSAGE(err, ...) check_message(__LINE__, err, (const char *const[]){__VA_ARGS__, NULL})

static void make(const ct_model_config *cfg, uint64_t seed, ct_model **m, ct_optim **o)
{
    char err[512];
    *m = NULL, *o = NULL;
    if (ct_model_init(m, cfg, be, ctx, B, T, 1, err, sizeof err) || ct_optim_init(o, *m, comm, 1, 0, err, sizeof err)) {
        fprintf(stderr, "init: %s\n", err);
        exit(2);
    }
    ct_model_init_weights(*m, seed);
}

static void destroy(ct_model *m, ct_optim *o)
{
    ct_optim_free(o);
    ct_model_free(m);
}

/* `steps` real AdamW steps on random tokens, so m and v are non-zero */
static void train(ct_model *m, ct_optim *o, int steps, uint64_t seed)
{
    int32_t tokens[B * T], targets[B * T];
    int V = ct_model_config_of(m)->vocab_size;
    char err[512];
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < B * T; i++) {
            tokens[i] = (int32_t)(ct_test_rand_u64(&seed) % (uint64_t)V);
            targets[i] = (int32_t)(ct_test_rand_u64(&seed) % (uint64_t)V);
        }
        double loss = 0;
        long ntok = 0;
        float norm = 0;
        ct_model_zero_grad(m);
        /* every target counts: the loss is the mean over B * T tokens */
        if (ct_model_forward(m, tokens, targets, NULL, B, T, 1.0f / (float)(B * T), &loss, &ntok, err, sizeof err)) {
            fprintf(stderr, "forward: %s\n", err);
            exit(2);
        }
        ct_model_backward(m, NULL, NULL);
        CHECK(ct_optim_step(o, &hp, &norm) == 0);
        CHECK(norm > 0);
    }
}

/* Host copies of everything a read may overwrite. */
typedef struct {
    size_t pbytes, len;
    unsigned char *params;
    float *state[3]; /* master, exp_avg, exp_avg_sq */
    int steps;
} snapshot;

static snapshot take(ct_model *m, ct_optim *o)
{
    snapshot s = {0};
    size_t begin;
    s.pbytes = ct_model_numel(m) * be->elem_size;
    s.params = malloc(s.pbytes);
    be->download(ctx, s.params, ct_model_params(m), s.pbytes);
    ct_optim_slice(o, &begin, &s.len);
    float *src[3] = {ct_optim_master(o), ct_optim_exp_avg(o), ct_optim_exp_avg_sq(o)};
    for (int k = 0; k < 3; k++) {
        s.state[k] = ct_test_alloc(s.len);
        be->download(ctx, s.state[k], src[k], s.len * sizeof(float));
    }
    s.steps = ct_optim_steps_taken(o);
    return s;
}

static void drop(snapshot *s)
{
    free(s->params);
    for (int k = 0; k < 3; k++) free(s->state[k]);
}

/* bit-identical: parameters, master, exp_avg, exp_avg_sq, optimizer steps */
static int same(const snapshot *a, const snapshot *b)
{
    if (a->pbytes != b->pbytes || a->len != b->len || a->steps != b->steps) return 0;
    if (memcmp(a->params, b->params, a->pbytes)) return 0;
    for (int k = 0; k < 3; k++)
        if (memcmp(a->state[k], b->state[k], a->len * sizeof(float))) return 0;
    return 1;
}

static int same_state(const ct_ckpt_state *a, const ct_ckpt_state *b)
{
    return a->step == b->step && a->tokens == b->tokens && a->cursor.epoch == b->cursor.epoch &&
           a->cursor.step == b->cursor.step && a->cursor.micro == b->cursor.micro &&
           !memcmp(a->rng.s, b->rng.s, sizeof a->rng.s) && a->world == b->world && a->zero_stage == b->zero_stage;
}

/* A file's bytes (NULL, *n = 0 when it cannot be read). */
static unsigned char *slurp(const char *path, size_t *n)
{
    *n = 0;
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(size > 0 ? (size_t)size : 1);
    if (buf && size > 0 && fread(buf, 1, (size_t)size, f) != (size_t)size) free(buf), buf = NULL;
    fclose(f);
    if (buf) *n = (size_t)size;
    return buf;
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) {
        perror(path);
        exit(2);
    }
}

static void copy_file(const char *src, const char *dst)
{
    size_t n;
    unsigned char *buf = slurp(src, &n);
    if (!buf) { perror(src); exit(2); }
    write_bytes(dst, buf, n);
    free(buf);
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* ---------------------------------------------------------------- the checkpoint under test */

static const char *good;           /* a checkpoint of src */
static ct_model *src_m;             /* what it holds */
static ct_optim *src_o;
static ct_ckpt_state src_st;
static const char *config_json = "{\"model\": {\"n_embd\": 8}}";

static void write_good(void)
{
    make(&tiny, 1, &src_m, &src_o);
    train(src_m, src_o, 3, 11);
    src_st = (ct_ckpt_state){.step = 3, .tokens = 3 * B * T, .cursor = {.epoch = 1, .step = 5, .micro = 0},
                             .world = 1, .zero_stage = 1};
    ct_rng_seed(&src_st.rng, 1234);
    ct_rng_u64(&src_st.rng);
    good = strdup(tmp_path("good.h5"));
    char err[1024] = "";
    CHECK(ct_ckpt_write(good, src_m, src_o, &src_st, config_json, comm, err, sizeof err) == 0);
    if (err[0]) fprintf(stderr, "  write: %s\n", err);
}

/* ---------------------------------------------------------------- 1. round trip, run directory */

static void test_round_trip(void)
{
    snapshot want = take(src_m, src_o);
    /* the AdamW state really is non-zero (three steps were taken) */
    int nonzero_m = 0, nonzero_v = 0;
    for (size_t i = 0; i < want.len; i++) nonzero_m += want.state[1][i] != 0, nonzero_v += want.state[2][i] != 0;
    CHECK(nonzero_m > (int)want.len / 2 && nonzero_v > (int)want.len / 2);
    CHECK(want.steps == 3);

    ct_model *m;
    ct_optim *o;
    make(&tiny, 99, &m, &o);
    snapshot before = take(m, o);
    CHECK(!same(&before, &want));
    drop(&before);

    ct_ckpt_state st = {0};
    char err[1024] = "";
    CHECK(ct_ckpt_read(good, m, o, &st, comm, err, sizeof err) == 0);
    if (err[0]) fprintf(stderr, "  read: %s\n", err);
    snapshot got = take(m, o);
    CHECK(same(&got, &want));
    CHECK(ct_optim_steps_taken(o) == 3);
    CHECK(same_state(&st, &src_st));
    drop(&got);

    /* the model alone (sampling, evaluation, fine-tuning from a checkpoint) */
    ct_model *m2;
    ct_optim *o2;
    make(&tiny, 98, &m2, &o2);
    CHECK(ct_ckpt_read(good, m2, NULL, NULL, comm, err, sizeof err) == 0);
    CHECK(!memcmp(ct_model_params(m2), want.params, want.pbytes));
    destroy(m2, o2);

    ct_model_config cfg;
    memset(&cfg, 0xab, sizeof cfg);
    CHECK(ct_ckpt_read_config(good, &cfg, err, sizeof err) == 0);
    ct_model_config want_cfg = tiny;
    CHECK(ct_model_config_check(&want_cfg, err, sizeof err) == 0);
    CHECK(ct_model_config_same(&cfg, &want_cfg));

    /* a step after the resume matches a step of the original */
    train(m, o, 1, 77);
    ct_model *m3;
    ct_optim *o3;
    make(&tiny, 1, &m3, &o3);
    train(m3, o3, 3, 11);
    train(m3, o3, 1, 77);
    snapshot a = take(m, o), b = take(m3, o3);
    CHECK(same(&a, &b));
    drop(&a);
    drop(&b);
    destroy(m3, o3);

    drop(&want);
    destroy(m, o);
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    if (d) closedir(d);
    return n;
}

static void test_run_dir(void)
{
    char *dir = strdup(tmp_path("run"));
    mkdir(dir, 0777);
    char err[1024] = "", path[1024] = "", file[1100];

    CHECK(ct_ckpt_latest(dir, path, sizeof path, err, sizeof err) == 0); /* no checkpoint yet */

    ct_ckpt_state st = src_st;
    st.step = 1;
    CHECK(ct_ckpt_save(dir, 2, src_m, src_o, &st, config_json, comm, path, sizeof path, err, sizeof err) == 0);
    snprintf(file, sizeof file, "%s/ckpt_00000001.h5", dir);
    CHECK(!strcmp(path, file));
    CHECK(exists(file));
    snprintf(file, sizeof file, "%s/ckpt_00000001.h5.tmp", dir);
    CHECK(!exists(file));
    snprintf(file, sizeof file, "%s/latest.tmp", dir);
    CHECK(!exists(file));
    snprintf(file, sizeof file, "%s/latest", dir);
    size_t n;
    char *latest = (char *)slurp(file, &n);
    CHECK(latest && n == strlen("ckpt_00000001.h5\n") && !memcmp(latest, "ckpt_00000001.h5\n", n));
    free(latest);
    CHECK(count_entries(dir) == 2);

    for (st.step = 2; st.step <= 3; st.step++)
        CHECK(ct_ckpt_save(dir, 2, src_m, src_o, &st, config_json, comm, path, sizeof path, err, sizeof err) == 0);
    /* keep = 2: steps 2 and 3 remain, with `latest` */
    snprintf(file, sizeof file, "%s/ckpt_00000001.h5", dir);
    CHECK(!exists(file));
    snprintf(file, sizeof file, "%s/ckpt_00000002.h5", dir);
    CHECK(exists(file));
    snprintf(file, sizeof file, "%s/ckpt_00000003.h5", dir);
    CHECK(exists(file));
    CHECK(count_entries(dir) == 3);

    memset(path, 0, sizeof path);
    CHECK(ct_ckpt_latest(dir, path, sizeof path, err, sizeof err) == 1);
    CHECK(!strcmp(path, file));

    /* the newest one reads back, with its step */
    ct_model *m;
    ct_optim *o;
    make(&tiny, 5, &m, &o);
    ct_ckpt_state got = {0};
    CHECK(ct_ckpt_read(path, m, o, &got, comm, err, sizeof err) == 0);
    CHECK(got.step == 3 && got.tokens == src_st.tokens);
    destroy(m, o);

    /* `latest` naming a file that is gone */
    CHECK(unlink(file) == 0);
    err[0] = 0;
    CHECK(ct_ckpt_latest(dir, path, sizeof path, err, sizeof err) == -1);
    CHECK_MESSAGE(err, "latest", "ckpt_00000003.h5", "missing");

    /* a save into a directory that does not exist fails, and says where */
    snprintf(file, sizeof file, "%s/no/such/dir", tmpdir);
    err[0] = 0;
    st.step = 4;
    CHECK(ct_ckpt_save(file, 2, src_m, src_o, &st, config_json, comm, path, sizeof path, err, sizeof err) == -1);
    CHECK_MESSAGE(err, "no/such/dir");
    free(dir);
}

/* Rotation removes old checkpoints only: a file of the user's whose name merely starts like
 * one (ckpt_<n>...) is neither deleted nor counted as a newer checkpoint. */
static void test_rotation_spares_other_files(void)
{
    char *dir = strdup(tmp_path("run_keepsake"));
    mkdir(dir, 0777);
    char err[1024] = "", path[1024], best[1100], notes[1100], file[1100];
    snprintf(best, sizeof best, "%s/ckpt_1_best.h5", dir);
    snprintf(notes, sizeof notes, "%s/ckpt_99_notes.txt", dir);
    copy_file(good, best);
    write_bytes(notes, "keep\n", 5);
    ct_ckpt_state st = src_st;
    for (st.step = 1; st.step <= 3; st.step++)
        CHECK(ct_ckpt_save(dir, 2, src_m, src_o, &st, config_json, comm, path, sizeof path, err, sizeof err) == 0);
    CHECK(exists(best));
    CHECK(exists(notes));
    snprintf(file, sizeof file, "%s/ckpt_00000002.h5", dir); /* one of the newest two */
    CHECK(exists(file));
    free(dir);
}

/* ---------------------------------------------------------------- 2. damaged and foreign files */

static ct_model *dst_m; /* the read target: trained differently from the checkpoint */
static ct_optim *dst_o;

/* ct_ckpt_read(path) into the target fails with -1 and a message holding every needle; the
 * target model, optimizer and state, and the file, are as they were. */
static void expect_read_error(int line, ct_model *m, ct_optim *o, const char *path, const char *const *needles)
{
    snapshot before = take(m, o);
    ct_ckpt_state st0 = {.step = 42, .tokens = 4242, .cursor = {.epoch = 7, .step = 8, .micro = 1}, .world = 9,
                         .zero_stage = 0};
    ct_rng_seed(&st0.rng, 4242);
    ct_ckpt_state st = st0;
    size_t n0, n1;
    unsigned char *bytes0 = slurp(path, &n0);
    char err[2048] = "";
    int rc = ct_ckpt_read(path, m, o, &st, comm, err, sizeof err);
    if (rc != -1) {
        fprintf(stderr, "%s:%d: ct_ckpt_read(%s) returned %d, not -1\n", __FILE__, line, path, rc);
        ct_test_failures++;
    }
    check_message(line, err, needles);
    snapshot after = take(m, o);
    if (!same(&before, &after)) {
        fprintf(stderr, "%s:%d: a failed read of %s changed the model or the optimizer\n", __FILE__, line, path);
        ct_test_failures++;
    }
    if (!same_state(&st, &st0)) {
        fprintf(stderr, "%s:%d: a failed read of %s changed the run state (step %lld, tokens %lld)\n", __FILE__,
                line, path, (long long)st.step, (long long)st.tokens);
        ct_test_failures++;
    }
    unsigned char *bytes1 = slurp(path, &n1);
    if (n0 != n1 || (bytes0 && !bytes1) || (!bytes0 && bytes1) || (n0 && memcmp(bytes0, bytes1, n0))) {
        fprintf(stderr, "%s:%d: a failed read changed %s\n", __FILE__, line, path);
        ct_test_failures++;
    }
    drop(&before);
    drop(&after);
    free(bytes0);
    free(bytes1);
}
#define EXPECT_READ_ERROR(path, ...) \
    expect_read_error(__LINE__, dst_m, dst_o, path, (const char *const[]){path, __VA_ARGS__, NULL})

/* the model alone: -1 with the needles, the model unchanged */
static void expect_model_read_error(int line, const char *path, const char *const *needles)
{
    snapshot before = take(dst_m, dst_o);
    char err[2048] = "";
    int rc = ct_ckpt_read(path, dst_m, NULL, NULL, comm, err, sizeof err);
    if (rc != -1) {
        fprintf(stderr, "%s:%d: ct_ckpt_read(%s, no optimizer) returned %d, not -1\n", __FILE__, line, path, rc);
        ct_test_failures++;
    }
    check_message(line, err, needles);
    snapshot after = take(dst_m, dst_o);
    if (!same(&before, &after)) {
        fprintf(stderr, "%s:%d: a failed read of %s changed the model\n", __FILE__, line, path);
        ct_test_failures++;
    }
    drop(&before);
    drop(&after);
}
#define EXPECT_MODEL_READ_ERROR(path, ...) \
    expect_model_read_error(__LINE__, path, (const char *const[]){path, __VA_ARGS__, NULL})

static void expect_config_error(int line, const char *path, const char *const *needles)
{
    ct_model_config cfg;
    char err[2048] = "";
    if (ct_ckpt_read_config(path, &cfg, err, sizeof err) != -1) {
        fprintf(stderr, "%s:%d: ct_ckpt_read_config(%s) did not fail\n", __FILE__, line, path);
        ct_test_failures++;
    }
    check_message(line, err, needles);
}
#define EXPECT_CONFIG_ERROR(path, ...) \
    expect_config_error(__LINE__, path, (const char *const[]){path, __VA_ARGS__, NULL})

static hid_t h5_open(const char *path, unsigned mode)
{
    hid_t f = H5Fopen(path, mode, H5P_DEFAULT);
    if (f < 0) {
        fprintf(stderr, "cannot open %s with HDF5\n", path);
        exit(2);
    }
    return f;
}

/* Flips a byte in the middle of dataset `name`'s data. */
static void flip_data_byte(const char *path, const char *name)
{
    hid_t f = h5_open(path, H5F_ACC_RDONLY);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    haddr_t off = d >= 0 ? H5Dget_offset(d) : HADDR_UNDEF;
    hsize_t size = d >= 0 ? H5Dget_storage_size(d) : 0;
    if (d >= 0) H5Dclose(d);
    H5Fclose(f);
    if (off == HADDR_UNDEF || size < 8) {
        fprintf(stderr, "%s: %s: no contiguous data to damage\n", path, name);
        exit(2);
    }
    off_t at = (off_t)(off + size / 8 * 4 + 1); /* the second byte of an element near the middle */
    int fd = open(path, O_RDWR);
    unsigned char c;
    if (fd < 0 || pread(fd, &c, 1, at) != 1) { perror(path); exit(2); }
    c ^= 0x5a;
    if (pwrite(fd, &c, 1, at) != 1) { perror(path); exit(2); }
    close(fd);
}

static const char *damaged(const char *name)
{
    const char *p = tmp_path(name);
    copy_file(good, p);
    return p;
}

static void test_truncated(void)
{
    struct stat sb;
    CHECK(stat(good, &sb) == 0);
    const char *half = damaged("half.h5");
    CHECK(truncate(half, sb.st_size / 2) == 0);
    EXPECT_READ_ERROR(half, "");
    EXPECT_CONFIG_ERROR(half, "");
    const char *tiny_file = damaged("hundred.h5");
    CHECK(truncate(tiny_file, 100) == 0);
    EXPECT_READ_ERROR(tiny_file, "");
    EXPECT_CONFIG_ERROR(tiny_file, "");
}

static void test_flipped_bytes(void)
{
    const char *p = damaged("flip_exp_avg.h5");
    flip_data_byte(p, "/optimizer/exp_avg/transformer.h.1.mlp.c_fc.weight");
    EXPECT_READ_ERROR(p, "/optimizer/exp_avg/transformer.h.1.mlp.c_fc.weight", "checksum mismatch");

    p = damaged("flip_exp_avg_sq.h5");
    flip_data_byte(p, "/optimizer/exp_avg_sq/transformer.h.0.attn.c_attn.bias");
    EXPECT_READ_ERROR(p, "/optimizer/exp_avg_sq/transformer.h.0.attn.c_attn.bias", "checksum mismatch");

    p = damaged("flip_master.h5");
    flip_data_byte(p, "/optimizer/master/transformer.wpe.weight");
    EXPECT_READ_ERROR(p, "/optimizer/master/transformer.wpe.weight", "checksum mismatch");

    p = damaged("flip_model.h5");
    flip_data_byte(p, "/model/transformer.h.1.attn.c_proj.weight");
    EXPECT_READ_ERROR(p, "/model/transformer.h.1.attn.c_proj.weight", "checksum mismatch");
    EXPECT_MODEL_READ_ERROR(p, "/model/transformer.h.1.attn.c_proj.weight", "checksum mismatch");
}

static void delete_link(const char *path, const char *name)
{
    hid_t f = h5_open(path, H5F_ACC_RDWR);
    CHECK(H5Ldelete(f, name, H5P_DEFAULT) >= 0);
    H5Fclose(f);
}

static void test_missing_datasets(void)
{
    const char *p = damaged("missing_opt.h5");
    delete_link(p, "/optimizer/exp_avg_sq/transformer.h.0.attn.c_proj.bias");
    EXPECT_READ_ERROR(p, "/optimizer/exp_avg_sq/transformer.h.0.attn.c_proj.bias", "missing");

    p = damaged("missing_model.h5");
    delete_link(p, "/model/transformer.ln_f.weight");
    EXPECT_READ_ERROR(p, "/model/transformer.ln_f.weight", "missing");
    EXPECT_MODEL_READ_ERROR(p, "/model/transformer.ln_f.weight", "missing");

    p = damaged("missing_group.h5");
    delete_link(p, "/optimizer/master");
    EXPECT_READ_ERROR(p, "/optimizer/master/", "missing");

    /* a dataset without its checksum */
    p = damaged("no_checksum.h5");
    hid_t f = h5_open(p, H5F_ACC_RDWR);
    hid_t d = H5Dopen2(f, "/model/transformer.wte.weight", H5P_DEFAULT);
    CHECK(d >= 0 && H5Adelete(d, "checksum") >= 0);
    if (d >= 0) H5Dclose(d);
    H5Fclose(f);
    EXPECT_READ_ERROR(p, "/model/transformer.wte.weight", "checksum");

    /* a dataset of another shape in a tensor's place */
    p = damaged("bad_shape.h5");
    delete_link(p, "/optimizer/exp_avg/transformer.wpe.weight");
    f = h5_open(p, H5F_ACC_RDWR);
    hsize_t dims[2] = {4, 8};
    hid_t space = H5Screate_simple(2, dims, NULL);
    d = H5Dcreate2(f, "/optimizer/exp_avg/transformer.wpe.weight", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT,
                   H5P_DEFAULT);
    float zeros[32] = {0};
    uint64_t sum = 0;
    CHECK(d >= 0 && H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros) >= 0);
    hid_t as = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(d, "checksum", H5T_NATIVE_UINT64, as, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(a >= 0 && H5Awrite(a, H5T_NATIVE_UINT64, &sum) >= 0);
    H5Aclose(a);
    H5Sclose(as);
    H5Dclose(d);
    H5Sclose(space);
    H5Fclose(f);
    EXPECT_READ_ERROR(p, "/optimizer/exp_avg/transformer.wpe.weight", "shape", "[4, 8]");

    /* a run-state attribute missing */
    p = damaged("no_rng.h5");
    f = h5_open(p, H5F_ACC_RDWR);
    CHECK(H5Adelete(f, "rng") >= 0);
    H5Fclose(f);
    EXPECT_READ_ERROR(p, "rng");
}

static void test_wrong_model(void)
{
    ct_model_config wide = tiny;
    wide.n_embd = 12;
    ct_model *m;
    ct_optim *o;
    make(&wide, 3, &m, &o);
    train(m, o, 1, 5);
    expect_read_error(__LINE__, m, o, good, (const char *const[]){good, "width 8", "12", NULL});
    destroy(m, o);

    ct_model_config deeper = tiny;
    deeper.n_layer = 3;
    make(&deeper, 3, &m, &o);
    expect_read_error(__LINE__, m, o, good, (const char *const[]){good, "2 layers", NULL});
    destroy(m, o);
}

static void set_version(const char *path, int64_t v)
{
    hid_t f = h5_open(path, H5F_ACC_RDWR);
    hid_t a = H5Aopen(f, "version", H5P_DEFAULT);
    CHECK(a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, &v) >= 0);
    if (a >= 0) H5Aclose(a);
    H5Fclose(f);
}

static void test_version(void)
{
    const char *p = damaged("version99.h5");
    set_version(p, 99);
    EXPECT_READ_ERROR(p, "version", "99");
    EXPECT_CONFIG_ERROR(p, "version", "99");

    /* the attribute recreated with another type (a string) */
    p = damaged("version_str.h5");
    hid_t f = h5_open(p, H5F_ACC_RDWR);
    CHECK(H5Adelete(f, "version") >= 0);
    hid_t t = H5Tcopy(H5T_C_S1), s = H5Screate(H5S_SCALAR);
    H5Tset_size(t, 2);
    hid_t a = H5Acreate2(f, "version", t, s, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(a >= 0 && H5Awrite(a, t, "1") >= 0);
    H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
    H5Fclose(f);
    EXPECT_READ_ERROR(p, "version");

    /* and gone */
    p = damaged("version_none.h5");
    f = h5_open(p, H5F_ACC_RDWR);
    CHECK(H5Adelete(f, "version") >= 0);
    H5Fclose(f);
    EXPECT_READ_ERROR(p, "version");
}

/* Replaces (text != NULL) or deletes the hf_config attribute, the model's config.json. */
static void set_hf_config(const char *path, const char *text)
{
    hid_t f = h5_open(path, H5F_ACC_RDWR);
    CHECK(H5Adelete(f, "hf_config") >= 0);
    if (text) {
        hid_t t = H5Tcopy(H5T_C_S1), s = H5Screate(H5S_SCALAR);
        H5Tset_size(t, strlen(text) + 1);
        hid_t a = H5Acreate2(f, "hf_config", t, s, H5P_DEFAULT, H5P_DEFAULT);
        CHECK(a >= 0 && H5Awrite(a, t, text) >= 0);
        H5Aclose(a);
        H5Sclose(s);
        H5Tclose(t);
    }
    H5Fclose(f);
}

/* Checkpoints written before the model interface carry GPT-2's shape as attributes and no
 * hf_config: they still resume. A broken or foreign hf_config is an error naming it. */
static void test_model_config_attribute(void)
{
    const char *p = damaged("legacy.h5");
    set_hf_config(p, NULL);
    char err[1024] = "";
    ct_model_config cfg, want = tiny;
    CHECK(ct_ckpt_read_config(p, &cfg, err, sizeof err) == 0);
    CHECK(ct_model_config_check(&want, err, sizeof err) == 0);
    CHECK(ct_model_config_same(&cfg, &want));
    ct_model *m, *m2;
    ct_optim *o, *o2;
    make(&tiny, 41, &m, &o);
    make(&tiny, 42, &m2, &o2);
    ct_ckpt_state st1 = {0}, st2 = {0};
    CHECK(ct_ckpt_read(p, m, o, &st1, comm, err, sizeof err) == 0);
    CHECK(ct_ckpt_read(good, m2, o2, &st2, comm, err, sizeof err) == 0);
    snapshot a = take(m, o), b = take(m2, o2);
    CHECK(same(&a, &b));
    drop(&a);
    drop(&b);
    destroy(m, o);
    destroy(m2, o2);

    p = damaged("hf_config_broken.h5");
    set_hf_config(p, "{\"model_type\": ");
    EXPECT_CONFIG_ERROR(p, "hf_config", "malformed");
    EXPECT_READ_ERROR(p, "hf_config");
    p = damaged("hf_config_llama.h5");
    set_hf_config(p, "{\"model_type\": \"llama\", \"vocab_size\": 13, \"hidden_size\": 8, \"num_hidden_layers\": 2, "
                     "\"num_attention_heads\": 2, \"intermediate_size\": 32, \"max_position_embeddings\": 8}");
    EXPECT_READ_ERROR(p, "llama", "is not this config's");
}

static void test_not_a_checkpoint(void)
{
    /* random bytes */
    const char *p = tmp_path("random.h5");
    unsigned char junk[4096];
    uint64_t seed = 3;
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)ct_test_rand_u64(&seed);
    write_bytes(p, junk, sizeof junk);
    EXPECT_READ_ERROR(p, "not a readable HDF5 file");
    EXPECT_CONFIG_ERROR(p, "not a readable HDF5 file");

    /* empty */
    p = tmp_path("empty.h5");
    write_bytes(p, "", 0);
    EXPECT_READ_ERROR(p, "");
    EXPECT_CONFIG_ERROR(p, "");

    /* missing */
    p = tmp_path("no_such_file.h5");
    EXPECT_READ_ERROR(p, "cannot open");
    EXPECT_CONFIG_ERROR(p, "cannot open");

    /* an HDF5 file, but not ours: no format attribute, then another format */
    p = tmp_path("foreign.h5");
    hid_t f = H5Fcreate(p, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(f >= 0);
    hsize_t n = 4;
    hid_t s = H5Screate_simple(1, &n, NULL);
    hid_t d = H5Dcreate2(f, "tokens", H5T_STD_I32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int32_t tok[4] = {1, 2, 3, 4};
    CHECK(d >= 0 && H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tok) >= 0);
    H5Dclose(d);
    H5Sclose(s);
    H5Fclose(f);
    EXPECT_READ_ERROR(p, "format", "ctrain-checkpoint");
    EXPECT_CONFIG_ERROR(p, "format");

    p = damaged("other_format.h5");
    f = h5_open(p, H5F_ACC_RDWR);
    CHECK(H5Adelete(f, "format") >= 0);
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, 8);
    s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, "format", t, s, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(a >= 0 && H5Awrite(a, t, "ctrain-x") >= 0);
    H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
    H5Fclose(f);
    EXPECT_READ_ERROR(p, "format");

    /* a directory */
    p = tmp_path("adir.h5");
    mkdir(p, 0777);
    EXPECT_READ_ERROR(p, "");
}

/* ---------------------------------------------------------------- 3. the HDF5 format and its metadata */

static unsigned superblock_version(const char *path)
{
    hid_t f = h5_open(path, H5F_ACC_RDONLY);
    H5F_info2_t info;
    unsigned v = H5Fget_info2(f, &info) >= 0 ? info.super.version : 99;
    H5Fclose(f);
    return v;
}

/* Checkpoints are written in HDF5 1.10's format: superblock v3 and v2 object headers, whose
 * checksums HDF5 verifies (v0/v1, the earliest format, have none). */
static void test_checksummed_format(void)
{
    CHECK(superblock_version(good) == 3);
    hid_t f = h5_open(good, H5F_ACC_RDONLY);
    const char *name = "/model/transformer.wte.weight";
#if H5_VERSION_GE(1, 12, 0)
    H5O_native_info_t info;
    CHECK(H5Oget_native_info_by_name(f, name, &info, H5O_NATIVE_INFO_HDR, H5P_DEFAULT) >= 0 && info.hdr.version == 2);
#else
    H5O_info_t info;
    CHECK(H5Oget_info_by_name2(f, name, &info, H5O_INFO_HDR, H5P_DEFAULT) >= 0 && info.hdr.version == 2);
#endif
    H5Fclose(f);
}

static herr_t copy_attr(hid_t loc, const char *name, const H5A_info_t *info, void *out)
{
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT), t = H5Aget_type(a), s = H5Aget_space(a);
    hsize_t n = H5Aget_storage_size(a);
    void *buf = malloc(n ? n : 1);
    hid_t b = H5Acreate2(*(hid_t *)out, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = buf && a >= 0 && b >= 0 && H5Aread(a, t, buf) >= 0 && H5Awrite(b, t, buf) >= 0 ? 0 : -1;
    free(buf);
    H5Aclose(b);
    H5Aclose(a);
    H5Tclose(t);
    H5Sclose(s);
    return rc;
}

/* A copy of src in HDF5's earliest format (superblock v0, v1 object headers, symbol-table
 * groups), as ctrain wrote checkpoints before their metadata was checksummed. */
static void write_legacy(const char *src, const char *dst)
{
    hid_t in = h5_open(src, H5F_ACC_RDONLY), out = H5Fcreate(dst, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(out >= 0 && H5Aiterate2(in, H5_INDEX_NAME, H5_ITER_INC, NULL, copy_attr, &out) >= 0);
    CHECK(H5Ocopy(in, "model", out, "model", H5P_DEFAULT, H5P_DEFAULT) >= 0);
    CHECK(H5Ocopy(in, "optimizer", out, "optimizer", H5P_DEFAULT, H5P_DEFAULT) >= 0);
    H5Fclose(out);
    H5Fclose(in);
}

/* A checkpoint written before (the earliest format) still resumes, exactly. */
static void test_legacy_format_resumes(void)
{
    const char *p = tmp_path("legacy_format.h5");
    write_legacy(good, p);
    CHECK(superblock_version(p) == 0);
    ct_model *m;
    ct_optim *o;
    make(&tiny, 61, &m, &o);
    ct_ckpt_state st = {0};
    char err[1024] = "";
    CHECK(ct_ckpt_read(p, m, o, &st, comm, err, sizeof err) == 0);
    if (err[0]) fprintf(stderr, "  legacy read: %s\n", err);
    snapshot a = take(src_m, src_o), b = take(m, o);
    CHECK(same(&a, &b));
    CHECK(same_state(&st, &src_st));
    drop(&a);
    drop(&b);
    destroy(m, o);
    /* and its data is still verified */
    flip_data_byte(p, "/model/transformer.wpe.weight");
    EXPECT_READ_ERROR(p, "/model/transformer.wpe.weight", "checksum mismatch");
}

typedef struct {
    uint64_t lo, hi;
} range;

static int cmp_range(const void *a, const void *b)
{
    uint64_t x = ((const range *)a)->lo, y = ((const range *)b)->lo;
    return x < y ? -1 : x > y;
}

/* The byte ranges of path that hold no tensor data (superblock, object headers, heaps, B-trees,
 * free space), sorted; returns their count. */
static int metadata_ranges(const char *path, ct_model *m, range *out, int cap)
{
    static const char *const groups[] = {"model", "optimizer/master", "optimizer/exp_avg", "optimizer/exp_avg_sq"};
    ct_trainable tr = ct_model_trainable(m);
    int nd = 0, n = 0;
    range *data = calloc((size_t)tr.ntensors * 4, sizeof *data);
    hid_t f = h5_open(path, H5F_ACC_RDONLY);
    for (int g = 0; g < 4; g++) {
        for (int i = 0; i < tr.ntensors; i++) {
            char name[300];
            snprintf(name, sizeof name, "/%s/%s", groups[g], tr.tensors[i].name);
            hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
            haddr_t at = H5Dget_offset(d);
            CHECK(d >= 0 && at != HADDR_UNDEF);
            data[nd++] = (range){at, at + H5Dget_storage_size(d)};
            H5Dclose(d);
        }
    }
    H5Fclose(f);
    qsort(data, (size_t)nd, sizeof *data, cmp_range);
    struct stat sb;
    stat(path, &sb);
    uint64_t at = 0;
    for (int i = 0; i <= nd && n < cap; i++) {
        uint64_t end = i < nd ? data[i].lo : (uint64_t)sb.st_size;
        if (end > at) out[n++] = (range){at, end};
        if (i < nd && data[i].hi > at) at = data[i].hi;
    }
    free(data);
    return n;
}

/* Byte flips in a checkpoint's header (its first 4 KiB) and anywhere in its metadata, 1000
 * deterministic seeds: each damaged copy either fails to read with an error naming it (the
 * target model, optimizer and run state untouched) or, where the flips hit bytes nothing reads,
 * reads back exactly what was saved, config and run state included. Never a crash: under
 * ASan/UBSan (test_checkpoint_asan) an out-of-bounds access fails the test. */
static void test_fuzz_headers(void)
{
    /* a resolved config as long as a real one with long paths: over the 4 KiB above which a
     * fractal heap would store an attribute's value without a checksum */
    char *long_json = malloc(8192);
    int len = snprintf(long_json, 8192, "{\"run\": {\"dir\": \"");
    while (len < 6000) len += snprintf(long_json + len, (size_t)(8192 - len), "/a/long/path/of/a/run");
    snprintf(long_json + len, (size_t)(8192 - len), "\"}, \"model\": {\"n_embd\": 8}}");
    const char *orig = tmp_path("fuzz_good.h5"), *p = tmp_path("fuzz.h5");
    char err[2048] = "";
    CHECK(ct_ckpt_write(orig, src_m, src_o, &src_st, long_json, comm, err, sizeof err) == 0);
    size_t n;
    unsigned char *bytes = slurp(orig, &n), *copy = malloc(n);
    range meta[4096];
    int nmeta = metadata_ranges(orig, src_m, meta, 4096);
    uint64_t meta_bytes = 0;
    for (int i = 0; i < nmeta; i++) meta_bytes += meta[i].hi - meta[i].lo;
    CHECK(bytes && copy && nmeta > 0 && meta_bytes > 4096);
    snapshot want = take(src_m, src_o);
    ct_model_config want_cfg = tiny;
    CHECK(ct_model_config_check(&want_cfg, err, sizeof err) == 0);
    int rejected = 0, intact = 0, failures0 = ct_test_failures;
    for (uint64_t seed = 1; seed <= 1000 && bytes && copy && ct_test_failures - failures0 < 5; seed++) {
        uint64_t r = seed * 0x5851F42D4C957F2Dull;
        memcpy(copy, bytes, n);
        int flips = 1 + (int)(ct_test_rand_u64(&r) % 4), burst = seed % 5 == 0;
        for (int k = 0; k < flips; k++) {
            uint64_t at;
            if (seed % 2) { /* the header: superblock, root object header */
                at = ct_test_rand_u64(&r) % (n < 4096 ? n : 4096);
            } else { /* anywhere in the metadata */
                uint64_t i = ct_test_rand_u64(&r) % meta_bytes;
                int j = 0;
                while (i >= meta[j].hi - meta[j].lo) i -= meta[j].hi - meta[j].lo, j++;
                at = meta[j].lo + i;
            }
            for (uint64_t b = at; b < n && b < at + (burst ? 16 : 1); b++)
                copy[b] ^= (unsigned char)(1 + ct_test_rand_u64(&r) % 255);
        }
        write_bytes(p, copy, n);

        ct_model_config cfg;
        err[0] = 0;
        if (ct_ckpt_read_config(p, &cfg, err, sizeof err) == 0) {
            if (!ct_model_config_same(&cfg, &want_cfg)) {
                fprintf(stderr, "seed %llu: ct_ckpt_read_config read another model\n", (unsigned long long)seed);
                ct_test_failures++;
            }
        } else if (!strstr(err, p)) {
            fprintf(stderr, "seed %llu: config error without the file's name: %s\n", (unsigned long long)seed, err);
            ct_test_failures++;
        }
        err[0] = 0;
        char *json = ct_ckpt_read_config_json(p, err, sizeof err);
        if (json ? strcmp(json, long_json) != 0 : !strstr(err, p)) {
            fprintf(stderr, "seed %llu: ct_ckpt_read_config_json: %s\n", (unsigned long long)seed,
                    json ? "another config, undetected" : err);
            ct_test_failures++;
        }
        free(json);

        snapshot before = take(dst_m, dst_o);
        ct_ckpt_state st0 = {.step = 42}, st = st0;
        err[0] = 0;
        int rc = ct_ckpt_read(p, dst_m, dst_o, &st, comm, err, sizeof err);
        snapshot after = take(dst_m, dst_o);
        if (rc == 0) {
            intact++;
            if (!same(&after, &want) || !same_state(&st, &src_st)) {
                fprintf(stderr, "seed %llu: a damaged checkpoint read without an error, with other values\n",
                        (unsigned long long)seed);
                ct_test_failures++;
            }
        } else {
            rejected++;
            if (rc != -1 || !strstr(err, p) || !same(&before, &after) || !same_state(&st, &st0)) {
                fprintf(stderr, "seed %llu: read returned %d (%s)%s\n", (unsigned long long)seed, rc, err,
                        same(&before, &after) ? "" : ", and changed the target");
                ct_test_failures++;
            }
        }
        drop(&before);
        drop(&after);
    }
    printf("fuzz: %d damaged copies refused with the file's name, %d read back exactly (%d metadata ranges, %llu "
           "bytes)\n", rejected, intact, nmeta, (unsigned long long)meta_bytes);
    CHECK(rejected > 900);
    drop(&want);
    free(bytes);
    free(copy);
    free(long_json);
}

/* After all the failures above, the good file still reads into the same target. */
static void test_target_still_usable(void)
{
    char err[1024] = "";
    ct_ckpt_state st = {0};
    CHECK(ct_ckpt_read(good, dst_m, dst_o, &st, comm, err, sizeof err) == 0);
    snapshot a = take(src_m, src_o), b = take(dst_m, dst_o);
    CHECK(same(&a, &b));
    CHECK(same_state(&st, &src_st));
    drop(&a);
    drop(&b);
}

/* ---------------------------------------------------------------- LoRA: the base is recorded */

/* A base from seed (and one weight nudged when nudge), adapters on c_attn, an optimizer on them. */
static void make_lora(uint64_t seed, int nudge, ct_model **m, ct_optim **o)
{
    char err[512];
    ct_lora_spec s = {.targets = "c_attn", .r = 2, .alpha = 4.0f};
    *m = NULL, *o = NULL;
    if (ct_model_init(m, &tiny, be, ctx, B, T, 1, err, sizeof err)) exit(2);
    ct_model_init_weights(*m, seed);
    if (nudge) ((float *)ct_model_params(*m))[3] += 0.25f;
    if (ct_lora_add(*m, &s, 5, 1, err, sizeof err) || ct_optim_init(o, *m, comm, 1, 0, err, sizeof err)) {
        fprintf(stderr, "lora: %s\n", err);
        exit(2);
    }
}

static void test_lora_base(void)
{
    ct_model *m, *same, *other;
    ct_optim *o, *so, *oo;
    make_lora(1, 0, &m, &o);
    ct_ckpt_state st = {.step = 1, .world = 1, .zero_stage = 1};
    char err[1024] = "";
    const char *path = tmp_path("lora.h5");
    CHECK(ct_ckpt_write(path, m, o, &st, config_json, comm, err, sizeof err) == 0);
    make_lora(1, 0, &same, &so);
    CHECK(ct_ckpt_read(path, same, so, &st, comm, err, sizeof err) == 0);
    if (err[0]) fprintf(stderr, "  same base: %s\n", err);
    /* a base of the same shape with one weight changed: the adapters are not its */
    make_lora(1, 1, &other, &oo);
    CHECK(ct_ckpt_read(path, other, oo, &st, comm, err, sizeof err) == -1);
    CHECK_MESSAGE(err, "lora.h5: attribute lora_base", "trained on another base model");
    destroy(other, oo);
    destroy(same, so);
    destroy(m, o);
}

int main(void)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the test's own HDF5 calls fail on purpose */
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ct_checkpoint_XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 2; }
    be = ct_backend_cpu();
    ctx = be->kctx_init(0);
    comm = ct_comm_init_single();
    if (!ctx || !comm) { fprintf(stderr, "cannot start the cpu backend\n"); return 2; }

    write_good();
    test_round_trip();
    test_run_dir();
    test_rotation_spares_other_files();

    make(&tiny, 7, &dst_m, &dst_o);
    train(dst_m, dst_o, 2, 21);
    test_truncated();
    test_flipped_bytes();
    test_missing_datasets();
    test_wrong_model();
    test_version();
    test_model_config_attribute();
    test_not_a_checkpoint();
    test_checksummed_format();
    test_legacy_format_resumes();
    test_fuzz_headers();
    test_target_still_usable();
    test_lora_base();

    destroy(dst_m, dst_o);
    destroy(src_m, src_o);
    free((void *)good);
    ct_comm_free(comm);
    be->kctx_free(ctx);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    return ct_test_finish("test_checkpoint");
}
