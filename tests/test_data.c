/* test_data.c — the data module through its public API: dataset round trips and partial reads,
 * malformed files (each a clear error naming file and field), the prepare step, and the loader's
 * contract (world-size independence, epoch coverage, seeding, targets and masks, resumable
 * cursor, errors). Malformed HDF5 files are built with the HDF5 C API directly. */
#include "check.h"
#include "data.h"

#include <hdf5.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ERRLEN 512




/* A dataset meta with a made-up digest (a pointer into one static slot: use it at once). */
static const ct_dataset_meta *meta(const char *tokenizer, int vocab_size)
{
    static ct_dataset_meta m;
    memset(&m, 0, sizeof m);
    snprintf(m.tokenizer, sizeof m.tokenizer, "%s", tokenizer);
    snprintf(m.digest, sizeof m.digest, "%s", strcmp(tokenizer, "bytes") ? "0123456789abcdef" : CT_TOK_BYTES_DIGEST);
    m.vocab_size = vocab_size;
    snprintf(m.packing, sizeof m.packing, "plain");
    return &m;
}


/* The call must fail (-1) with a message containing both strings. */
#define CHECK_FAILS(call, err, s1, s2)                                                             \
    do {                                                                                           \
        (err)[0] = 0;                                                                              \
        int rc_ = (call);                                                                          \
        int ok_ = rc_ == -1 && strstr((err), (s1)) && strstr((err), (s2));                         \
        CHECK(ok_);                                                                                \
        if (ok_) printf("  expected error: %s\n", (err));                                          \
        else fprintf(stderr, "  rc %d, message \"%s\", wanted \"%s\" and \"%s\"\n", rc_, (err), (s1), (s2)); \
    } while (0)

/* ---- HDF5 files built by hand, good or broken in one chosen way */
typedef struct {
    int tokens_rank;     /* 0: no /tokens */
    hid_t tokens_type;
    size_t n;
    long long bad_at;    /* position whose token becomes bad_value, -1: none */
    long long bad_value;
    long mask_len;       /* -1: no /loss_mask */
    int tokenizer;       /* 0: missing, 1: variable-length string, 2: fixed-length string, 3: an integer */
    int has_vocab;
    long long vocab;
} spec;

static spec good_spec(size_t n)
{
    spec s = {1, H5T_STD_U32LE, n, -1, 0, -1, 1, 1, 1000};
    return s;
}

static void h5_1d(hid_t file, const char *name, hid_t type, int rank, size_t n, const long long *v)
{
    hsize_t dims[2] = {rank == 2 ? n / 2 : n, 2};
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(file, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (d < 0 || H5Dwrite(d, H5T_NATIVE_LLONG, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0) {
        fprintf(stderr, "cannot build test dataset %s\n", name);
        exit(2);
    }
    H5Dclose(d);
    H5Sclose(sp);
}

static void make_h5(const char *path, spec s)
{
    long long *v = calloc(s.n + 1, sizeof *v);
    for (size_t i = 0; i < s.n; i++) v[i] = (long long)(i % 50);
    if (s.bad_at >= 0) v[s.bad_at] = s.bad_value;
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (s.tokens_rank) h5_1d(f, "tokens", s.tokens_type, s.tokens_rank, s.n, v);
    if (s.mask_len >= 0) {
        for (long i = 0; i < s.mask_len; i++) v[i] = 1;
        h5_1d(f, "loss_mask", H5T_STD_U8LE, 1, (size_t)s.mask_len, v);
    }
    hid_t scalar = H5Screate(H5S_SCALAR);
    if (s.tokenizer == 1 || s.tokenizer == 2) {
        const char *name = "gpt2";
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, s.tokenizer == 1 ? H5T_VARIABLE : 8); /* fixed: "gpt2" null-padded to 8 */
        hid_t a = H5Acreate2(f, "tokenizer", t, scalar, H5P_DEFAULT, H5P_DEFAULT);
        char fixed[8] = "gpt2";
        H5Awrite(a, t, s.tokenizer == 1 ? (const void *)&name : (const void *)fixed);
        H5Aclose(a);
        H5Tclose(t);
    } else if (s.tokenizer == 3) {
        int x = 7;
        hid_t a = H5Acreate2(f, "tokenizer", H5T_STD_I32LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_INT, &x);
        H5Aclose(a);
    }
    if (s.has_vocab) {
        hid_t a = H5Acreate2(f, "vocab_size", H5T_STD_I64LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_LLONG, &s.vocab);
        H5Aclose(a);
    }
    H5Sclose(scalar);
    H5Fclose(f);
    free(v);
}

/* The stored type of a dataset: class, size in bytes, signedness. */
static void h5_type_of(const char *path, const char *name, H5T_class_t *cls, size_t *size, H5T_sign_t *sign)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t t = H5Dget_type(d);
    *cls = H5Tget_class(t);
    *size = H5Tget_size(t);
    *sign = H5Tget_sign(t);
    H5Tclose(t);
    H5Dclose(d);
    H5Fclose(f);
}

/* /doc_offsets as uint64; returns how many (at most cap), -1 when absent. */
static long h5_doc_offsets(const char *path, uint64_t *out, size_t cap)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (H5Lexists(f, "doc_offsets", H5P_DEFAULT) <= 0) {
        H5Fclose(f);
        return -1;
    }
    hid_t d = H5Dopen2(f, "doc_offsets", H5P_DEFAULT);
    hid_t sp = H5Dget_space(d);
    hsize_t n;
    H5Sget_simple_extent_dims(sp, &n, NULL);
    if (n <= cap) H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
    H5Sclose(sp);
    H5Dclose(d);
    H5Fclose(f);
    return (long)n;
}

/* ---- datasets */

