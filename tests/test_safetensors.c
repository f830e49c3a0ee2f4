/* test_safetensors.c — safetensors reader/writer: round trips (F32 exact, BF16/F16 rounding checked
 * exhaustively against an independent decoder), hand-made files with known bytes, and malformed
 * files that must fail with -1, no handle, and a message naming the file and the tensor. Also built
 * under ASan/UBSan (test_safetensors_asan), so an out-of-bounds read or a leak fails it. */
#define _POSIX_C_SOURCE 200809L

#include "safetensors.h"

#include "check.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ERRLEN 512

static void join(char *buf, size_t len, const char *dir, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
}

/* Writes raw bytes to path; aborts the test on I/O failure (nothing else would be meaningful). */
static void put_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

/* A safetensors file: 8-byte LE length hlen (need not match jlen, to build lying files), the json
 * bytes, then dlen bytes of data (zeros when data is NULL). */
static void put_file(const char *path, uint64_t hlen, const char *json, size_t jlen, const void *data, size_t dlen)
{
    size_t n = 8 + jlen + dlen;
    unsigned char *b = calloc(n, 1);
    if (!b) exit(2);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(b + 8, json, jlen);
    if (data)
        memcpy(b + 8 + jlen, data, dlen);
    put_bytes(path, b, n);
    free(b);
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* ct_st_open on path must fail: rc -1, *out NULL, message naming the file and containing want1
 * and want2 (either may be NULL). The file is removed afterwards. */
static void expect_open_fail(const char *path, const char *label, const char *want1, const char *want2)
{
    ct_safetensors *st = (ct_safetensors *)&st; /* non-NULL, so "stays NULL" is really tested */
    char err[ERRLEN] = "";
    int rc = ct_st_open(&st, path, err, sizeof err);
    int ok = rc == -1 && st == NULL && strstr(err, path) && (!want1 || strstr(err, want1)) &&
             (!want2 || strstr(err, want2));
    if (!ok)
        fprintf(stderr, "case '%s': rc %d, handle %s, message \"%s\" (want \"%s\", \"%s\")\n", label, rc,
                st ? "set" : "NULL", err, want1 ? want1 : "", want2 ? want2 : "");
    CHECK(rc == -1);
    CHECK(st == NULL);
    CHECK(strstr(err, path) != NULL);
    CHECK(!want1 || strstr(err, want1) != NULL);
    CHECK(!want2 || strstr(err, want2) != NULL);
    if (rc == 0)
        ct_st_close(st);
    unlink(path);
}

/* A file whose header is the given JSON, with dlen zero bytes of data, must fail to open. */
static void bad_header(const char *dir, const char *label, const char *json, size_t dlen, const char *want1,
                       const char *want2)
{
    char path[512];
    join(path, sizeof path, dir, "bad.safetensors");
    put_file(path, strlen(json), json, strlen(json), NULL, dlen);
    expect_open_fail(path, label, want1, want2);
}

static void test_malformed(const char *dir)
{
    char path[512];
    join(path, sizeof path, dir, "bad.safetensors");

    put_bytes(path, "", 0);
    expect_open_fail(path, "empty file", "too short", NULL);
    put_bytes(path, "\x10\0\0\0", 4);
    expect_open_fail(path, "4-byte file", "too short", NULL);
    put_file(path, 1000, "{}      ", 8, NULL, 16);
    expect_open_fail(path, "header length > file size", "exceeds the file size", NULL);
    put_file(path, 1ull << 62, "{}      ", 8, NULL, 16);
    expect_open_fail(path, "header length 1<<62", "limit", NULL);
    put_file(path, (uint64_t)-8, "{}      ", 8, NULL, 16); /* -8 as a signed length */
    expect_open_fail(path, "header length -8 (signed)", "limit", NULL);
    put_file(path, 100000001, "{}      ", 8, NULL, 16); /* just above the reference's 100 MB */
    expect_open_fail(path, "header length 100 MB + 1", "limit", NULL);
    put_file(path, 10, "{\"w\"\0:{}} ", 10, NULL, 0);
    expect_open_fail(path, "NUL in header", "NUL", NULL);
    put_file(path, 9, "{\"w\xff\":{}}", 9, NULL, 0);
    expect_open_fail(path, "invalid UTF-8", "UTF-8", NULL);
    join(path, sizeof path, dir, "does-not-exist.safetensors");
    expect_open_fail(path, "missing file", "cannot open", NULL);

    bad_header(dir, "invalid JSON", "{\"w\": {\"dtype\": ", 0, "not valid JSON", NULL);
    bad_header(dir, "empty header", "", 0, "not valid JSON", NULL);
    bad_header(dir, "JSON array", "[1, 2]", 0, "not a JSON object", NULL);
    bad_header(dir, "junk after JSON", "{} x", 0, "after the JSON", NULL);
    bad_header(dir, "entry not an object", "{\"w\": 5}", 0, "'w'", "not a JSON object");
    bad_header(dir, "missing dtype", "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'w'", "missing \"dtype\"");
    bad_header(dir, "dtype not a string", "{\"w\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'w'",
               "\"dtype\" is not a string");
    bad_header(dir, "unknown dtype", "{\"w\":{\"dtype\":\"F8_XYZ\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'w'",
               "F8_XYZ");
    bad_header(dir, "duplicate field", "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}",
               8, "header: w.dtype", "key given twice");
    bad_header(dir, "missing shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "'w'",
               "missing \"shape\"");
    bad_header(dir, "negative dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2,2],\"data_offsets\":[0,16]}}", 16, "'w'",
               "shape[0] = -2");
    bad_header(dir, "fractional dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2.5],\"data_offsets\":[0,20]}}", 20,
               "'w'", "shape[1] = 2.5");
    bad_header(dir, "dim is a string", "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, "'w'",
               "shape[0] is not a number");
    bad_header(dir, "shape not an array", "{\"w\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}}", 16, "'w'",
               "\"shape\" is not an array");
    bad_header(dir, "too many dims", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
               4, "'w'", "9 dims");
    bad_header(dir, "numel overflow",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,0]}}", 0, "'w'",
               "overflows");
    bad_header(dir, "missing data_offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "'w'",
               "missing \"data_offsets\"");
    bad_header(dir, "data_offsets of 3", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8, "'w'",
               "\"data_offsets\" is not an array");
    bad_header(dir, "negative offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "'w'",
               "not non-negative integers");
    bad_header(dir, "end before begin", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, "'w'",
               "end is before begin");
    bad_header(dir, "offsets past the end", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
               "'w'", "end beyond the data section (8 bytes");
    bad_header(dir, "offsets/shape mismatch", "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 12,
               "'w'", "needs 12");
    bad_header(dir, "overlapping tensors",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "'b'", "overlap tensor 'a'");
    bad_header(dir, "overlap, out of file order",
               "{\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[20,24]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", 24, "'b'", "overlap tensor 'a'");
    bad_header(dir, "duplicate names",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, "header: w", "key given twice");
    /* a NUL cut a name short ("a\u0000b" read as "a"), or a metadata value */
    bad_header(dir, "NUL in a name", "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               "header: a: the key holds \\u0000", NULL);
    bad_header(dir, "NUL in metadata", "{\"__metadata__\":{\"format\":\"pt\\u0000x\"}}", 0,
               "header: __metadata__.format: holds \\u0000", NULL);
    /* the tensors must cover the data section exactly, as the Rust library requires */
    bad_header(dir, "gap between tensors",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "'b'", "bytes [4, 8)");
    bad_header(dir, "gap before the first tensor", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
               "'a'", "bytes [0, 4) of the data section belong to no tensor");
    bad_header(dir, "trailing bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 12,
               "data section: 8 trailing bytes", "end at byte 4 of 12");
    bad_header(dir, "no tensors, data", "{}", 4, "data section: 4 trailing bytes", NULL);
    bad_header(dir, "empty tensor inside another",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8, "'z'", "lie inside tensor 'a'");
    bad_header(dir, "empty tensor past the end",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[12,12]}}", 12, "'z'", "bytes [8, 12)");
    bad_header(dir, "metadata not strings", "{\"__metadata__\":{\"format\":\"pt\",\"n\":1}}", 0, "__metadata__",
               "'n'");
    bad_header(dir, "metadata not an object", "{\"__metadata__\":[1]}", 0, "__metadata__", "not a JSON object");
    bad_header(dir, "metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "header: __metadata__", "twice");
    bad_header(dir, "metadata key twice", "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "header: __metadata__.k",
               "key given twice");

    /* a good file written by us, then cut short: the last tensor no longer fits */
    join(path, sizeof path, dir, "truncated.safetensors");
    float x[6] = {1, 2, 3, 4, 5, 6};
    ct_st_entry e[2] = {{.name = "first", .data = x, .ndim = 1, .shape = {2}},
                        {.name = "last.weight", .data = x, .ndim = 2, .shape = {2, 2}}};
    char err[ERRLEN] = "";
    CHECK(ct_st_write(path, e, 2, CT_DT_F32, NULL, err, sizeof err) == 0);
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    CHECK(truncate(path, sb.st_size - 4) == 0);
    expect_open_fail(path, "truncated data section", "'last.weight'", "end beyond the data section");
}

