/* safetensors.c — reader and writer for Hugging Face safetensors files (see safetensors.h).
 *
 * Reading: the 8-byte length and the JSON header are read and validated completely at open
 * (types, dtypes, shapes, offsets against the real data-section size, sizes; the tensors tiling
 * the data section exactly; no duplicate keys or NUL characters anywhere in the header), so every
 * later read is known to be in bounds and every byte of the file belongs to exactly one thing. Tensor data is not held in memory: it is
 * read with pread() on demand, which is thread-safe and needs no mapping of multi-GB files. The
 * parsed cJSON tree is kept for the lifetime of the handle; tensor names point into it.
 *
 * Writing: the header is built with cJSON (so names and metadata are escaped correctly), padded
 * with spaces to a multiple of 8 bytes like the Rust safetensors library does (the data section
 * then starts 8-byte aligned), written with the data to "<path>.tmp", fsync'ed and renamed over
 * path, so a failed or interrupted write never leaves a partial file at path.
 *
 * Tensor data in safetensors is little-endian; this file assumes a little-endian host. */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64

#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fail.h"
#include "json_check.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (safetensors data is little-endian)"
#endif
_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE-754 binary32/binary64 expected");

/* The Rust reference implementation refuses headers above 100 MB; so do we, which also bounds
 * the allocation a lying length field can cause. */
#define ST_MAX_HEADER 100000000ull
/* JSON numbers are doubles: integers above 2^53 cannot be represented exactly. */
#define ST_MAX_JSON_INT 9007199254740992.0

struct ct_safetensors {
    char *path;
    int fd;
    uint64_t data_start; /* file offset of the data section: 8 + header length */
    uint64_t data_len;   /* bytes from data_start to the end of the file */
    cJSON *root;         /* parsed header; owns the tensor name strings */
    const cJSON *meta;   /* the "__metadata__" object, or NULL */
    int n;
    ct_st_tensor *tensors;       /* [n], in file order */
    const ct_st_tensor **sorted; /* [n], by name, for ct_st_find */
};

static const struct {
    const char *name;
    size_t size;
} dtype_info[] = {
    [CT_DT_F32] = {"F32", 4}, [CT_DT_F16] = {"F16", 2}, [CT_DT_BF16] = {"BF16", 2}, [CT_DT_F64] = {"F64", 8},
    [CT_DT_I64] = {"I64", 8}, [CT_DT_I32] = {"I32", 4}, [CT_DT_U8] = {"U8", 1},     [CT_DT_BOOL] = {"BOOL", 1},
};
#define ST_NDTYPES ((int)(sizeof dtype_info / sizeof dtype_info[0]))

const char *ct_dtype_name(ct_dtype dt)
{
    return (int)dt >= 0 && (int)dt < ST_NDTYPES ? dtype_info[dt].name : "?";
}

/* 0 for a value outside the enum. */
size_t ct_dtype_size(ct_dtype dt)
{
    return (int)dt >= 0 && (int)dt < ST_NDTYPES ? dtype_info[dt].size : 0;
}

/* ---- fp16 / bf16 conversions (bit-exact, no dependence on compiler half-float support) ---- */

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact in fp32 */
        float v = (float)mant * 0x1p-24f;
        return bits_to_f32(f32_to_bits(v) | sign);
    }
    if (exp == 31) /* inf, or nan keeping its payload */
        return bits_to_f32(sign | 0x7f800000u | (mant << 13));
    return bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

static float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

/* Round to nearest even; values >= 65520 (the midpoint between 65504 and 2^16) become inf; NaN
 * stays NaN (made quiet, sign and top payload bits kept). */
static uint16_t f32_to_f16(float f)
{
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);
    if (a >= 0x38800000u) { /* normal in f16: rebias the exponent, round off 13 mantissa bits */
        uint32_t r = a - (112u << 23);
        r += 0xfffu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    uint32_t e = a >> 23;
    if (e < 102) /* below 2^-25: rounds to zero */
        return sign;
    /* subnormal in f16: count units of 2^-24; a carry into 0x400 gives the smallest normal */
    uint32_t m = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}

/* Round to nearest even (overflow goes to inf, as in PyTorch); NaN stays NaN (made quiet). */
static uint16_t f32_to_bf16(float f)
{
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* double -> float without relying on out-of-range conversion behaviour (undefined in C):
 * values at or beyond the midpoint between FLT_MAX and 2^128 round to inf. */
static float f64_to_f32(double d)
{
    if (d >= 0x1.ffffffp127)
        return bits_to_f32(0x7f800000u);
    if (d <= -0x1.ffffffp127)
        return bits_to_f32(0xff800000u);
    return (float)d;
}

/* ---- reading ---- */

/* Reads exactly len bytes at off; fails with errno set (EIO for a file that shrank). */
static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    unsigned char *p = buf;
    while (len) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = EIO;
            return -1;
        }
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