static void test_roundtrip(void)
{
    char err[ERRLEN];
    const size_t n = 1000;
    uint64_t rng = 1;
    uint32_t *tok = malloc(n * sizeof *tok), *got = malloc(n * sizeof *got);
    uint8_t *mask = malloc(n), *gmask = malloc(n);
    for (size_t i = 0; i < n; i++) {
        tok[i] = (uint32_t)(ct_test_rand_u64(&rng) % 50257);
        mask[i] = (uint8_t)(ct_test_rand_u64(&rng) & 1);
    }
    uint64_t docs[3] = {0, 100, 517};
    const char *p = ct_test_path("rt.h5");
    CHECK(ct_dataset_write(p, tok, n, mask, docs, 3, meta("gpt2", 50257), err, ERRLEN) == 0);
    CHECK(access(ct_test_path("rt.h5.tmp"), F_OK) != 0); /* renamed, nothing left behind */

    ct_dataset *ds = NULL;
    CHECK(ct_dataset_open(&ds, p, err, ERRLEN) == 0);
    if (!ds) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    CHECK(strcmp(ct_dataset_path(ds), p) == 0);
    CHECK(ct_dataset_len(ds) == n);
    CHECK(ct_dataset_vocab_size(ds) == 50257);
    CHECK(strcmp(ct_dataset_tokenizer(ds), "gpt2") == 0);
    CHECK(ct_dataset_has_mask(ds) == 1);
    CHECK(ct_dataset_read(ds, 0, n, got, gmask, err, ERRLEN) == 0);
    CHECK(memcmp(got, tok, n * sizeof *tok) == 0);
    CHECK(memcmp(gmask, mask, n) == 0);
    /* a partial range lands at the start of the buffers, the rest untouched */
    memset(got, 0xEE, n * sizeof *got);
    memset(gmask, 0xEE, n);
    CHECK(ct_dataset_read(ds, 123, 77, got, gmask, err, ERRLEN) == 0);
    CHECK(memcmp(got, tok + 123, 77 * sizeof *tok) == 0);
    CHECK(memcmp(gmask, mask + 123, 77) == 0);
    CHECK(got[77] == 0xEEEEEEEEu && gmask[77] == 0xEE);
    CHECK(ct_dataset_read(ds, n - 1, 1, got, NULL, err, ERRLEN) == 0 && got[0] == tok[n - 1]);
    CHECK_FAILS(ct_dataset_read(ds, 990, 11, got, gmask, err, ERRLEN), err, p, "beyond its 1000 tokens");
    ct_dataset_close(ds);

    /* stored types, as other tools (h5py) see them */
    H5T_class_t cls;
    size_t size;
    H5T_sign_t sign;
    h5_type_of(p, "tokens", &cls, &size, &sign);
    CHECK(cls == H5T_INTEGER && size == 4 && sign == H5T_SGN_NONE);
    h5_type_of(p, "loss_mask", &cls, &size, &sign);
    CHECK(cls == H5T_INTEGER && size == 1 && sign == H5T_SGN_NONE);
    h5_type_of(p, "doc_offsets", &cls, &size, &sign);
    CHECK(cls == H5T_INTEGER && size == 8 && sign == H5T_SGN_NONE);
    uint64_t gdocs[8];
    CHECK(h5_doc_offsets(p, gdocs, 8) == 3 && memcmp(gdocs, docs, sizeof docs) == 0);

    /* without a mask: has_mask 0 and a mask of all 1 */
    const char *q = ct_test_path("nomask.h5");
    CHECK(ct_dataset_write(q, tok, n, NULL, NULL, 0, meta("bytes", 50257), err, ERRLEN) == 0);
    CHECK(ct_dataset_open(&ds, q, err, ERRLEN) == 0);
    if (ds) {
        CHECK(ct_dataset_has_mask(ds) == 0);
        memset(gmask, 7, n);
        CHECK(ct_dataset_read(ds, 10, 500, got, gmask, err, ERRLEN) == 0);
        int all1 = 1;
        for (size_t i = 0; i < 500; i++) all1 &= gmask[i] == 1;
        CHECK(all1);
        CHECK(memcmp(got, tok + 10, 500 * sizeof *tok) == 0);
        ct_dataset_close(ds);
    }
    CHECK(h5_doc_offsets(q, gdocs, 8) == -1);

    /* the writer refuses what the opener or loader would reject */
    tok[37] = 50257;
    CHECK_FAILS(ct_dataset_write(ct_test_path("w1.h5"), tok, n, NULL, NULL, 0, meta("gpt2", 50257), err, ERRLEN), err,
                "w1.h5", "position 37");
    CHECK(access(ct_test_path("w1.h5"), F_OK) != 0 && access(ct_test_path("w1.h5.tmp"), F_OK) != 0);
    CHECK_FAILS(ct_dataset_write(ct_test_path("w2.h5"), tok, 0, NULL, NULL, 0, meta("gpt2", 50257), err, ERRLEN), err,
                "w2.h5", "/tokens");
    uint64_t bad_docs[2] = {5, 5};
    tok[37] = 1;
    CHECK_FAILS(ct_dataset_write(ct_test_path("w3.h5"), tok, n, NULL, bad_docs, 2, meta("gpt2", 50257), err, ERRLEN), err,
                "w3.h5", "/doc_offsets");
    CHECK_FAILS(ct_dataset_write(ct_test_path("nodir/w4.h5"), tok, n, NULL, NULL, 0, meta("gpt2", 50257), err, ERRLEN), err,
                "nodir/w4.h5", "No such file");
    free(tok);
    free(got);
    free(mask);
    free(gmask);
}

/* Adds /loss_mask as h5py stores a numpy bool array: a 1-byte enum {FALSE = 0, TRUE = 1}. */
static void add_bool_mask(const char *path, size_t n)
{
    int8_t v = 0, *m = malloc(n);
    for (size_t i = 0; i < n; i++) m[i] = (int8_t)(i % 3 != 0);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t t = H5Tenum_create(H5T_NATIVE_INT8);
    H5Tenum_insert(t, "FALSE", &v);
    v = 1;
    H5Tenum_insert(t, "TRUE", &v);
    hsize_t dim = n;
    hid_t sp = H5Screate_simple(1, &dim, NULL);
    hid_t d = H5Dcreate2(f, "loss_mask", t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, m);
    H5Dclose(d);
    H5Sclose(sp);
    H5Tclose(t);
    H5Fclose(f);
    free(m);
}

/* Files from other writers: int64 tokens (numpy's default), a fixed-length tokenizer string and
 * a bool loss mask are accepted; a token that does not fit uint32 is an error on read, never
 * clamped. */
static void test_foreign_types(void)
{
    char err[ERRLEN];
    ct_dataset *ds = NULL;
    spec s = good_spec(100);
    s.tokens_type = H5T_STD_I64LE;
    s.tokenizer = 2;
    const char *p = ct_test_path("int64.h5");
    make_h5(p, s);
    add_bool_mask(p, 100);
    CHECK(ct_dataset_open(&ds, p, err, ERRLEN) == 0);
    if (ds) {
        uint32_t got[100];
        uint8_t mask[100];
        CHECK(strcmp(ct_dataset_tokenizer(ds), "gpt2") == 0);
        CHECK(ct_dataset_vocab_size(ds) == 1000);
        CHECK(ct_dataset_has_mask(ds) == 1);
        CHECK(ct_dataset_read(ds, 0, 100, got, mask, err, ERRLEN) == 0);
        int same = 1;
        for (int i = 0; i < 100; i++) same &= got[i] == (uint32_t)(i % 50) && mask[i] == (i % 3 != 0);
        CHECK(same);
        ct_dataset_close(ds);
    }
    s.bad_at = 60;
    s.bad_value = -3;
    p = ct_test_path("negative.h5");
    make_h5(p, s);
    CHECK(ct_dataset_open(&ds, p, err, ERRLEN) == 0);
    if (ds) {
        uint32_t got[100];
        CHECK(ct_dataset_read(ds, 0, 50, got, NULL, err, ERRLEN) == 0);
        CHECK_FAILS(ct_dataset_read(ds, 50, 20, got, NULL, err, ERRLEN), err, p, "out of range");
        ct_dataset_close(ds);
    }
    s.bad_value = 1ll << 33;
    p = ct_test_path("huge.h5");
    make_h5(p, s);
    CHECK(ct_dataset_open(&ds, p, err, ERRLEN) == 0);
    if (ds) {
        uint32_t got[100];
        CHECK_FAILS(ct_dataset_read(ds, 0, 100, got, NULL, err, ERRLEN), err, p, "/tokens: a value in [0, 100)");
        ct_dataset_close(ds);
    }
}