/* Valid edge cases a reader must accept: no tensors, an unpadded header, tensors out of file
 * order, empty tensors on boundaries (at 0 and at the end). */
static void test_valid_edges(const char *dir)
{
    char path[512], err[ERRLEN] = "";
    ct_safetensors *st = NULL;
    join(path, sizeof path, dir, "edge.safetensors");

    put_file(path, 2, "{}", 2, NULL, 0);
    CHECK(ct_st_open(&st, path, err, sizeof err) == 0);
    CHECK(st && ct_st_count(st) == 0 && ct_st_at(st, 0) == NULL && ct_st_find(st, "w") == NULL);
    CHECK(st && ct_st_metadata(st, "format") == NULL);
    ct_st_close(st);
    st = NULL;

    const char *j = "{\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[4,16]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"y\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                    "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,16]}} \n";
    float d[4] = {1.5f, -9, -9, 2.5f};
    put_file(path, strlen(j), j, strlen(j), d, sizeof d);
    CHECK(ct_st_open(&st, path, err, sizeof err) == 0);
    if (st) {
        CHECK(ct_st_count(st) == 4);
        CHECK(!strcmp(ct_st_at(st, 0)->name, "b") && !strcmp(ct_st_at(st, 3)->name, "z"));
        float v = 0, v3[3] = {0};
        CHECK(ct_st_read_f32(st, ct_st_find(st, "b"), v3, 3, err, sizeof err) == 0 && v3[2] == 2.5f);
        CHECK(ct_st_read_f32(st, ct_st_find(st, "a"), &v, 1, err, sizeof err) == 0 && v == 1.5f);
        CHECK(ct_st_read_f32(st, ct_st_find(st, "z"), NULL, 0, err, sizeof err) == 0);
    }
    ct_st_close(st);
    unlink(path);
}