/* Strict UTF-8 check (no overlongs, surrogates or code points above U+10FFFF): the Rust library
 * rejects headers that are not UTF-8, so files we accept or write must be UTF-8 too. */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned lo = 0x80, hi = 0xbf;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c >= 0xe0 && c <= 0xef) { len = 3; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
        else if (c >= 0xf0 && c <= 0xf4) { len = 4; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
        else return 0;
        if (n - i < len) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80) return 0;
        i += len;
    }
    return 1;
}

/* A JSON number that is an integer in [0, 2^53]; fills *v. */
static int json_uint(const cJSON *j, uint64_t *v)
{
    if (!cJSON_IsNumber(j))
        return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_JSON_INT) || (double)(uint64_t)d != d)
        return 0;
    *v = (uint64_t)d;
    return 1;
}

/* Prints a shape as "[a, b, c]" into buf. */
static const char *shape_str(char *buf, size_t len, const int64_t *shape, int ndim)
{
    size_t k = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, i ? ", %" PRId64 : "%" PRId64, shape[i]);
    if (k < len)
        snprintf(buf + k, len - k, "]");
    return buf;
}

/* Element count of a shape, failing (returning 0) when it or its byte size overflows 64 bits. */
static int shape_numel(const int64_t *shape, int ndim, size_t dsize, size_t *numel)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0) { *numel = 0; return 1; }
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > SIZE_MAX / n)
            return 0;
        n *= (size_t)shape[i];
    }
    if (n > SIZE_MAX / dsize)
        return 0;
    *numel = n;
    return 1;
}

/* Parses one header entry into t; the error names the tensor. */
static int parse_entry(const char *path, const cJSON *e, uint64_t data_len, ct_st_tensor *t, char *err,
                       size_t errlen)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return ct_fail(err, errlen, "%s: tensor '%s': entry is not a JSON object", path, name);
    /* duplicate keys were refused by ct_json_check */
    const cJSON *jdt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *jshape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *joff = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    t->name = name;

    if (!jdt)
        return ct_fail(err, errlen, "%s: tensor '%s': missing \"dtype\"", path, name);
    if (!cJSON_IsString(jdt))
        return ct_fail(err, errlen, "%s: tensor '%s': \"dtype\" is not a string", path, name);
    int dt = -1;
    for (int i = 0; i < ST_NDTYPES; i++)
        if (!strcmp(jdt->valuestring, dtype_info[i].name))
            dt = i;
    if (dt < 0)
        return ct_fail(err, errlen,
                    "%s: tensor '%s': unknown or unsupported dtype '%s' (supported: F32, F16, BF16, F64, I64, "
                    "I32, U8, BOOL)", path, name, jdt->valuestring);
    t->dtype = (ct_dtype)dt;

    if (!jshape)
        return ct_fail(err, errlen, "%s: tensor '%s': missing \"shape\"", path, name);
    if (!cJSON_IsArray(jshape))
        return ct_fail(err, errlen, "%s: tensor '%s': \"shape\" is not an array", path, name);
    int ndim = cJSON_GetArraySize(jshape);
    if (ndim > CT_ST_MAX_DIMS)
        return ct_fail(err, errlen, "%s: tensor '%s': shape has %d dims, at most %d are supported", path, name, ndim,
                    CT_ST_MAX_DIMS);
    t->ndim = ndim;
    int i = 0;
    for (const cJSON *d = jshape->child; d; d = d->next, i++) {
        uint64_t v;
        if (!json_uint(d, &v)) {
            if (cJSON_IsNumber(d))
                return ct_fail(err, errlen, "%s: tensor '%s': shape[%d] = %.17g is not a non-negative integer",
                            path, name, i, d->valuedouble);
            return ct_fail(err, errlen, "%s: tensor '%s': shape[%d] is not a number", path, name, i);
        }
        t->shape[i] = (int64_t)v;
    }
    char sbuf[256];
    if (!shape_numel(t->shape, ndim, dtype_info[dt].size, &t->numel))
        return ct_fail(err, errlen, "%s: tensor '%s': shape %s has too many elements (size overflows 64 bits)", path,
                    name, shape_str(sbuf, sizeof sbuf, t->shape, ndim));

    if (!joff)
        return ct_fail(err, errlen, "%s: tensor '%s': missing \"data_offsets\"", path, name);
    if (!cJSON_IsArray(joff) || cJSON_GetArraySize(joff) != 2)
        return ct_fail(err, errlen, "%s: tensor '%s': \"data_offsets\" is not an array [begin, end]", path, name);
    if (!json_uint(joff->child, &t->begin) || !json_uint(joff->child->next, &t->end))
        return ct_fail(err, errlen, "%s: tensor '%s': \"data_offsets\" entries are not non-negative integers", path,
                    name);
    if (t->end < t->begin)
        return ct_fail(err, errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end is before begin",
                    path, name, t->begin, t->end);
    if (t->end > data_len)
        return ct_fail(err, errlen,
                    "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end beyond the data section (%" PRIu64
                    " bytes; file truncated?)", path, name, t->begin, t->end, data_len);
    uint64_t want = (uint64_t)t->numel * dtype_info[dt].size;
    if (t->end - t->begin != want)
        return ct_fail(err, errlen,
                    "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] span %" PRIu64 " bytes but shape %s of "
                    "%s needs %" PRIu64, path, name, t->begin, t->end, t->end - t->begin,
                    shape_str(sbuf, sizeof sbuf, t->shape, ndim), dtype_info[dt].name, want);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* "__metadata__" must be an object of strings, as in the Rust library (HashMap<String, String>);
 * ct_json_check refused duplicate keys. */