static void test_malformed(void)
{
    char err[ERRLEN];
    ct_dataset *ds = (ct_dataset *)&ds; /* must come back NULL */
    const char *p;

    p = ct_test_path("missing.h5");
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "No such file");
    CHECK(ds == NULL);

    p = ct_test_path("text.h5");
    ct_test_write_file(p, "just some text, not HDF5\n", 25);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "not an HDF5 file");

    /* an HDF5 file cut short: HDF5 itself notices; the message still names the file */
    p = ct_test_path("truncated.h5");
    make_h5(p, good_spec(5000));
    CHECK(truncate(p, 3000) == 0);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "HDF5");

    spec s = good_spec(100);
    s.tokens_rank = 0;
    make_h5(p = ct_test_path("notokens.h5"), s);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "/tokens: missing");

    s = good_spec(100);
    s.tokens_rank = 2;
    make_h5(p = ct_test_path("tokens2d.h5"), s);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "/tokens: has 2 dimensions");

    s = good_spec(100);
    s.tokens_type = H5T_IEEE_F32LE;
    make_h5(p = ct_test_path("float.h5"), s);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "/tokens: has float type");

    s = good_spec(100);
    s.mask_len = 99;
    make_h5(p = ct_test_path("masklen.h5"), s);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "/loss_mask: has 99 entries");

    s = good_spec(100);
    s.has_vocab = 0;
    make_h5(p = ct_test_path("novocab.h5"), s);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "vocab_size: missing");

    s = good_spec(100);
    s.vocab = 0;
    make_h5(p = ct_test_path("vocab0.h5"), s);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "vocab_size: 0");

    s = good_spec(100);
    s.tokenizer = 0;
    make_h5(p = ct_test_path("notok.h5"), s);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "tokenizer: missing");

    s = good_spec(100);
    s.tokenizer = 3;
    make_h5(p = ct_test_path("inttok.h5"), s);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "tokenizer: has integer type");

    /* the good spec itself opens: the failures above come from the one broken part */
    make_h5(p = ct_test_path("good.h5"), good_spec(100));
    ds = NULL;
    CHECK(ct_dataset_open(&ds, p, err, ERRLEN) == 0 && ds && ct_dataset_len(ds) == 100);
    ct_dataset_close(ds);
}

/* ---- what reads as zeros without an error in HDF5, and files that are no datasets */

/* Replaces /name of the file at path (a good dataset) with a 1-D uint32 dataset of n values that
 * is created but never written (h5py's create_dataset without data), or, with chunk > 0, chunked
 * and written only in its first chunk. */
static void unwritten(const char *path, const char *name, size_t n, size_t chunk)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, name, H5P_DEFAULT);
    hsize_t dim = n, ch = chunk;
    hid_t sp = H5Screate_simple(1, &dim, NULL), pl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunk) H5Pset_chunk(pl, 1, &ch);
    hid_t d = H5Dcreate2(f, name, H5T_STD_U32LE, sp, H5P_DEFAULT, pl, H5P_DEFAULT);
    if (chunk) {
        uint32_t *v = calloc(chunk, sizeof *v);
        hsize_t off = 0;
        hid_t mem = H5Screate_simple(1, &ch, NULL);
        H5Sselect_hyperslab(sp, H5S_SELECT_SET, &off, NULL, &ch, NULL);
        H5Dwrite(d, H5T_NATIVE_UINT32, mem, sp, H5P_DEFAULT, v);
        H5Sclose(mem);
        free(v);
    }
    H5Dclose(d), H5Pclose(pl), H5Sclose(sp), H5Fclose(f);
}

/* A virtual /tokens of n values in a copy of a good dataset: maps[i] = {virtual start, count,
 * source start} from dataset src_name of file src. */
static void virtual_tokens(const char *path, size_t n, const char *src, const char *src_name, const size_t (*maps)[3],
                           int nmaps)
{
    make_h5(path, good_spec(10));
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "tokens", H5P_DEFAULT);
    hsize_t dim = n, big = 1000;
    hid_t vs = H5Screate_simple(1, &dim, NULL), ss = H5Screate_simple(1, &big, NULL), pl = H5Pcreate(H5P_DATASET_CREATE);
    for (int i = 0; i < nmaps; i++) {
        hsize_t vo = maps[i][0], c = maps[i][1], so = maps[i][2];
        H5Sselect_hyperslab(vs, H5S_SELECT_SET, &vo, NULL, &c, NULL);
        H5Sselect_hyperslab(ss, H5S_SELECT_SET, &so, NULL, &c, NULL);
        H5Pset_virtual(pl, vs, src, src_name, ss);
    }
    H5Sselect_all(vs);
    hid_t d = H5Dcreate2(f, "tokens", H5T_STD_U32LE, vs, H5P_DEFAULT, pl, H5P_DEFAULT);
    if (d < 0) {
        fprintf(stderr, "cannot build a virtual dataset in %s\n", path);
        exit(2);
    }
    H5Dclose(d), H5Pclose(pl), H5Sclose(ss), H5Sclose(vs), H5Fclose(f);
}

/* Sets every value of /loss_mask in the file at path to 0. */
static void zero_mask(const char *path)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT), d = H5Dopen2(f, "loss_mask", H5P_DEFAULT), sp = H5Dget_space(d);
    hsize_t n;
    H5Sget_simple_extent_dims(sp, &n, NULL);
    uint8_t *z = calloc((size_t)n, 1);
    H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, z);
    free(z);
    H5Sclose(sp), H5Dclose(d), H5Fclose(f);
}