/* Known bytes from the format definitions, decoded by hand. */
static void test_known_bytes(const char *dir)
{
    static const uint16_t f16[6] = {0x3C00, 0xC100, 0x0001, 0x7C00, 0x03FF, 0x7E01};
    static const uint16_t bf16[6] = {0x3F80, 0xC020, 0x0001, 0x7F80, 0xFF80, 0x0080};
    static const double f64[3] = {0.1, -1e300, 6.103515625e-05};
    const float f32 = 3.5f;
    const int64_t i64[2] = {7, -1};
    unsigned char data[68];
    for (int i = 0; i < 6; i++) {
        data[2 * i] = (unsigned char)(f16[i] & 0xff), data[2 * i + 1] = (unsigned char)(f16[i] >> 8);
        data[12 + 2 * i] = (unsigned char)(bf16[i] & 0xff), data[12 + 2 * i + 1] = (unsigned char)(bf16[i] >> 8);
    }
    memcpy(data + 24, f64, 24); /* host is little-endian (checked in safetensors.c) */
    memcpy(data + 48, i64, 16);
    memcpy(data + 64, &f32, 4);
    const char *j = "{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"h\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[6],\"data_offsets\":[12,24]},"
                    "\"d\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[24,48]},"
                    "\"i\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[48,64]},"
                    "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[64,68]}}";
    char path[512], err[ERRLEN] = "";
    join(path, sizeof path, dir, "known.safetensors");
    put_file(path, strlen(j), j, strlen(j), data, sizeof data);

    ct_safetensors *st = NULL;
    CHECK(ct_st_open(&st, path, err, sizeof err) == 0);
    if (!st) {
        fprintf(stderr, "open: %s\n", err);
        unlink(path);
        return;
    }
    CHECK(ct_st_count(st) == 5);
    CHECK(ct_st_metadata(st, "format") && !strcmp(ct_st_metadata(st, "format"), "pt"));
    const ct_st_tensor *h = ct_st_find(st, "h"), *b = ct_st_find(st, "b"), *d = ct_st_find(st, "d"),
                       *i = ct_st_find(st, "i"), *s = ct_st_find(st, "s");
    CHECK(h && b && d && i && s);
    if (!(h && b && d && i && s)) {
        ct_st_close(st);
        unlink(path);
        return;
    }
    CHECK(h->dtype == CT_DT_F16 && h->ndim == 2 && h->shape[0] == 2 && h->shape[1] == 3 && h->numel == 6);
    CHECK(b->dtype == CT_DT_BF16 && d->dtype == CT_DT_F64 && i->dtype == CT_DT_I64);
    CHECK(s->ndim == 0 && s->numel == 1 && s->begin == 64 && s->end == 68);

    float v[6];
    CHECK(ct_st_read_f32(st, h, v, 6, err, sizeof err) == 0);
    CHECK(v[0] == 1.0f && v[1] == -2.5f && v[2] == 0x1p-24f && v[3] == INFINITY && v[4] == 1023 * 0x1p-24f);
    CHECK(isnan(v[5]));
    CHECK(ct_st_read_f32(st, b, v, 6, err, sizeof err) == 0);
    CHECK(v[0] == 1.0f && v[1] == -2.5f && v[2] == 0x1p-133f && v[3] == INFINITY && v[4] == -INFINITY &&
          v[5] == 0x1p-126f);
    CHECK(ct_st_read_f32(st, d, v, 3, err, sizeof err) == 0);
    CHECK(v[0] == (float)0.1 && v[1] == -INFINITY && v[2] == 0x1p-14f);
    CHECK(ct_st_read_f32(st, s, v, 1, err, sizeof err) == 0 && v[0] == 3.5f);

    /* errors: wrong n, an integer tensor, a tensor that is not from this file */
    err[0] = '\0';
    CHECK(ct_st_read_f32(st, h, v, 5, err, sizeof err) == -1);
    CHECK(strstr(err, path) && strstr(err, "'h'") && strstr(err, "6 elements"));
    err[0] = '\0';
    CHECK(ct_st_read_f32(st, i, v, 2, err, sizeof err) == -1);
    CHECK(strstr(err, path) && strstr(err, "'i'") && strstr(err, "I64"));
    ct_st_tensor copy = *h;
    err[0] = '\0';
    CHECK(ct_st_read_f32(st, &copy, v, 6, err, sizeof err) == -1);
    CHECK(strstr(err, "not a tensor of this file") != NULL);
    ct_st_close(st);
    unlink(path);
}