static int check_metadata(const char *path, const cJSON *m, char *err, size_t errlen)
{
    if (!cJSON_IsObject(m))
        return ct_fail(err, errlen, "%s: __metadata__: not a JSON object", path);
    for (const cJSON *a = m->child; a; a = a->next)
        if (!cJSON_IsString(a))
            return ct_fail(err, errlen, "%s: __metadata__: key '%s': value is not a string", path, a->string);
    return 0;
}

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp((*(const ct_st_tensor *const *)a)->name, (*(const ct_st_tensor *const *)b)->name);
}

static int cmp_name_key(const void *key, const void *elem)
{
    return strcmp((const char *)key, (*(const ct_st_tensor *const *)elem)->name);
}

static int cmp_by_offset(const void *a, const void *b)
{
    const ct_st_tensor *x = *(const ct_st_tensor *const *)a, *y = *(const ct_st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* The tensors must tile the data section exactly, as the Rust library requires: sorted by
 * (begin, end), each begins where the one before ends, the first at 0, and the last ends where the
 * file does. So no byte belongs to two tensors or to none (no gaps, no trailing bytes), and an
 * empty tensor sits on a boundary. Names are sorted for ct_st_find (ct_json_check refused
 * duplicates). */
static int check_layout(ct_safetensors *st, char *err, size_t errlen)
{
    int n = st->n;
    for (int i = 0; i < n; i++)
        st->sorted[i] = &st->tensors[i];
    qsort(st->sorted, (size_t)n, sizeof *st->sorted, cmp_by_name);

    const ct_st_tensor **by_off = malloc((n > 0 ? (size_t)n : 1) * sizeof *by_off);
    if (!by_off)
        return ct_fail(err, errlen, "%s: out of memory", st->path);
    for (int i = 0; i < n; i++)
        by_off[i] = &st->tensors[i];
    qsort(by_off, (size_t)n, sizeof *by_off, cmp_by_offset);
    int rc = 0;
    uint64_t at = 0;
    for (int i = 0; i < n && !rc; i++) {
        const ct_st_tensor *t = by_off[i], *p = i ? by_off[i - 1] : NULL;
        if (t->begin < at)
            rc = ct_fail(err, errlen,
                      "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] %s tensor '%s' [%" PRIu64 ", %" PRIu64
                      "]", st->path, t->name, t->begin, t->end, t->end > t->begin ? "overlap" : "lie inside",
                      p->name, p->begin, p->end);
        else if (t->begin > at)
            rc = ct_fail(err, errlen,
                      "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] leave a gap: bytes [%" PRIu64
                      ", %" PRIu64 ") of the data section belong to no tensor (safetensors has no gaps)",
                      st->path, t->name, t->begin, t->end, at, t->begin);
        at = t->end;
    }
    if (!rc && at != st->data_len)
        rc = ct_fail(err, errlen,
                  "%s: data section: %" PRIu64 " trailing bytes belong to no tensor (the tensors end at byte %" PRIu64
                  " of %" PRIu64 ")", st->path, st->data_len - at, at, st->data_len);
    free(by_off);
    return rc;
}

/* Parses the header bytes buf[len] into st; every error names the file and the entry. */
static int parse_header(ct_safetensors *st, const char *buf, size_t len, char *err, size_t errlen)
{
    const char *path = st->path;
    if (memchr(buf, '\0', len))
        return ct_fail(err, errlen, "%s: header: contains a NUL byte", path);
    if (!utf8_valid((const unsigned char *)buf, len))
        return ct_fail(err, errlen, "%s: header: not valid UTF-8", path);
    const char *end = NULL;
    st->root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!st->root)
        return ct_fail(err, errlen, "%s: header: not valid JSON (error near byte %td of %zu)", path,
                    end ? end - buf : (ptrdiff_t)0, len);
    for (const char *p = end; p < buf + len; p++) /* writers pad with spaces; anything else is junk */
        if (!strchr(" \t\r\n", *p))
            return ct_fail(err, errlen, "%s: header: unexpected data after the JSON object at byte %td", path, p - buf);
    char where[4200];
    snprintf(where, sizeof where, "%s: header", path);
    if (ct_json_check(buf, len, st->root, where, err, errlen))
        return -1;
    if (!cJSON_IsObject(st->root))
        return ct_fail(err, errlen, "%s: header: not a JSON object", path);

    int n = 0;
    for (const cJSON *e = st->root->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) {
            if (check_metadata(path, e, err, errlen))
                return -1;
            st->meta = e;
        } else {
            n++;
        }
    }
    st->tensors = calloc(n > 0 ? (size_t)n : 1, sizeof *st->tensors);
    st->sorted = calloc(n > 0 ? (size_t)n : 1, sizeof *st->sorted);
    if (!st->tensors || !st->sorted)
        return ct_fail(err, errlen, "%s: out of memory for %d tensor entries", path, n);
    for (const cJSON *e = st->root->child; e; e = e->next) {
        if (e == st->meta)
            continue;
        if (parse_entry(path, e, st->data_len, &st->tensors[st->n], err, errlen))
            return -1;
        st->n++;
    }
    return check_layout(st, err, errlen);
}