static void test_strict_files(void)
{
    char err[ERRLEN];
    ct_dataset *ds = NULL;
    const char *p;

    /* a FIFO: HDF5's open would wait for a writer forever (the alarm ends the test if it does) */
    p = ct_test_path("fifo.h5");
    CHECK(mkfifo(p, 0600) == 0);
    alarm(60);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, p, "not a regular file");
    alarm(0);
    unlink(p);

    /* created, never written: every token would read as 0 */
    make_h5(p = ct_test_path("unwritten.h5"), good_spec(100));
    unwritten(p, "tokens", 100, 0);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, "unwritten.h5: /tokens: never written", "100 values");
    make_h5(p = ct_test_path("halfwritten.h5"), good_spec(100));
    unwritten(p, "tokens", 100, 50);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, "halfwritten.h5: /tokens: only partly written", "chunks");
    spec s = good_spec(100);
    s.mask_len = 100;
    make_h5(p = ct_test_path("unwrittenmask.h5"), s);
    unwritten(p, "loss_mask", 100, 0);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, "unwrittenmask.h5: /loss_mask: never written", "zeros");

    /* virtual datasets: a good one reads its source; a missing source, an unmapped stretch, a
     * missing or short source dataset are refused (HDF5 reads each as zeros) */
    const char *src = ct_test_path("vsrc.h5");
    make_h5(src, good_spec(100));
    static const size_t whole[][3] = {{0, 60, 40}, {60, 40, 0}};
    virtual_tokens(p = ct_test_path("virtual.h5"), 100, "vsrc.h5", "tokens", whole, 2);
    ds = NULL;
    int opened = ct_dataset_open(&ds, p, err, ERRLEN) == 0;
    CHECK(opened && ct_dataset_len(ds) == 100);
    if (!opened) fprintf(stderr, "  virtual: %s\n", err);
    uint32_t t[100];
    if (opened) {
        CHECK(ct_dataset_read(ds, 0, 100, t, NULL, err, ERRLEN) == 0);
        CHECK(t[0] == 40 % 50 && t[59] == 99 % 50 && t[60] == 0 && t[99] == 39);
    }
    ct_dataset_close(ds);
    virtual_tokens(p = ct_test_path("vmissing.h5"), 100, "nosuch.h5", "tokens", whole, 2);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, "vmissing.h5: /tokens: virtual mapping",
                "source file nosuch.h5 is missing");
    static const size_t part[][3] = {{0, 80, 0}};
    virtual_tokens(p = ct_test_path("vgap.h5"), 100, "vsrc.h5", "tokens", part, 1);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, "vgap.h5: /tokens: positions [80, 100) map to no source",
                "zeros");
    virtual_tokens(p = ct_test_path("vnodset.h5"), 100, "vsrc.h5", "nope", whole, 2);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, "vnodset.h5: /tokens: virtual mapping", "holds no dataset nope");
    static const size_t beyond[][3] = {{0, 100, 50}};
    virtual_tokens(p = ct_test_path("vshort.h5"), 100, "vsrc.h5", "tokens", beyond, 1);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, "vshort.h5: /tokens: virtual mapping",
                "has 100 values, fewer than the mapping reads (to 150)");

    /* a loss mask with no target anywhere teaches nothing: refused on open and on write; in an
     * index only when no shard has a target */
    s = good_spec(100);
    s.mask_len = 100;
    make_h5(p = ct_test_path("notarget.h5"), s);
    zero_mask(p);
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, "notarget.h5: /loss_mask: 0 on all 100 tokens", "teaches nothing");
    uint32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    uint8_t none[8] = {0}, some[8] = {0, 0, 0, 0, 0, 0, 0, 1};
    CHECK_FAILS(ct_dataset_write(ct_test_path("w.h5"), tok, 8, none, NULL, 0, meta("bytes", 257), err, ERRLEN), err,
                "w.h5: /loss_mask: 0 on all 8 tokens", "teaches nothing");
    CHECK(ct_dataset_write(ct_test_path("sh0.h5"), tok, 8, some, NULL, 0, meta("bytes", 257), err, ERRLEN) == 0);
    CHECK(ct_dataset_write(ct_test_path("sh1.h5"), tok, 8, some, NULL, 0, meta("bytes", 257), err, ERRLEN) == 0);
    zero_mask(ct_test_path("sh0.h5"));
    const char *names[2] = {"sh0.h5", "sh1.h5"};
    uint64_t counts[2] = {8, 8}, docs[2] = {0, 0};
    CHECK(ct_dataset_write_index(p = ct_test_path("idx.h5"), names, counts, docs, 2, meta("bytes", 257), err, ERRLEN) == 0);
    ds = NULL;
    CHECK(ct_dataset_open(&ds, p, err, ERRLEN) == 0 && ds && ct_dataset_len(ds) == 16);
    uint8_t m16[16];
    CHECK(ds && ct_dataset_read(ds, 0, 16, NULL, m16, err, ERRLEN) == 0 && m16[7] == 0 && m16[15] == 1);
    ct_dataset_close(ds);
    zero_mask(ct_test_path("sh1.h5"));
    CHECK_FAILS(ct_dataset_open(&ds, p, err, ERRLEN), err, "idx.h5: /loss_mask: 0 on every token of every shard",
                "teaches nothing");
}

/* ---- prepare */

/* The cut the comment in data.h promises, by brute force: just after the '\n' nearest to
 * target (the earlier on a tie), excluding cuts that leave a part empty. */
static size_t expected_cut(const char *text, size_t len, double f)
{
    double target = (1.0 - f) * (double)len;
    size_t best = 0;
    double bestd = 1e300;
    for (size_t c = 1; c < len; c++)
        if (text[c - 1] == '\n') {
            double d = (double)c > target ? (double)c - target : target - (double)c;
            if (d < bestd) {
                bestd = d;
                best = c;
            }
        }
    return best;
}

/* Reads a prepared part and checks: one document, ends with end-of-text, bytes == want. */
static void check_part(const char *path, const char *want, size_t wlen)
{
    char err[ERRLEN];
    ct_dataset *ds = NULL;
    CHECK(ct_dataset_open(&ds, path, err, ERRLEN) == 0);
    if (!ds) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    size_t n = ct_dataset_len(ds);
    CHECK(n == wlen + 1);
    CHECK(strcmp(ct_dataset_tokenizer(ds), "bytes") == 0);
    CHECK(ct_dataset_vocab_size(ds) == CT_TOK_BYTES_VOCAB);
    CHECK(ct_dataset_has_mask(ds) == 0);
    uint32_t *tok = malloc(n * sizeof *tok);
    int32_t *t32 = malloc(n * sizeof *t32);
    char *text = malloc(n + 1);
    CHECK(ct_dataset_read(ds, 0, n, tok, NULL, err, ERRLEN) == 0);
    int eots = 0;
    for (size_t i = 0; i < n; i++) {
        t32[i] = (int32_t)tok[i];
        eots += tok[i] == CT_TOK_BYTES_EOT;
    }
    CHECK(tok[n - 1] == CT_TOK_BYTES_EOT && eots == 1);
    CHECK(ct_tok_bytes_decode(t32, n, text, n + 1) == wlen);
    CHECK(memcmp(text, want, wlen) == 0);
    uint64_t docs[4]; /* read while ds is open: HDF5 must accept a second open of the file */
    CHECK(h5_doc_offsets(path, docs, 4) == 1 && docs[0] == 0);
    ct_dataset_close(ds);
    free(tok);
    free(t32);
    free(text);
}