static void fill_entries_check(const ct_safetensors *st, const ct_st_entry *e, int n, ct_dtype dt)
{
    CHECK(ct_st_count(st) == n);
    uint64_t off = 0;
    for (int k = 0; k < n && k < ct_st_count(st); k++) {
        const ct_st_tensor *t = ct_st_at(st, k);
        size_t numel = 1;
        for (int d = 0; d < e[k].ndim; d++)
            numel *= (size_t)e[k].shape[d];
        CHECK(!strcmp(t->name, e[k].name));
        CHECK(ct_st_find(st, e[k].name) == t);
        CHECK(t->dtype == dt && t->ndim == e[k].ndim && t->numel == numel);
        CHECK(!memcmp(t->shape, e[k].shape, (size_t)e[k].ndim * sizeof(int64_t)));
        CHECK(t->begin == off && t->end == off + numel * ct_dtype_size(dt)); /* contiguous, in order */
        off = t->end;
    }
}

static void test_roundtrip_f32(const char *dir)
{
    uint64_t rng = 42;
    float a[12], bias[4], cube[8], scalar = 7.25f;
    ct_test_fill(a, 12, &rng, -3, 3);
    ct_test_fill(bias, 4, &rng, -1e-30f, 1e30f);
    ct_test_fill(cube, 8, &rng, -1, 1);
    cube[3] = -0.0f, cube[5] = 0x1p-149f; /* sign of zero and an fp32 subnormal survive */
    ct_st_entry e[5] = {
        {.name = "wte.weight", .data = a, .ndim = 2, .shape = {3, 4}},
        {.name = "scalar", .data = &scalar, .ndim = 0},
        {.name = "empty", .data = NULL, .ndim = 2, .shape = {0, 5}},
        {.name = "h.0.ln_1.bias", .data = bias, .ndim = 1, .shape = {4}},
        {.name = "cube", .data = cube, .ndim = 3, .shape = {2, 2, 2}},
    };
    const char *meta[] = {"format", "pt", "note", "h\xc3\xa9llo \"quoted\"\n\\", NULL};
    char path[512], tmp[520], err[ERRLEN] = "";
    join(path, sizeof path, dir, "rt.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(ct_st_write(path, e, 5, CT_DT_F32, meta, err, sizeof err) == 0);
    CHECK(!file_exists(tmp));

    /* the data section starts 8-byte aligned: header length is a multiple of 8 */
    unsigned char lenbuf[8] = {0};
    FILE *f = fopen(path, "rb");
    CHECK(f && fread(lenbuf, 1, 8, f) == 8);
    if (f) fclose(f);
    CHECK(lenbuf[0] % 8 == 0);

    ct_safetensors *st = NULL;
    CHECK(ct_st_open(&st, path, err, sizeof err) == 0);
    if (!st) {
        fprintf(stderr, "open: %s\n", err);
        return;
    }
    CHECK(!strcmp(ct_st_path(st), path));
    fill_entries_check(st, e, 5, CT_DT_F32);
    CHECK(ct_st_metadata(st, "format") && !strcmp(ct_st_metadata(st, "format"), "pt"));
    CHECK(ct_st_metadata(st, "note") && !strcmp(ct_st_metadata(st, "note"), meta[3]));
    CHECK(ct_st_metadata(st, "missing") == NULL);
    CHECK(ct_st_find(st, "nope") == NULL && ct_st_at(st, 5) == NULL && ct_st_at(st, -1) == NULL);
    float got[12];
    for (int k = 0; k < 5; k++) {
        const ct_st_tensor *t = ct_st_at(st, k);
        memset(got, 0xAB, sizeof got);
        CHECK(ct_st_read_f32(st, t, got, t->numel, err, sizeof err) == 0);
        CHECK(t->numel == 0 || !memcmp(got, e[k].data, t->numel * sizeof(float))); /* bit-exact */
    }
    ct_st_close(st);

    /* rewriting replaces the file; without meta there is no metadata */
    CHECK(ct_st_write(path, e, 2, CT_DT_F32, NULL, err, sizeof err) == 0);
    st = NULL;
    CHECK(ct_st_open(&st, path, err, sizeof err) == 0);
    if (st) {
        fill_entries_check(st, e, 2, CT_DT_F32);
        CHECK(ct_st_metadata(st, "format") == NULL);
    }
    ct_st_close(st);
    unlink(path);
}

/* Writes x[n] as one tensor of dtype dt and reads it back as fp32 into y. */
static int roundtrip(const char *dir, ct_dtype dt, const float *x, float *y, size_t n)
{
    char path[512], err[ERRLEN] = "";
    join(path, sizeof path, dir, "rt16.safetensors");
    ct_st_entry e = {.name = "x", .data = x, .ndim = 1, .shape = {(int64_t)n}};
    ct_safetensors *st = NULL;
    int rc = ct_st_write(path, &e, 1, dt, NULL, err, sizeof err);
    if (rc == 0)
        rc = ct_st_open(&st, path, err, sizeof err);
    if (rc == 0 && ct_st_at(st, 0)->dtype != dt)
        rc = -1;
    if (rc == 0)
        rc = ct_st_read_f32(st, ct_st_at(st, 0), y, n, err, sizeof err);
    if (rc)
        fprintf(stderr, "roundtrip %s: %s\n", ct_dtype_name(dt), err);
    ct_st_close(st);
    unlink(path);
    return rc;
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Independent fp16 decoder (ldexp-based) to check the bit-twiddling one against. */
static float ref_f16(unsigned h)
{
    unsigned e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, (int)e - 25);
    return (float)((h & 0x8000) ? -v : v);
}

/* Counts elements whose bits differ (every NaN equals every NaN); reports the first. */
static int count_mismatch(const char *what, const float *in, const float *got, const float *want, size_t n)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if ((isnan(got[i]) && isnan(want[i])) || bits(got[i]) == bits(want[i]))
            continue;
        if (!bad++)
            fprintf(stderr, "%s: element %zu: in %a (0x%08x) got %a want %a\n", what, i, (double)in[i],
                    (unsigned)bits(in[i]), (double)got[i], (double)want[i]);
    }
    return bad;
}