/* On any error (unreadable file, bad length, malformed or inconsistent header) returns -1 with
 * *out NULL and everything released; the message names the file and the offending entry. */
int ct_st_open(ct_safetensors **out, const char *path, char *err, size_t errlen)
{
    if (!out || !path)
        return ct_fail(err, errlen, "safetensors: no %s given", out ? "path" : "output handle");
    *out = NULL;
    ct_safetensors *st = calloc(1, sizeof *st);
    char *hdr = NULL;
    if (!st || !(st->path = malloc(strlen(path) + 1))) {
        free(st);
        return ct_fail(err, errlen, "%s: out of memory", path);
    }
    strcpy(st->path, path);
    st->fd = -1;

    int rc = -1;
    struct stat sb;
    unsigned char lenbuf[8];
    st->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (st->fd < 0) {
        ct_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto done;
    }
    if (fstat(st->fd, &sb) != 0) {
        ct_fail(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(sb.st_mode)) {
        ct_fail(err, errlen, "%s: not a regular file", path);
        goto done;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8) {
        ct_fail(err, errlen, "%s: header length: file is %" PRIu64 " bytes, too short for the 8-byte header length",
             path, size);
        goto done;
    }
    if (pread_full(st->fd, lenbuf, 8, 0) != 0) {
        ct_fail(err, errlen, "%s: header length: read failed: %s", path, strerror(errno));
        goto done;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | lenbuf[i];
    if (hlen > ST_MAX_HEADER) {
        ct_fail(err, errlen, "%s: header length: %" PRIu64 " bytes is more than the %llu-byte limit (corrupt file?)",
             path, hlen, ST_MAX_HEADER);
        goto done;
    }
    if (hlen > size - 8) {
        ct_fail(err, errlen, "%s: header length: %" PRIu64 " bytes exceeds the file size (%" PRIu64 " bytes)", path,
             hlen, size);
        goto done;
    }
    st->data_start = 8 + hlen;
    st->data_len = size - st->data_start;
    if (!(hdr = malloc(hlen ? hlen : 1))) {
        ct_fail(err, errlen, "%s: header: out of memory for %" PRIu64 " bytes", path, hlen);
        goto done;
    }
    if (pread_full(st->fd, hdr, hlen, 8) != 0) {
        ct_fail(err, errlen, "%s: header: read failed: %s", path, strerror(errno));
        goto done;
    }
    if (parse_header(st, hdr, hlen, err, errlen) != 0)
        goto done;
    rc = 0;
done:
    free(hdr);
    if (rc != 0) {
        ct_st_close(st);
        return -1;
    }
    *out = st;
    return 0;
}

/* Releases everything; NULL is a no-op. */
void ct_st_close(ct_safetensors *st)
{
    if (!st)
        return;
    if (st->fd >= 0)
        close(st->fd);
    cJSON_Delete(st->root);
    free(st->tensors);
    free(st->sorted);
    free(st->path);
    free(st);
}

const char *ct_st_path(const ct_safetensors *st) { return st ? st->path : NULL; }

int ct_st_count(const ct_safetensors *st) { return st ? st->n : 0; }

/* NULL when i is out of range. */
const ct_st_tensor *ct_st_at(const ct_safetensors *st, int i)
{
    return st && i >= 0 && i < st->n ? &st->tensors[i] : NULL;
}

/* Binary search over the names sorted at open; NULL if absent. */
const ct_st_tensor *ct_st_find(const ct_safetensors *st, const char *name)
{
    if (!st || !name || !st->n)
        return NULL;
    const ct_st_tensor *const *p = bsearch(name, st->sorted, (size_t)st->n, sizeof *st->sorted, cmp_name_key);
    return p ? *p : NULL;
}

/* NULL when the file has no "__metadata__" or no such key. */
const char *ct_st_metadata(const ct_safetensors *st, const char *key)
{
    if (!st || !st->meta || !key)
        return NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(st->meta, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Fails (naming the tensor) for a tensor not from st, a non-float dtype, n != numel, or a read
 * error (e.g. the file shrank since open). On failure dst may be partly written. */
int ct_st_read_f32(ct_safetensors *st, const ct_st_tensor *t, float *dst, size_t n, char *err, size_t errlen)
{
    if (!st || !t)
        return ct_fail(err, errlen, "%s: no tensor given", st ? st->path : "safetensors");
    if (t < st->tensors || t >= st->tensors + st->n)
        return ct_fail(err, errlen, "%s: tensor '%s': not a tensor of this file", st->path, t->name ? t->name : "?");
    if (t->dtype != CT_DT_F32 && t->dtype != CT_DT_F16 && t->dtype != CT_DT_BF16 && t->dtype != CT_DT_F64)
        return ct_fail(err, errlen, "%s: tensor '%s': dtype %s cannot be read as fp32 (floating dtypes only)",
                    st->path, t->name, ct_dtype_name(t->dtype));
    if (n != t->numel)
        return ct_fail(err, errlen, "%s: tensor '%s': has %zu elements but the destination holds %zu", st->path,
                    t->name, t->numel, n);
    if (!n)
        return 0;
    if (!dst)
        return ct_fail(err, errlen, "%s: tensor '%s': destination is NULL", st->path, t->name);
    uint64_t off = st->data_start + t->begin;
    if (t->dtype == CT_DT_F32) {
        if (pread_full(st->fd, dst, n * 4, off) != 0)
            return ct_fail(err, errlen, "%s: tensor '%s': read failed: %s", st->path, t->name, strerror(errno));
        return 0;
    }
    /* Other dtypes go through a small bounce buffer, so no allocation scales with the tensor. */
    unsigned char buf[1 << 15];
    size_t esz = ct_dtype_size(t->dtype), per = sizeof buf / esz;
    for (size_t i = 0; i < n; i += per) {
        size_t m = n - i < per ? n - i : per;
        if (pread_full(st->fd, buf, m * esz, off + i * esz) != 0)
            return ct_fail(err, errlen, "%s: tensor '%s': read failed: %s", st->path, t->name, strerror(errno));
        for (size_t j = 0; j < m; j++) {
            const unsigned char *p = buf + j * esz;
            if (t->dtype == CT_DT_F64) {
                double d;
                memcpy(&d, p, 8);
                dst[i + j] = f64_to_f32(d);
            } else {
                uint16_t h = (uint16_t)(p[0] | p[1] << 8);
                dst[i + j] = t->dtype == CT_DT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
            }
        }
    }
    return 0;
}

/* ---- writing ---- */

/* Product of the dimensions; only for shapes check_entries accepted (no overflow). */
static size_t entry_numel(const ct_st_entry *e)
{
    size_t numel = 1;
    for (int d = 0; d < e->ndim; d++)
        numel *= (size_t)e->shape[d];
    return numel;
}

/* Validates the arguments of a write before any file is touched; the data pointers only when
 * need_data. Duplicate names are found by sorting (sharded models have up to ~10^5 tensors). */
static int check_entries(const char *path, const ct_st_entry *entries, int n, ct_dtype dtype, const char *const *meta,
                         int need_data, char *err, size_t errlen)
{
    if (dtype != CT_DT_F32 && dtype != CT_DT_BF16 && dtype != CT_DT_F16)
        return ct_fail(err, errlen, "%s: dtype: cannot write %s (F32, BF16 or F16 only)", path, ct_dtype_name(dtype));
    if (n < 0 || (n > 0 && !entries))
        return ct_fail(err, errlen, "%s: entries: invalid count %d", path, n);
    for (int i = 0; i < n; i++) {
        const ct_st_entry *e = &entries[i];
        const char *name = e->name;
        size_t numel;
        char sbuf[256];
        if (!name || !*name)
            return ct_fail(err, errlen, "%s: entry %d: empty tensor name", path, i);
        if (!strcmp(name, "__metadata__"))
            return ct_fail(err, errlen, "%s: tensor '%s': name is reserved", path, name);
        if (!utf8_valid((const unsigned char *)name, strlen(name)))
            return ct_fail(err, errlen, "%s: entry %d: tensor name is not valid UTF-8", path, i);
        if (e->ndim < 0 || e->ndim > CT_ST_MAX_DIMS)
            return ct_fail(err, errlen, "%s: tensor '%s': ndim %d is not in [0, %d]", path, name, e->ndim,
                        CT_ST_MAX_DIMS);
        for (int d = 0; d < e->ndim; d++)
            if (e->shape[d] < 0)
                return ct_fail(err, errlen, "%s: tensor '%s': shape[%d] = %" PRId64 " is negative", path, name, d,
                            e->shape[d]);
        if (!shape_numel(e->shape, e->ndim, ct_dtype_size(dtype), &numel) || numel > (size_t)ST_MAX_JSON_INT)
            return ct_fail(err, errlen, "%s: tensor '%s': shape %s is too large", path, name,
                        shape_str(sbuf, sizeof sbuf, e->shape, e->ndim));
        if (need_data && numel && !e->data)
            return ct_fail(err, errlen, "%s: tensor '%s': data is NULL", path, name);
    }
    const char **names = malloc((n > 0 ? (size_t)n : 1) * sizeof *names);
    if (!names)
        return ct_fail(err, errlen, "%s: out of memory", path);
    for (int i = 0; i < n; i++)
        names[i] = entries[i].name;
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    int rc = 0;
    for (int i = 1; i < n && !rc; i++)
        if (!strcmp(names[i - 1], names[i]))
            rc = ct_fail(err, errlen, "%s: tensor '%s': duplicate tensor name", path, names[i]);
    free(names);
    if (rc)
        return rc;
    for (int i = 0; meta && meta[i]; i += 2) {
        if (!meta[i + 1])
            return ct_fail(err, errlen, "%s: __metadata__: key '%s' has no value", path, meta[i]);
        if (!utf8_valid((const unsigned char *)meta[i], strlen(meta[i])) ||
            !utf8_valid((const unsigned char *)meta[i + 1], strlen(meta[i + 1])))
            return ct_fail(err, errlen, "%s: __metadata__: key '%s': not valid UTF-8", path, meta[i]);
        for (int j = 0; j < i; j += 2)
            if (!strcmp(meta[j], meta[i]))
                return ct_fail(err, errlen, "%s: __metadata__: duplicate key '%s'", path, meta[i]);
    }
    return 0;
}

int ct_st_check_entries(const char *path, const ct_st_entry *entries, int n, ct_dtype dtype, const char *const *meta,
                        int need_data, char *err, size_t errlen)
{
    return check_entries(path ? path : "safetensors", entries, n, dtype, meta, need_data, err, errlen);
}

/* An unquoted JSON integer (cJSON would print large doubles in exponent form, which strict
 * parsers such as serde reject for integer fields). */
static cJSON *json_int(uint64_t v)
{
    char s[32];
    snprintf(s, sizeof s, "%" PRIu64, v);
    return cJSON_CreateRaw(s);
}

/* The header text, padded with spaces to a multiple of 8 bytes; NULL when out of memory. */
static char *build_header(const ct_st_entry *entries, int n, ct_dtype dtype, const char *const *meta, size_t *len)
{
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    if (ok && meta) { /* first, where the Rust library puts it */
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        ok = m != NULL;
        for (int i = 0; ok && meta[i]; i += 2)
            ok = cJSON_AddStringToObject(m, meta[i], meta[i + 1]) != NULL;
    }
    uint64_t off = 0;
    for (int i = 0; ok && i < n; i++) {
        const ct_st_entry *e = &entries[i];
        size_t numel = entry_numel(e); /* shape checked in check_entries */
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        cJSON *shape = t ? cJSON_CreateArray() : NULL, *offs = shape ? cJSON_CreateArray() : NULL;
        ok = offs && cJSON_AddStringToObject(t, "dtype", ct_dtype_name(dtype));
        if (!ok) {
            cJSON_Delete(shape);
            cJSON_Delete(offs);
            break;
        }
        cJSON_AddItemToObject(t, "shape", shape);
        cJSON_AddItemToObject(t, "data_offsets", offs);
        for (int d = 0; ok && d < e->ndim; d++)
            ok = cJSON_AddItemToArray(shape, json_int((uint64_t)e->shape[d]));
        uint64_t end = off + (uint64_t)numel * ct_dtype_size(dtype);
        ok = ok && cJSON_AddItemToArray(offs, json_int(off)) && cJSON_AddItemToArray(offs, json_int(end));
        off = end;
    }
    char *txt = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!txt)
        return NULL;
    size_t l = strlen(txt), padded = (l + 7) / 8 * 8;
    char *h = malloc(padded + 1); /* a copy, so the caller frees with free() whatever cJSON's hooks are */
    if (h) {
        memcpy(h, txt, l);
        memset(h + l, ' ', padded - l);
    }
    cJSON_free(txt);
    if (!h)
        return NULL;
    h[padded] = '\0';
    *len = padded;
    return h;
}

/* Converts and writes one tensor's data through a small buffer; returns 0 or -1 (errno set). */
static int write_data(FILE *f, const float *x, size_t n, ct_dtype dtype)
{
    if (n == 0) /* data may be NULL then, which fwrite must not see */
        return 0;
    if (dtype == CT_DT_F32)
        return fwrite(x, 4, n, f) == n ? 0 : -1;
    unsigned char buf[1 << 15];
    const size_t per = sizeof buf / 2;
    for (size_t i = 0; i < n; i += per) {
        size_t m = n - i < per ? n - i : per;
        for (size_t j = 0; j < m; j++) {
            uint16_t h = dtype == CT_DT_F16 ? f32_to_f16(x[i + j]) : f32_to_bf16(x[i + j]);
            buf[2 * j] = (unsigned char)(h & 0xff);
            buf[2 * j + 1] = (unsigned char)(h >> 8);
        }
        if (fwrite(buf, 2, m, f) != m)
            return -1;
    }
    return 0;
}

/* Best effort: makes the rename itself durable. Failure is not an error (the data is synced). */
static void sync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = NULL;
    if (slash) {
        size_t l = slash == path ? 1 : (size_t)(slash - path);
        if (!(dir = malloc(l + 1)))
            return;
        memcpy(dir, path, l);
        dir[l] = '\0';
    }
    int fd = open(dir ? dir : ".", O_RDONLY | O_CLOEXEC);
    free(dir);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}


/* ---- streaming writer: header first, then each tensor's data in entry order ---- */

struct ct_st_writer {
    char *path;
    FILE *f;
    const ct_st_entry *entries; /* the caller's, valid until close */
    int n, next;                /* tensors in all, tensors written */
    ct_dtype dtype;
    int failed;                 /* a write failed: the file is incomplete */
};

/* Validates like ct_st_write (data pointers are not looked at), creates path itself (no temporary
 * name: the caller renames) and writes the 8-byte length and the padded header. */
int ct_st_writer_open(ct_st_writer **out, const char *path, const ct_st_entry *entries, int n, ct_dtype dtype,
                      const char *const *meta, char *err, size_t errlen)
{
    if (!out || !path || !*path)
        return ct_fail(err, errlen, "safetensors: no %s given", out ? "output path" : "output handle");
    *out = NULL;
    if (check_entries(path, entries, n, dtype, meta, 0, err, errlen))
        return -1;
    size_t hlen = 0;
    char *hdr = build_header(entries, n, dtype, meta, &hlen);
    if (!hdr)
        return ct_fail(err, errlen, "%s: out of memory building the header", path);
    if (hlen > ST_MAX_HEADER) {
        free(hdr);
        return ct_fail(err, errlen, "%s: header: %zu bytes is more than readers accept (%llu)", path, hlen,
                    ST_MAX_HEADER);
    }
    ct_st_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = malloc(strlen(path) + 1))) {
        free(w);
        free(hdr);
        return ct_fail(err, errlen, "%s: out of memory", path);
    }
    strcpy(w->path, path);
    w->entries = entries;
    w->n = n;
    w->dtype = dtype;
    if (!(w->f = fopen(path, "wb"))) {
        ct_fail(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        free(w->path);
        free(w);
        free(hdr);
        return -1;
    }
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    int ok = fwrite(lenbuf, 1, 8, w->f) == 8 && fwrite(hdr, 1, hlen, w->f) == hlen;
    free(hdr);
    if (!ok) {
        ct_fail(err, errlen, "%s: header: write failed: %s", path, strerror(errno));
        ct_st_writer_abort(w);
        return -1;
    }
    *out = w;
    return 0;
}

/* The next tensor's data: numel fp32 values, converted to the writer's dtype. */
int ct_st_writer_put(ct_st_writer *w, const float *data, size_t numel, char *err, size_t errlen)
{
    if (!w)
        return ct_fail(err, errlen, "safetensors: no writer given");
    if (w->failed)
        return ct_fail(err, errlen, "%s: an earlier write failed", w->path);
    if (w->next >= w->n)
        return ct_fail(err, errlen, "%s: all %d tensors are already written", w->path, w->n);
    const ct_st_entry *e = &w->entries[w->next];
    size_t want = entry_numel(e);
    if (numel != want)
        return ct_fail(err, errlen, "%s: tensor '%s': %zu values given, its shape holds %zu", w->path, e->name, numel,
                    want);
    if (numel && !data)
        return ct_fail(err, errlen, "%s: tensor '%s': data is NULL", w->path, e->name);
    if (write_data(w->f, data, numel, w->dtype) != 0) {
        w->failed = 1;
        return ct_fail(err, errlen, "%s: tensor '%s': write failed: %s", w->path, e->name, strerror(errno));
    }
    w->next++;
    return 0;
}

/* Frees w; the file stays only when every tensor was written and flushing, syncing and closing
 * succeeded. */
int ct_st_writer_close(ct_st_writer *w, char *err, size_t errlen)
{
    if (!w)
        return ct_fail(err, errlen, "safetensors: no writer given");
    int rc = 0;
    if (w->failed)
        rc = ct_fail(err, errlen, "%s: an earlier write failed", w->path);
    else if (w->next < w->n)
        rc = ct_fail(err, errlen, "%s: tensor '%s': no data written (%d of %d tensors)", w->path,
                  w->entries[w->next].name, w->next, w->n);
    else if (fflush(w->f) != 0)
        rc = ct_fail(err, errlen, "%s: write failed: %s", w->path, strerror(errno));
    else if (fsync(fileno(w->f)) != 0)
        rc = ct_fail(err, errlen, "%s: cannot sync: %s", w->path, strerror(errno));
    if (fclose(w->f) != 0 && !rc)
        rc = ct_fail(err, errlen, "%s: write failed: %s", w->path, strerror(errno));
    if (rc)
        unlink(w->path);
    free(w->path);
    free(w);
    return rc;
}

void ct_st_writer_abort(ct_st_writer *w)
{
    if (!w)
        return;
    fclose(w->f);
    unlink(w->path);
    free(w->path);
    free(w);
}

/* Fails without touching path for bad arguments (unsupported dtype, duplicate or empty names,
 * bad shapes, NULL data, malformed meta); fails leaving path as it was (and no "<path>.tmp")
 * when writing, syncing or renaming fails. Exports for `transformers` should put "format" = "pt"
 * in meta (as save_pretrained does): older (4.x) versions refuse metadata without it. */
int ct_st_write(const char *path, const ct_st_entry *entries, int n, ct_dtype dtype, const char *const *meta,
                char *err, size_t errlen)
{
    if (!path || !*path)
        return ct_fail(err, errlen, "safetensors: no output path given");
    if (check_entries(path, entries, n, dtype, meta, 1, err, errlen))
        return -1;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp)
        return ct_fail(err, errlen, "%s: out of memory", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);

    ct_st_writer *w = NULL;
    int rc = ct_st_writer_open(&w, tmp, entries, n, dtype, meta, err, errlen);
    for (int i = 0; rc == 0 && i < n; i++)
        rc = ct_st_writer_put(w, entries[i].data, entry_numel(&entries[i]), err, errlen);
    if (rc == 0) {
        rc = ct_st_writer_close(w, err, errlen); /* removes tmp on failure */
        if (rc == 0 && rename(tmp, path) != 0) {
            rc = ct_fail(err, errlen, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
            unlink(tmp);
        }
    } else {
        ct_st_writer_abort(w); /* NULL when open failed */
    }
    if (rc == 0)
        sync_parent_dir(path);
    free(tmp);
    return rc;
}