static void test_prepare(void)
{
    char err[ERRLEN];
    char text[4096];
    size_t len = 0;
    for (int i = 0; i < 40; i++) /* lines of uneven length, some non-ASCII */
        len += (size_t)snprintf(text + len, sizeof text - len, "line %d: %.*s h\xc3\xa9llo\n", i, (i * 7) % 23,
                                "abcdefghijklmnopqrstuvwxyz");
    char src_text[512], src_one[512];
    snprintf(src_text, sizeof src_text, "%s", ct_test_path("text.txt"));
    const char *src = src_text;
    ct_test_write_file(src, text, len);
    const double fracs[3] = {0.1, 0.3, 0.5};
    for (int k = 0; k < 3; k++) {
        const char *tr = ct_test_path("train.h5"), *va = ct_test_path("val.h5");
        CHECK(ct_data_prepare_text(src, tr, va, fracs[k], err, ERRLEN) == 0);
        size_t cut = expected_cut(text, len, fracs[k]);
        CHECK(cut > 0 && text[cut - 1] == '\n');
        check_part(tr, text, cut);
        check_part(va, text + cut, len - cut);
    }

    /* a text without line breaks is cut between characters, never inside one */
    char one[64];
    size_t olen = 0;
    for (int i = 0; i < 21; i++) olen += (size_t)snprintf(one + olen, sizeof one - olen, "\xc3\xa9"); /* é */
    snprintf(src_one, sizeof src_one, "%s", ct_test_path("oneline.txt"));
    ct_test_write_file(src = src_one, one, olen);
    for (int k = 0; k < 3; k++) {
        CHECK(ct_data_prepare_text(src, ct_test_path("t1.h5"), ct_test_path("v1.h5"), fracs[k], err, ERRLEN) == 0);
        ct_dataset *ds = NULL;
        CHECK(ct_dataset_open(&ds, ct_test_path("t1.h5"), err, ERRLEN) == 0);
        size_t cut = ds ? ct_dataset_len(ds) - 1 : 1;
        CHECK(cut % 2 == 0 && cut > 0 && cut < olen);
        ct_dataset_close(ds);
        if (cut >= olen) continue; /* check_part would read past one[] */
        check_part(ct_test_path("t1.h5"), one, cut);
        check_part(ct_test_path("v1.h5"), one + cut, olen - cut);
    }

    ct_test_write_file(src = ct_test_path("empty.txt"), "", 0);
    CHECK_FAILS(ct_data_prepare_text(src, ct_test_path("t.h5"), ct_test_path("v.h5"), 0.1, err, ERRLEN), err, src, "empty");
    CHECK(access(ct_test_path("t.h5"), F_OK) != 0);
    ct_test_write_file(src = ct_test_path("x.txt"), "x", 1);
    CHECK_FAILS(ct_data_prepare_text(src, ct_test_path("t.h5"), ct_test_path("v.h5"), 0.5, err, ERRLEN), err, src,
                "too short");
    src = ct_test_path("nope.txt");
    CHECK_FAILS(ct_data_prepare_text(src, ct_test_path("t.h5"), ct_test_path("v.h5"), 0.1, err, ERRLEN), err, src, "No such file");
    src = src_text;
    CHECK_FAILS(ct_data_prepare_text(src, ct_test_path("t.h5"), ct_test_path("v.h5"), 0.0, err, ERRLEN), err, src, "val_fraction");
    CHECK_FAILS(ct_data_prepare_text(src, ct_test_path("t.h5"), ct_test_path("v.h5"), 1.0, err, ERRLEN), err, src, "val_fraction");
    CHECK_FAILS(ct_data_prepare_text(src, ct_test_path("t.h5"), ct_test_path("v.h5"), -0.2, err, ERRLEN), err, src, "val_fraction");
    CHECK_FAILS(ct_data_prepare_text(src, ct_test_path("t.h5"), ct_test_path("v.h5"), NAN, err, ERRLEN), err, src, "val_fraction");
}

/* ---- loader */

enum { T = 4, NW = 67 }; /* windows in the loader datasets; 67 is not a multiple of any G below */

/* A dataset whose token i is i, so each window names itself: window w starts with token w*T.
 * With mask, loss_mask[i] is a fixed pseudo-random bit, also returned in *mask_out. */
static const char *loader_dataset(const char *name, int with_mask, uint8_t **mask_out)
{
    const size_t n = (size_t)NW * T + 1 + 2; /* 2 spare tokens: W is still NW */
    uint32_t tok[NW * T + 3];
    static uint8_t mask[NW * T + 3];
    uint64_t rng = 99;
    for (size_t i = 0; i < n; i++) {
        tok[i] = (uint32_t)i;
        mask[i] = (uint8_t)(ct_test_rand_u64(&rng) % 3 != 0);
    }
    const char *p = ct_test_path(name);
    char err[ERRLEN];
    if (ct_dataset_write(p, tok, n, with_mask ? mask : NULL, NULL, 0, meta("test", (int)n), err, ERRLEN)) {
        fprintf(stderr, "%s\n", err);
        exit(2);
    }
    if (mask_out) *mask_out = mask;
    return p;
}

static ct_loader *new_loader(const char *path, int B, int accum, int rank, int world, uint64_t seed, int shuffle)
{
    char err[ERRLEN];
    ct_loader_opts o = {path, T, B, accum, rank, world, seed, shuffle, 1000};
    ct_loader *l = NULL;
    if (ct_loader_init(&l, &o, err, ERRLEN)) {
        fprintf(stderr, "loader init: %s\n", err);
        exit(2);
    }
    return l;
}