/* F16: every finite value round trips exactly; every midpoint between neighbours rounds to the
 * even one and a hair either side rounds to the nearer; overflow goes to inf; NaN stays NaN. */
static void test_f16(const char *dir)
{
    size_t cap = 4 * 65536 + 16, n = 0;
    float *x = ct_test_alloc(cap), *want = ct_test_alloc(cap), *y = ct_test_alloc(cap);
    for (unsigned h = 0; h < 65536; h++)
        if (((h >> 10) & 31) != 31)
            x[n] = want[n] = ref_f16(h), n++;
    for (unsigned s = 0; s < 2; s++)
        for (unsigned h = 0; h < 0x7c00; h++) {
            float lo = ref_f16(h | s << 15), hi = h == 0x7bff ? (s ? -65536.0f : 65536.0f) : ref_f16((h + 1) | s << 15);
            float mid = (lo + hi) / 2, hiw = h == 0x7bff ? (s ? -INFINITY : INFINITY) : hi;
            x[n] = mid, want[n++] = (h & 1) ? hiw : lo;
            x[n] = nextafterf(mid, lo), want[n++] = lo;
            x[n] = nextafterf(mid, hi), want[n++] = hiw;
        }
    const float special[][2] = {{70000.0f, INFINITY}, {-1e30f, -INFINITY}, {INFINITY, INFINITY},
                                {65519.0f, 65504.0f}, {0x1p-26f, 0.0f},    {-0x1p-26f, -0.0f},
                                {0x1p-149f, 0.0f},    {1.0f + 0x1p-11f, 1.0f}, {1.0f + 3 * 0x1p-11f, 1.0f + 0x1p-9f},
                                {NAN, NAN},           {from_bits(0x7f800001u), NAN}, {from_bits(0xffc12345u), NAN}};
    for (size_t k = 0; k < sizeof special / sizeof special[0]; k++)
        x[n] = special[k][0], want[n++] = special[k][1];
    CHECK(roundtrip(dir, CT_DT_F16, x, y, n) == 0);
    CHECK(count_mismatch("F16", x, y, want, n) == 0);
    CHECK(isnan(y[n - 1]) && isnan(y[n - 2]) && isnan(y[n - 3]));

    /* ordinary values: within half an fp16 ulp (relative 2^-11) */
    uint64_t rng = 7;
    n = 4096;
    ct_test_fill(x, n, &rng, -4, 4);
    double *wd = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++)
        wd[i] = x[i];
    CHECK(roundtrip(dir, CT_DT_F16, x, y, n) == 0);
    CHECK(CHECK_CLOSE("F16 random", y, wd, n, 0x1p-11, 0x1p-25));
    free(wd);
    free(x), free(want), free(y);
}