/* The next micro-batch as window ids (B of them); also checks inputs are whole windows. */
static void next_ids(ct_loader *l, int B, uint64_t *ids)
{
    char err[ERRLEN];
    int32_t x[64 * T], y[64 * T];
    int rc = ct_loader_next(l, x, y, NULL, err, ERRLEN);
    CHECK(rc == 0);
    if (rc) fprintf(stderr, "  %s\n", err);
    for (int b = 0; b < B; b++) {
        ids[b] = (uint64_t)x[b * T] / T;
        CHECK(x[b * T] % T == 0);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* (a) one step's windows depend on G only: world x accum = 1x4, 2x2, 4x1 at the same B. */
static void test_loader_world(void)
{
    const char *p = loader_dataset("lw.h5", 0, NULL);
    const int B = 2, G = 8, configs[3][2] = {{1, 4}, {2, 2}, {4, 1}}, nsteps = 20; /* 20 steps: into epoch 3 */
    static uint64_t seq[3][20][8];
    for (int c = 0; c < 3; c++) {
        int world = configs[c][0], accum = configs[c][1];
        ct_loader *l[4];
        for (int r = 0; r < world; r++) l[r] = new_loader(p, B, accum, r, world, 42, 1);
        CHECK(ct_loader_windows(l[0]) == NW && ct_loader_steps_per_epoch(l[0]) == (uint64_t)(NW / G));
        for (int s = 0; s < nsteps; s++)
            for (int a = 0; a < accum; a++)
                for (int r = 0; r < world; r++) next_ids(l[r], B, &seq[c][s][(a * world + r) * B]);
        for (int r = 0; r < world; r++) ct_loader_free(l[r]);
    }
    for (int c = 1; c < 3; c++) {
        int same_set = 1, same_order = 1;
        for (int s = 0; s < nsteps; s++) {
            uint64_t x[8], y[8];
            memcpy(x, seq[0][s], sizeof x);
            memcpy(y, seq[c][s], sizeof y);
            same_order &= memcmp(x, y, sizeof x) == 0;
            qsort(x, 8, sizeof *x, cmp_u64);
            qsort(y, 8, sizeof *y, cmp_u64);
            same_set &= memcmp(x, y, sizeof x) == 0;
        }
        CHECK(same_set);
        CHECK(same_order); /* the stronger property of the layout in data.h */
    }
}

/* (b) an epoch visits steps*G distinct windows, and the next epoch uses a new order. */
static void test_loader_epochs(void)
{
    const char *p = loader_dataset("le.h5", 0, NULL);
    const int B = 3, accum = 2, G = B * accum; /* 67 windows: 11 steps, 66 windows, 1 skipped */
    ct_loader *l = new_loader(p, B, accum, 0, 1, 5, 1);
    uint64_t steps = ct_loader_steps_per_epoch(l);
    CHECK(steps == (uint64_t)(NW / G));
    uint64_t order[2][NW];
    for (int e = 0; e < 2; e++) {
        int seen[NW] = {0}, repeats = 0, outside = 0;
        for (uint64_t m = 0; m < steps * accum; m++) {
            ct_loader_cursor c = ct_loader_tell(l);
            CHECK(c.epoch == (uint64_t)e && c.step == m / accum && c.micro == (int)(m % accum));
            uint64_t ids[3];
            next_ids(l, B, ids);
            for (int b = 0; b < B; b++) {
                if (ids[b] >= NW) {
                    outside++;
                    continue;
                }
                repeats += seen[ids[b]]++ > 0;
                order[e][m * B + b] = ids[b];
            }
        }
        int distinct = 0;
        for (int w = 0; w < NW; w++) distinct += seen[w] > 0;
        CHECK(repeats == 0 && outside == 0);
        CHECK(distinct == (int)(steps * G));
        ct_loader_cursor c = ct_loader_tell(l);
        CHECK(c.epoch == (uint64_t)e + 1 && c.step == 0 && c.micro == 0);
    }
    CHECK(memcmp(order[0], order[1], steps * G * sizeof(uint64_t)) != 0);
    ct_loader_free(l);
}

/* (c) seeds: same seed, same stream; another seed, another stream; shuffle 0, file order. */
static void test_loader_seed(void)
{
    const char *p = loader_dataset("ls.h5", 0, NULL);
    const int B = 2, n = 30;
    ct_loader *a = new_loader(p, B, 1, 0, 1, 7, 1), *b = new_loader(p, B, 1, 0, 1, 7, 1),
              *c = new_loader(p, B, 1, 0, 1, 8, 1);
    int same_ab = 1, same_ac = 1;
    for (int i = 0; i < n; i++) {
        uint64_t x[2], y[2], z[2];
        next_ids(a, B, x);
        next_ids(b, B, y);
        next_ids(c, B, z);
        same_ab &= memcmp(x, y, sizeof x) == 0;
        same_ac &= memcmp(x, z, sizeof x) == 0;
    }
    CHECK(same_ab);
    CHECK(!same_ac);
    ct_loader_free(a);
    ct_loader_free(b);
    ct_loader_free(c);

    /* in order, two ranks: rank r's micro a of step s is windows s*G + (a*world + r)*B + [0, B) */
    const int world = 2, accum = 3, G = B * accum * world;
    ct_loader *l[2] = {new_loader(p, B, accum, 0, world, 7, 0), new_loader(p, B, accum, 1, world, 7, 0)};
    int in_order = 1;
    for (int s = 0; s < 8; s++) /* 67 / 12 = 5 steps per epoch: crosses into epoch 1 */
        for (int m = 0; m < accum; m++)
            for (int r = 0; r < world; r++) {
                uint64_t ids[2];
                next_ids(l[r], B, ids);
                for (int k = 0; k < B; k++)
                    in_order &= ids[k] == (uint64_t)((s % 5) * G + (m * world + r) * B + k);
            }
    CHECK(in_order);
    ct_loader_free(l[0]);
    ct_loader_free(l[1]);
}

/* (d) targets are the inputs shifted by one, -1 exactly where the target's mask is 0. */
static void test_loader_targets(void)
{
    uint8_t *mask;
    const char *p = loader_dataset("lt.h5", 1, &mask);
    const int B = 4;
    ct_loader *l = new_loader(p, B, 1, 0, 1, 3, 1);
    char err[ERRLEN];
    int32_t x[B * T], y[B * T], pos[B * T];
    int shifted = 1, masked = 0, unmasked = 0, wrong = 0;
    CHECK(!ct_loader_masked(l));
    for (int i = 0; i < 2 * NW / B; i++) {
        CHECK(ct_loader_next(l, x, y, pos, err, ERRLEN) == 0);
        for (int b = 0; b < B; b++) {
            int32_t w0 = x[b * T];
            for (int t = 0; t < T; t++) {
                shifted &= x[b * T + t] == w0 + t && pos[b * T + t] == t; /* plain: positions 0..T-1 */
                int32_t want = mask[w0 + t + 1] ? w0 + t + 1 : -1;
                wrong += y[b * T + t] != want;
                masked += y[b * T + t] == -1;
                unmasked += y[b * T + t] != -1;
            }
        }
    }
    CHECK(shifted);
    CHECK(wrong == 0);
    CHECK(masked > 0 && unmasked > 0); /* the check above saw both cases */
    ct_loader_free(l);
}

/* Takes m micro-batches into out[m][B*T] (inputs then targets). */
static void take(ct_loader *l, int m, int B, int32_t *out)
{
    char err[ERRLEN];
    for (int i = 0; i < m; i++, out += 2 * B * T) {
        int rc = ct_loader_next(l, out, out + B * T, NULL, err, ERRLEN);
        CHECK(rc == 0);
        if (rc) fprintf(stderr, "  %s\n", err);
    }
}

/* (e) tell/seek: a fresh loader seeked to a saved cursor continues identically. */
static void test_loader_resume(void)
{
    uint8_t *mask;
    const char *p = loader_dataset("lr.h5", 1, &mask);
    const int B = 2, accum = 2, world = 2; /* G = 8: 8 steps, 16 micro-batches per epoch per rank */
    const int ks[3] = {5, 13, 37}, m = 12;   /* 13 + 12 crosses epoch 0 -> 1; 37 starts in epoch 2 */
    for (int rank = 0; rank < world; rank++)
        for (int i = 0; i < 3; i++) {
            ct_loader *a = new_loader(p, B, accum, rank, world, 11, 1);
            static int32_t skip[40 * 2 * 2 * T], want[12 * 2 * 2 * T], got[12 * 2 * 2 * T];
            take(a, ks[i], B, skip);
            ct_loader_cursor c = ct_loader_tell(a);
            CHECK(c.epoch == (uint64_t)(ks[i] / 16) && c.step == (uint64_t)(ks[i] % 16 / accum) &&
                  c.micro == ks[i] % accum);
            take(a, m, B, want);
            ct_loader *b = new_loader(p, B, accum, rank, world, 11, 1);
            take(b, 3, B, got); /* b's own order is in place: seek must replace it */
            ct_loader_seek(b, c);
            ct_loader_cursor d = ct_loader_tell(b);
            CHECK(d.epoch == c.epoch && d.step == c.step && d.micro == c.micro);
            take(b, m, B, got);
            CHECK(memcmp(want, got, sizeof(int32_t) * 2 * B * T * m) == 0);
            ct_loader_free(a);
            ct_loader_free(b);
        }

    /* a cursor past the end of its epoch carries over: step 8 of epoch 0 is step 0 of epoch 1 */
    ct_loader *a = new_loader(p, B, accum, 0, world, 11, 1);
    ct_loader_cursor c = {0, 8, 0};
    ct_loader_seek(a, c);
    c = ct_loader_tell(a);
    CHECK(c.epoch == 1 && c.step == 0 && c.micro == 0);
    ct_loader_free(a);
}

/* (f) loader errors */
static void test_loader_errors(void)
{
    char err[ERRLEN];
    ct_loader *l = NULL;
    uint32_t tok[64];
    for (int i = 0; i < 64; i++) tok[i] = (uint32_t)(i % 200);

    /* 21 tokens: 5 windows of 4+1, G = 2 x 2 x 2 = 8 */
    const char *p = ct_test_path("short.h5");
    CHECK(ct_dataset_write(p, tok, 21, NULL, NULL, 0, meta("bytes", 257), err, ERRLEN) == 0);
    ct_loader_opts o = {p, T, 2, 2, 0, 2, 1, 1, 257};
    CHECK_FAILS(ct_loader_init(&l, &o, err, ERRLEN), err, p, "5 windows");
    CHECK(strstr(err, "global batch of 8") != NULL);
    CHECK(l == NULL);
    o.world = 1; /* G = 4 fits */
    CHECK(ct_loader_init(&l, &o, err, ERRLEN) == 0);
    ct_loader_free(l);
    l = NULL;

    p = ct_test_path("bigvocab.h5");
    CHECK(ct_dataset_write(p, tok, 64, NULL, NULL, 0, meta("gpt2", 50257), err, ERRLEN) == 0);
    o.path = p;
    CHECK_FAILS(ct_loader_init(&l, &o, err, ERRLEN), err, p, "vocab_size");
    CHECK(strstr(err, "50257") != NULL);

    /* token 400 at position 37 in a dataset that claims vocab_size 257: the writer refuses
     * that, so build the file by hand, as another tool might */
    spec s = good_spec(64);
    s.vocab = 257;
    s.bad_at = 37;
    s.bad_value = 400;
    make_h5(p = ct_test_path("badtoken.h5"), s);
    o.path = p;
    o.micro_batch = 15; /* windows 0..14 in order: window 9 holds position 37 */
    o.grad_accum = 1;
    o.shuffle = 0;
    CHECK(ct_loader_init(&l, &o, err, ERRLEN) == 0);
    if (l) {
        int32_t x[15 * T], y[15 * T];
        CHECK_FAILS(ct_loader_next(l, x, y, NULL, err, ERRLEN), err, p, "token 400 at position 37");
        ct_loader_cursor c = ct_loader_tell(l);
        CHECK(c.epoch == 0 && c.step == 0 && c.micro == 0); /* a failed next does not advance */
        ct_loader_free(l);
        l = NULL;
    }
    s.bad_value = 257; /* the first id beyond the vocabulary */
    make_h5(p = ct_test_path("badtoken257.h5"), s);
    o.path = p;
    CHECK(ct_loader_init(&l, &o, err, ERRLEN) == 0);
    if (l) {
        int32_t x[15 * T], y[15 * T];
        CHECK_FAILS(ct_loader_next(l, x, y, NULL, err, ERRLEN), err, p, "token 257 at position 37");
        ct_loader_free(l);
        l = NULL;
    }

    o.path = ct_test_path("short.h5");
    o.seq_len = 0;
    CHECK_FAILS(ct_loader_init(&l, &o, err, ERRLEN), err, o.path, "seq_len");
    o.seq_len = T;
    o.rank = 2;
    o.world = 2;
    CHECK_FAILS(ct_loader_init(&l, &o, err, ERRLEN), err, o.path, "rank 2");
    o.rank = 0;
    o.micro_batch = 0;
    CHECK_FAILS(ct_loader_init(&l, &o, err, ERRLEN), err, o.path, "micro_batch");
    o.micro_batch = 1;
    o.path = ct_test_path("absent.h5");
    CHECK_FAILS(ct_loader_init(&l, &o, err, ERRLEN), err, o.path, "No such file");
    CHECK(l == NULL);
}

/* ---- masked packing */

/* Rewrites a dataset's root attribute packing (a file another tool made). */
static void set_packing(const char *path, const char *packing)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (H5Aexists(f, "packing") > 0) H5Adelete(f, "packing");
    hid_t scalar = H5Screate(H5S_SCALAR), t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    hid_t a = H5Acreate2(f, "packing", t, scalar, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, t, &packing) < 0) {
        fprintf(stderr, "cannot set packing of %s\n", path);
        exit(2);
    }
    H5Aclose(a);
    H5Tclose(t);
    H5Sclose(scalar);
    H5Fclose(f);
}