/* BF16: the same properties, exhaustively over all 2^16 patterns. */
static void test_bf16(const char *dir)
{
    size_t cap = 4 * 65536 + 16, n = 0;
    float *x = ct_test_alloc(cap), *want = ct_test_alloc(cap), *y = ct_test_alloc(cap);
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7fff) > 0x7f80)
            continue; /* NaN */
        x[n] = want[n] = from_bits(h << 16), n++;
        if ((h & 0x7fff) == 0x7f80)
            continue; /* inf has no upper neighbour */
        float lo = from_bits(h << 16), hi = from_bits((h + 1) << 16); /* h + 1: next magnitude up */
        x[n] = from_bits(h << 16 | 0x8000), want[n++] = (h & 1) ? hi : lo;
        x[n] = from_bits(h << 16 | 0x7fff), want[n++] = lo;
        x[n] = from_bits(h << 16 | 0x8001), want[n++] = hi;
    }
    const float special[][2] = {{3.4028235e38f, INFINITY}, {1.0f + 0x1p-8f, 1.0f}, {1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-6f},
                                {NAN, NAN}, {from_bits(0x7f800001u), NAN}, {from_bits(0xff800001u), NAN}};
    for (size_t k = 0; k < sizeof special / sizeof special[0]; k++)
        x[n] = special[k][0], want[n++] = special[k][1];
    CHECK(roundtrip(dir, CT_DT_BF16, x, y, n) == 0);
    CHECK(count_mismatch("BF16", x, y, want, n) == 0);
    CHECK(isnan(y[n - 1]) && isnan(y[n - 2]) && isnan(y[n - 3]));
    CHECK(signbit(y[n - 1]) && !signbit(y[n - 2])); /* NaN keeps its sign */

    uint64_t rng = 9;
    n = 4096;
    ct_test_fill(x, n, &rng, -4, 4);
    double *wd = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++)
        wd[i] = x[i];
    CHECK(roundtrip(dir, CT_DT_BF16, x, y, n) == 0);
    CHECK(CHECK_CLOSE("BF16 random", y, wd, n, 0x1p-8, 0));
    free(wd);
    free(x), free(want), free(y);
}

/* Writer errors: nothing is created (or left behind) and the message names file and tensor. */
static void test_write_errors(const char *dir)
{
    char path[512], tmp[520], err[ERRLEN];
    float x[4] = {1, 2, 3, 4};
    join(path, sizeof path, dir, "w.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    ct_st_entry dup[2] = {{.name = "w", .data = x, .ndim = 1, .shape = {2}},
                          {.name = "w", .data = x + 2, .ndim = 1, .shape = {2}}};
    err[0] = '\0';
    CHECK(ct_st_write(path, dup, 2, CT_DT_F32, NULL, err, sizeof err) == -1);
    CHECK(strstr(err, path) && strstr(err, "'w'") && strstr(err, "duplicate"));
    CHECK(!file_exists(path) && !file_exists(tmp));

    err[0] = '\0';
    CHECK(ct_st_write(path, dup, 1, CT_DT_I64, NULL, err, sizeof err) == -1);
    CHECK(strstr(err, path) && strstr(err, "I64"));

    ct_st_entry neg = {.name = "n", .data = x, .ndim = 2, .shape = {2, -2}};
    err[0] = '\0';
    CHECK(ct_st_write(path, &neg, 1, CT_DT_F32, NULL, err, sizeof err) == -1);
    CHECK(strstr(err, "'n'") && strstr(err, "negative"));

    ct_st_entry nodata = {.name = "d", .data = NULL, .ndim = 1, .shape = {3}};
    err[0] = '\0';
    CHECK(ct_st_write(path, &nodata, 1, CT_DT_BF16, NULL, err, sizeof err) == -1);
    CHECK(strstr(err, "'d'") && strstr(err, "NULL"));

    ct_st_entry reserved = {.name = "__metadata__", .data = x, .ndim = 1, .shape = {1}};
    CHECK(ct_st_write(path, &reserved, 1, CT_DT_F32, NULL, err, sizeof err) == -1);
    const char *badmeta[] = {"format", NULL};
    CHECK(ct_st_write(path, dup, 1, CT_DT_F32, badmeta, err, sizeof err) == -1);
    const char *dupmeta[] = {"k", "a", "k", "b", NULL};
    CHECK(ct_st_write(path, dup, 1, CT_DT_F32, dupmeta, err, sizeof err) == -1);
    CHECK(!file_exists(path) && !file_exists(tmp));

    /* a directory that does not exist: cannot create the tmp file */
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir.safetensors", dir);
    err[0] = '\0';
    CHECK(ct_st_write(nodir, dup, 1, CT_DT_F32, NULL, err, sizeof err) == -1);
    CHECK(strstr(err, nodir) && strstr(err, "cannot create"));

    /* rename onto a directory fails after the data was written: the tmp file must be removed */
    CHECK(mkdir(path, 0755) == 0);
    err[0] = '\0';
    CHECK(ct_st_write(path, dup, 1, CT_DT_F32, NULL, err, sizeof err) == -1);
    CHECK(strstr(err, path) && strstr(err, "rename"));
    CHECK(!file_exists(tmp));
    CHECK(rmdir(path) == 0);
}

int main(void)
{
    char dir[] = "/tmp/ct_test_safetensors.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_roundtrip_f32(dir);
    test_f16(dir);
    test_bf16(dir);
    test_known_bytes(dir);
    test_valid_edges(dir);
    test_malformed(dir);
    test_write_errors(dir);
    CHECK(rmdir(dir) == 0); /* every test removed its files, and no "<path>.tmp" was left behind */
    if (file_exists(dir))
        fprintf(stderr, "left behind: %s\n", dir);
    return ct_test_finish("test_safetensors");
}