/* Document starts for n tokens: at 3 (none before: the first window's start belongs to a
 * document begun before the data) and then about one in `every` tokens. */
static size_t packed_docs(size_t n, uint64_t seed, int every, uint64_t *docs)
{
    size_t nd = 0;
    for (size_t i = 0; i < n; i++)
        if ((i == 3 || ct_test_rand_u64(&seed) % (uint64_t)every == 0) && i >= 3) docs[nd++] = i; /* none before 3 */
    return nd;
}

/* Positions and targets the loader must give the window at start (T tokens + 1), from the
 * document list: positions count from the latest document start at or after the window's
 * first token; a target that begins a document, or whose mask is 0, is -1. */
static void packed_want(const uint64_t *docs, size_t nd, const uint8_t *mask, size_t start, int T_, int32_t *pos,
                        int32_t *tg)
{
    size_t i = 0;
    while (i < nd && docs[i] <= start) i++; /* docs[i]: the first start inside the window */
    for (int t = 0; t < T_; t++) {
        const size_t at = start + (size_t)t;
        int begins = i < nd && docs[i] == at;
        if (begins) i++;
        pos[t] = t == 0 || begins ? 0 : pos[t - 1] + 1;
        int next_begins = i < nd && docs[i] == at + 1;
        tg[t] = mask[at + 1] && !next_begins ? (int32_t)(at + 1) : -1;
    }
}

/* (g) masked packing: every window's positions restart at each document start inside it and
 * no target crosses into the next document; with few documents (the whole /doc_offsets in the
 * index) and with more than the index holds (a sparse index, range reads per window); a resumed
 * loader gives the same positions; plain datasets give 0..T-1. */
static void test_loader_packed(size_t n, int every, int T_, int B)
{
    char err[ERRLEN];
    uint32_t *tok = malloc(n * sizeof *tok);
    uint8_t *mask = malloc(n);
    uint64_t *docs = malloc(n * sizeof *docs), rng = 5;
    for (size_t i = 0; i < n; i++) {
        tok[i] = (uint32_t)i; /* each window names its start */
        mask[i] = (uint8_t)(ct_test_rand_u64(&rng) % 4 != 0);
    }
    size_t nd = packed_docs(n, 77, every, docs);
    const char *p = ct_test_path("packed.h5");
    ct_dataset_meta m = *meta("test", (int)n);
    snprintf(m.packing, sizeof m.packing, "masked");
    CHECK(ct_dataset_write(p, tok, n, mask, docs, nd, &m, err, ERRLEN) == 0);

    ct_loader_opts o = {p, T_, B, 2, 0, 1, 9, 1, (int)n};
    ct_loader *l = NULL, *r = NULL;
    CHECK(ct_loader_init(&l, &o, err, ERRLEN) == 0);
    if (!l) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    CHECK(ct_loader_masked(l));
    int32_t *x = malloc(sizeof(int32_t) * B * T_ * 3), *y = x + B * T_, *pos = y + B * T_;
    int32_t *wp = malloc(sizeof(int32_t) * T_ * 2), *wt = wp + T_;
    int32_t *saved = malloc(sizeof(int32_t) * B * T_ * 3 * 4);
    size_t wrong = 0, restarts = 0, cut = 0;
    ct_loader_cursor at = {0, 0, 0};
    for (int i = 0; i < 12; i++) {
        if (i == 5) at = ct_loader_tell(l);
        CHECK(ct_loader_next(l, x, y, pos, err, ERRLEN) == 0);
        if (i >= 5 && i < 9) memcpy(saved + (size_t)(i - 5) * B * T_ * 3, x, sizeof(int32_t) * B * T_ * 3);
        for (int b = 0; b < B; b++) {
            const size_t start = (size_t)x[b * T_];
            packed_want(docs, nd, mask, start, T_, wp, wt);
            for (int t = 0; t < T_; t++) {
                wrong += pos[b * T_ + t] != wp[t] || y[b * T_ + t] != wt[t];
                restarts += t > 0 && pos[b * T_ + t] == 0;
                cut += wt[t] == -1 && mask[start + t + 1];
            }
        }
    }
    CHECK(wrong == 0);
    CHECK(restarts > 0 && cut > 0); /* documents did begin inside windows */
    /* resumed: the same windows, positions and targets */
    CHECK(ct_loader_init(&r, &o, err, ERRLEN) == 0);
    if (r) {
        ct_loader_seek(r, at);
        for (int i = 0; i < 4; i++) {
            CHECK(ct_loader_next(r, x, y, pos, err, ERRLEN) == 0);
            CHECK(memcmp(saved + (size_t)i * B * T_ * 3, x, sizeof(int32_t) * B * T_ * 3) == 0);
        }
        ct_loader_free(r);
    }
    ct_loader_free(l);
    free(x), free(wp), free(saved), free(tok), free(mask), free(docs);
}

/* (h) masked packing's errors: no /doc_offsets, offsets out of order */
static void test_loader_packed_errors(void)
{
    char err[ERRLEN];
    uint32_t tok[64];
    uint64_t docs[4] = {0, 10, 20, 30};
    for (int i = 0; i < 64; i++) tok[i] = (uint32_t)i;
    ct_dataset_meta m = *meta("test", 1000);
    snprintf(m.packing, sizeof m.packing, "masked");
    const char *p = ct_test_path("masked_nodocs.h5");
    CHECK_FAILS(ct_dataset_write(p, tok, 64, NULL, NULL, 0, &m, err, ERRLEN), err, p, "doc_offsets");
    /* another tool's file: packing masked, no /doc_offsets */
    CHECK(ct_dataset_write(p, tok, 64, NULL, NULL, 0, meta("test", 1000), err, ERRLEN) == 0);
    set_packing(p, "masked");
    ct_loader_opts o = {p, T, 2, 1, 0, 1, 1, 1, 1000};
    ct_loader *l = NULL;
    CHECK_FAILS(ct_loader_init(&l, &o, err, ERRLEN), err, p, "/doc_offsets: missing");
    CHECK(strstr(err, "masked") != NULL && l == NULL);
    /* offsets out of order (the writer refuses them: rewrite the file's) */
    p = ct_test_path("masked_unordered.h5");
    CHECK(ct_dataset_write(p, tok, 64, NULL, docs, 4, &m, err, ERRLEN) == 0);
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT), d = H5Dopen2(f, "doc_offsets", H5P_DEFAULT);
    uint64_t bad[4] = {0, 20, 10, 30};
    H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, bad);
    H5Dclose(d);
    H5Fclose(f);
    o.path = p;
    CHECK_FAILS(ct_loader_init(&l, &o, err, ERRLEN), err, p, "not increasing");
    CHECK(l == NULL);
}

int main(void)
{
    ct_test_dir_create("ct_test_data");
    test_roundtrip();
    test_foreign_types();
    test_malformed();
    test_strict_files();
    test_prepare();
    test_loader_world();
    test_loader_epochs();
    test_loader_seed();
    test_loader_targets();
    test_loader_resume();
    test_loader_errors();
    test_loader_packed(1000, 7, 16, 3);      /* /doc_offsets whole in the index */
    test_loader_packed(400000, 3, 64, 4);    /* ~133k documents: a sparse index (stride 3) */
    test_loader_packed(20000, 100, 256, 2);  /* long documents, several windows each */
    test_loader_packed_errors();
    ct_test_dir_remove();
    return ct_test_finish("test_data");
}
