/* dataset.c — HDF5 token datasets: the writer (a temporary name, renamed when complete), the
 * opener that validates every dataset and attribute before anyone reads a token, and range reads
 * through hyperslab selections so a rank touches only the bytes it needs. An index file (/shards
 * naming other datasets) reads as the concatenation of its shards: every shard is validated at
 * open, then opened again on demand, a few at a time (SHARD_CACHE).
 *
 * Reading is independent per rank, so files are opened with the default (serial) driver even in
 * a parallel HDF5 build. HDF5's own error stacks are silenced on every call that can fail: the
 * caller gets one message "<file>: <dataset or attribute>: <what is wrong>" instead. */
#include "data.h"
#include "data_impl.h"

#include <hdf5.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SHARD_CACHE 8 /* shards of an index held open at once */

struct ct_dataset {
    char *path;
    ct_dataset_meta meta;     /* root attributes */
    size_t n;                 /* tokens */
    size_t ndocs;             /* /doc_offsets entries (an index: of all its shards) */
    /* an index: no /tokens of its own; shard i holds tokens [shard_start[i], shard_start[i+1]) */
    size_t nshards;
    char **shard_path;        /* [nshards], resolved against the index's folder */
    uint64_t *shard_start;    /* [nshards + 1] */
    uint64_t *doc_start;      /* [nshards + 1] the first document of each shard */
    int any_mask;             /* some shard has /loss_mask */
    int has_target;           /* some token counts as a target (no /loss_mask, or a 1 in it) */
    ct_dataset *cache[SHARD_CACHE];
    size_t cache_shard[SHARD_CACHE];
    uint64_t cache_used[SHARD_CACHE], clock;
    hid_t file;
    hid_t tokens, mask;       /* mask: H5I_INVALID_HID when the file has none */
    hid_t tok_space, mask_space;  /* file dataspaces, reselected by every read */
    hid_t docs, docs_space;   /* /doc_offsets: H5I_INVALID_HID when the file has none */
    hid_t mask_memtype;       /* native uint8, or the file's own 1-byte enum (numpy bool via h5py) */
    hid_t mem_space;          /* resized by every read: no dataspace is created per read */
    hid_t dxpl;               /* a conversion callback that turns out-of-range values into errors */
    int overflow;             /* set by that callback during a read */
};

/* ---- HDF5 error handling: no stack dumps on stderr, our message instead */
typedef struct {
    H5E_auto2_t func;
    void *data;
} quiet_t;

static quiet_t quiet_on(void)
{
    quiet_t q = {NULL, NULL};
    H5Eget_auto2(H5E_DEFAULT, &q.func, &q.data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return q;
}

static void quiet_off(quiet_t q) { H5Eset_auto2(H5E_DEFAULT, q.func, q.data); }

static herr_t first_error(unsigned n, const H5E_error2_t *e, void *data)
{
    char *buf = data;
    if (n == 0 && e->desc) snprintf(buf, 200, "%s", e->desc);
    return 1; /* the innermost entry is the one that says what happened */
}

/* The innermost description on HDF5's error stack (e.g. "truncated file: eof = ..."), for the
 * failures our own checks cannot explain. buf holds 200 bytes. */
static const char *h5_detail(char *buf)
{
    strcpy(buf, "no detail from HDF5");
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, first_error, buf);
    return buf;
}

static void close_id(hid_t *id, herr_t (*closer)(hid_t))
{
    if (*id >= 0) closer(*id);
    *id = H5I_INVALID_HID;
}

static const char *class_name(H5T_class_t c)
{
    switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_BITFIELD: return "bitfield";
    case H5T_OPAQUE: return "opaque";
    case H5T_COMPOUND: return "compound";
    case H5T_REFERENCE: return "reference";
    case H5T_ENUM: return "enum (numpy bool?)";
    case H5T_VLEN: return "variable-length";
    case H5T_ARRAY: return "array";
    default: return "unknown";
    }
}

/* Conversion exceptions during a read: a value outside the memory type (a negative token in an
 * int64 file, a token >= 2^32) fails the read instead of being clamped silently. */
static H5T_conv_ret_t conv_except(H5T_conv_except_t kind, hid_t src, hid_t dst, void *sbuf, void *dbuf,
                                  void *user)
{
    if (kind == H5T_CONV_EXCEPT_RANGE_HI || kind == H5T_CONV_EXCEPT_RANGE_LOW) {
        *(int *)user = 1;
        return H5T_CONV_ABORT;
    }
    return H5T_CONV_UNHANDLED;
}

/* ---- open and validate */

/* A virtual dataset's source file: as HDF5 looks for it (".": this file; an absolute name; else
 * under $HDF5_VDS_PREFIX, beside the virtual dataset's file, then from the working directory).
 * out[cap] gets the first that is a regular file; 0 when none is. */
static int vds_source_path(const ct_dataset *ds, const char *name, char *out, size_t cap)
{
    struct stat st;
    const char *slash = strrchr(ds->path, '/'), *env = getenv("HDF5_VDS_PREFIX");
    int dirlen = slash ? (int)(slash - ds->path) : 1;
    const char *dir = slash ? ds->path : ".";
    if (!strcmp(name, ".")) return snprintf(out, cap, "%s", ds->path), 1;
    if (name[0] == '/') return snprintf(out, cap, "%s", name), stat(out, &st) == 0 && S_ISREG(st.st_mode);
    if (env && *env) {
        snprintf(out, cap, "%s/%s", env, name);
        if (stat(out, &st) == 0 && S_ISREG(st.st_mode)) return 1;
    }
    snprintf(out, cap, "%.*s/%s", dirlen, dir, name);
    if (stat(out, &st) == 0 && S_ISREG(st.st_mode)) return 1;
    snprintf(out, cap, "%s", name);
    return stat(out, &st) == 0 && S_ISREG(st.st_mode);
}

static int cmp_span(const void *a, const void *b)
{
    const hsize_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* A virtual dataset reads a missing source, or a position no mapping covers, as its fill value
 * (zeros) without a word: every mapping must be a contiguous range, the ranges must tile [0, len),
 * and each source must be there (file and dataset, written, not itself virtual) and long enough. */
static int check_virtual(ct_dataset *ds, const char *name, hid_t dcpl, size_t len, char *err, size_t errlen)
{
    size_t count = 0;
    if (H5Pget_virtual_count(dcpl, &count) < 0 || count == 0)
        return ct_data_fail(err, errlen, "%s: /%s: a virtual dataset without sources", ds->path, name);
    hsize_t *span = calloc(count, 2 * sizeof *span);
    if (!span) return ct_data_fail(err, errlen, "%s: out of memory", ds->path);
    int rc = 0;
    for (size_t i = 0; i < count && !rc; i++) {
        char file[1024] = "", dset[1024] = "", found[4096];
        hid_t vs = H5Pget_virtual_vspace(dcpl, i), ss = H5Pget_virtual_srcspace(dcpl, i);
        hsize_t vlo = 0, vhi = 0, slo = 0, shi = 0;
        hssize_t vn = vs >= 0 ? H5Sget_select_npoints(vs) : -1, sn = ss >= 0 ? H5Sget_select_npoints(ss) : -1;
        if (H5Pget_virtual_filename(dcpl, i, file, sizeof file) < 0 || H5Pget_virtual_dsetname(dcpl, i, dset, sizeof dset) < 0 ||
            vn <= 0 || sn != vn || H5Sget_select_bounds(vs, &vlo, &vhi) < 0 || H5Sget_select_bounds(ss, &slo, &shi) < 0 ||
            (hsize_t)vn != vhi - vlo + 1)
            rc = ct_data_fail(err, errlen, "%s: /%s: virtual mapping %zu: not a contiguous range of one source "
                              "(ctrain reads plain mappings only)", ds->path, name, i);
        else if (strchr(file, '%') || strchr(dset, '%'))
            rc = ct_data_fail(err, errlen, "%s: /%s: virtual mapping %zu: printf-style source names (%s, %s) are not "
                              "supported", ds->path, name, i, file, dset);
        else if (!vds_source_path(ds, file, found, sizeof found))
            rc = ct_data_fail(err, errlen, "%s: /%s: virtual mapping %zu: its source file %s is missing (HDF5 would "
                              "read positions [%llu, %llu] as zeros)", ds->path, name, i, file,
                              (unsigned long long)vlo, (unsigned long long)vhi);
        else {
            hid_t f = strcmp(file, ".") ? H5Fopen(found, H5F_ACC_RDONLY, H5P_DEFAULT) : ds->file;
            hid_t d = f >= 0 && H5Lexists(f, dset, H5P_DEFAULT) > 0 ? H5Dopen2(f, dset, H5P_DEFAULT) : H5I_INVALID_HID;
            hid_t sp = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID, pl = d >= 0 ? H5Dget_create_plist(d) : H5I_INVALID_HID;
            hsize_t dims[8] = {0};
            int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
            H5D_space_status_t status = H5D_SPACE_STATUS_ERROR;
            if (d >= 0) H5Dget_space_status(d, &status);
            if (nd >= 1 && nd <= 8) H5Sget_simple_extent_dims(sp, dims, NULL);
            if (d < 0)
                rc = ct_data_fail(err, errlen, "%s: /%s: virtual mapping %zu: %s holds no dataset %s (HDF5 would read "
                                  "positions [%llu, %llu] as zeros)", ds->path, name, i, found, dset,
                                  (unsigned long long)vlo, (unsigned long long)vhi);
            else if (pl >= 0 && H5Pget_layout(pl) == H5D_VIRTUAL)
                rc = ct_data_fail(err, errlen, "%s: /%s: virtual mapping %zu: its source %s:%s is virtual too (not "
                                  "supported)", ds->path, name, i, found, dset);
            else if (nd != 1 || shi >= dims[0])
                rc = ct_data_fail(err, errlen, "%s: /%s: virtual mapping %zu: its source %s:%s has %llu values, fewer "
                                  "than the mapping reads (to %llu)", ds->path, name, i, found, dset,
                                  (unsigned long long)dims[0], (unsigned long long)shi + 1);
            else if (dims[0] && status != H5D_SPACE_STATUS_ALLOCATED)
                rc = ct_data_fail(err, errlen, "%s: /%s: virtual mapping %zu: its source %s:%s was never (fully) "
                                  "written", ds->path, name, i, found, dset);
            if (pl >= 0) H5Pclose(pl);
            if (sp >= 0) H5Sclose(sp);
            if (d >= 0) H5Dclose(d);
            if (f >= 0 && f != ds->file) H5Fclose(f);
        }
        span[2 * i] = vlo, span[2 * i + 1] = vhi + 1;
        if (vs >= 0) H5Sclose(vs);
        if (ss >= 0) H5Sclose(ss);
    }
    if (!rc) { /* the mappings tile [0, len) */
        qsort(span, count, 2 * sizeof *span, cmp_span);
        hsize_t at = 0;
        for (size_t i = 0; i <= count && !rc; i++) {
            hsize_t lo = i < count ? span[2 * i] : (hsize_t)len;
            if (lo < at)
                rc = ct_data_fail(err, errlen, "%s: /%s: virtual mappings overlap at position %llu", ds->path, name,
                                  (unsigned long long)lo);
            else if (lo > at)
                rc = ct_data_fail(err, errlen, "%s: /%s: positions [%llu, %llu) map to no source (HDF5 would read them "
                                  "as zeros)", ds->path, name, (unsigned long long)at, (unsigned long long)lo);
            if (i < count) at = span[2 * i + 1];
        }
    }
    free(span);
    return rc;
}

/* A dataset HDF5 allocated no storage for (created, never written: h5py's create_dataset without
 * data) or only some chunks of reads as its fill value, zeros, without an error: refused, as is a
 * virtual dataset with a missing source. Empty datasets are what they say. */
static int check_written(ct_dataset *ds, const char *name, hid_t dset, size_t len, char *err, size_t errlen)
{
    if (len == 0) return 0;
    hid_t dcpl = H5Dget_create_plist(dset);
    if (dcpl < 0) return ct_data_fail(err, errlen, "%s: /%s: cannot read its storage layout", ds->path, name);
    int rc = 0;
    if (H5Pget_layout(dcpl) == H5D_VIRTUAL) {
        rc = check_virtual(ds, name, dcpl, len, err, errlen);
    } else {
        H5D_space_status_t status = H5D_SPACE_STATUS_ERROR;
        if (H5Dget_space_status(dset, &status) < 0 || status == H5D_SPACE_STATUS_ERROR)
            rc = ct_data_fail(err, errlen, "%s: /%s: cannot tell whether it was written", ds->path, name);
        else if (status == H5D_SPACE_STATUS_NOT_ALLOCATED)
            rc = ct_data_fail(err, errlen, "%s: /%s: never written (HDF5 holds no data for its %zu values, which would "
                              "read as zeros)", ds->path, name, len);
        else if (status == H5D_SPACE_STATUS_PART_ALLOCATED)
            rc = ct_data_fail(err, errlen, "%s: /%s: only partly written (some chunks of its %zu values were never "
                              "stored and would read as zeros)", ds->path, name, len);
    }
    H5Pclose(dcpl);
    return rc;
}

/* Opens name as a 1-D dataset of an integer type; *len gets its length. absent_ok: a missing
 * dataset returns 1 with *dset invalid. bool_type (may be NULL): also accept a 1-byte enum, which
 * is how h5py stores numpy bool, and return a memory type that reads it without conversion (HDF5
 * converts no enum to an integer). Fails with a message naming the dataset. */
static int open_1d_int(ct_dataset *ds, const char *name, const char *want, int absent_ok, hid_t *bool_type,
                       hid_t *dset, hid_t *space, size_t *len, char *err, size_t errlen)
{
    htri_t exists = H5Lexists(ds->file, name, H5P_DEFAULT);
    if (exists <= 0) {
        if (absent_ok) return 1;
        return ct_data_fail(err, errlen, "%s: /%s: missing (the token ids: a 1-D %s dataset)", ds->path, name, want);
    }
    *dset = H5Dopen2(ds->file, name, H5P_DEFAULT);
    if (*dset < 0) return ct_data_fail(err, errlen, "%s: /%s: not a dataset (a group or broken link?)", ds->path, name);
    *space = H5Dget_space(*dset);
    if (*space < 0) return ct_data_fail(err, errlen, "%s: /%s: unreadable dataspace", ds->path, name);
    int rank = H5Sget_simple_extent_ndims(*space);
    if (rank != 1)
        return ct_data_fail(err, errlen, "%s: /%s: has %d dimensions; must be 1-D (%s [n])", ds->path, name, rank, want);
    hsize_t dim;
    H5Sget_simple_extent_dims(*space, &dim, NULL);
    *len = (size_t)dim;
    hid_t type = H5Dget_type(*dset);
    H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    if (cls == H5T_ENUM && bool_type && H5Tget_size(type) == 1) {
        *bool_type = H5Tget_native_type(type, H5T_DIR_ASCEND);
        cls = H5T_INTEGER;
    }
    if (type >= 0) H5Tclose(type);
    if (cls != H5T_INTEGER)
        return ct_data_fail(err, errlen, "%s: /%s: has %s type; must be an integer type (%s)", ds->path, name,
                    class_name(cls), want);
    return check_written(ds, name, *dset, *len, err, errlen);
}

/* The root attribute name, which must exist, hold one value and be of class cls. Returns the
 * open attribute (and its type in *type), or -1 with a message. */
static hid_t open_attr(ct_dataset *ds, hid_t root, const char *name, H5T_class_t cls, const char *want,
                       hid_t *type, char *err, size_t errlen)
{
    if (H5Aexists(root, name) <= 0) {
        ct_data_fail(err, errlen, "%s: attribute %s: missing (the root group needs %s)", ds->path, name, want);
        return -1;
    }
    hid_t a = H5Aopen(root, name, H5P_DEFAULT);
    if (a < 0) {
        ct_data_fail(err, errlen, "%s: attribute %s: cannot be opened", ds->path, name);
        return -1;
    }
    *type = H5Aget_type(a);
    hid_t space = H5Aget_space(a);
    hssize_t npoints = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    if (space >= 0) H5Sclose(space);
    H5T_class_t got = *type >= 0 ? H5Tget_class(*type) : H5T_NO_CLASS;
    if (got != cls || npoints != 1) {
        if (got != cls)
            ct_data_fail(err, errlen, "%s: attribute %s: has %s type; must be %s", ds->path, name, class_name(got), want);
        else
            ct_data_fail(err, errlen, "%s: attribute %s: holds %lld values; must be a single %s", ds->path, name,
                 (long long)npoints, want);
        if (*type >= 0) H5Tclose(*type);
        H5Aclose(a);
        return -1;
    }
    return a;
}

/* The string attribute name into out[cap] (NUL-terminated; longer values are an error).
 * Returns 1 when read, 0 when absent and optional, -1 with a message. */
static int read_str_attr(ct_dataset *ds, hid_t root, const char *name, int required, const char *want, char *out,
                         size_t cap, char *err, size_t errlen)
{
    if (!required && H5Aexists(root, name) <= 0) return 0;
    hid_t type = H5I_INVALID_HID, mem = H5I_INVALID_HID;
    hid_t a = open_attr(ds, root, name, H5T_STRING, want, &type, err, errlen);
    if (a < 0) return -1;
    mem = H5Tcopy(H5T_C_S1);
    H5Tset_cset(mem, H5Tget_cset(type)); /* HDF5 does not convert between ASCII and UTF-8 */
    char *s = NULL;
    int ok = 0;
    if (H5Tis_variable_str(type) > 0) { /* h5py's str */
        H5Tset_size(mem, H5T_VARIABLE);
        if (H5Aread(a, mem, &s) >= 0 && s) {
            ok = strlen(s) < cap;
            if (ok) strcpy(out, s);
            H5free_memory(s);
            s = out;
        }
    } else {
        size_t size = H5Tget_size(type);
        char *buf = calloc(size + 2, 1);
        H5Tset_size(mem, size + 1);
        H5Tset_strpad(mem, H5T_STR_NULLTERM);
        if (buf && H5Aread(a, mem, buf) >= 0) {
            s = out;
            ok = strlen(buf) < cap;
            if (ok) strcpy(out, buf);
        }
        free(buf);
    }
    H5Aclose(a);
    H5Tclose(type);
    H5Tclose(mem);
    if (!s) return ct_data_fail(err, errlen, "%s: attribute %s: cannot be read as a string", ds->path, name);
    if (!ok) return ct_data_fail(err, errlen, "%s: attribute %s: longer than %zu bytes", ds->path, name, cap - 1);
    if (!out[0]) return ct_data_fail(err, errlen, "%s: attribute %s: empty; must be %s", ds->path, name, want);
    return 1;
}

static int read_attrs(ct_dataset *ds, char *err, size_t errlen)
{
    hid_t root = H5Gopen2(ds->file, "/", H5P_DEFAULT);
    if (root < 0) return ct_data_fail(err, errlen, "%s: /: cannot open the root group", ds->path);
    int rc = -1;
    hid_t type = H5I_INVALID_HID;
    hid_t a;
    ct_dataset_meta *m = &ds->meta;
    if (read_str_attr(ds, root, "tokenizer", 1, "a string naming the tokenizer, e.g. \"bytes\"", m->tokenizer,
                      sizeof m->tokenizer, err, errlen) < 0)
        goto out;
    int r = read_str_attr(ds, root, "tokenizer_digest", 0, "16 hex digits", m->digest, sizeof m->digest, err, errlen);
    if (r < 0) goto out;
    if (r == 0 && !strcmp(m->tokenizer, "bytes")) strcpy(m->digest, CT_TOK_BYTES_DIGEST); /* written before digests */
    r = read_str_attr(ds, root, "packing", 0, "plain, masked or none", m->packing, sizeof m->packing, err, errlen);
    if (r < 0) goto out;
    if (r == 0) strcpy(m->packing, "plain");
    if (strcmp(m->packing, "plain") && strcmp(m->packing, "masked") && strcmp(m->packing, "none")) {
        ct_data_fail(err, errlen, "%s: attribute packing: \"%s\"; must be plain, masked or none", ds->path, m->packing);
        goto out;
    }

    /* vocab_size: any integer type (h5py writes int64), read as long long to see every value */
    a = open_attr(ds, root, "vocab_size", H5T_INTEGER, "an integer vocabulary size", &type, err, errlen);
    if (a < 0) goto out;
    long long v = 0;
    herr_t st = H5Aread(a, H5T_NATIVE_LLONG, &v);
    H5Aclose(a);
    close_id(&type, H5Tclose);
    if (st < 0) {
        ct_data_fail(err, errlen, "%s: attribute vocab_size: cannot be read as an integer", ds->path);
        goto out;
    }
    if (v <= 0 || v > INT_MAX) {
        ct_data_fail(err, errlen, "%s: attribute vocab_size: %lld; must be between 1 and %d", ds->path, v, INT_MAX);
        goto out;
    }
    m->vocab_size = (int)v;
    rc = 0;
out:
    close_id(&type, H5Tclose);
    H5Gclose(root);
    return rc;
}

/* ---- an index of shards */

static int open_dataset(ct_dataset **out, const char *path, int as_shard, char *err, size_t errlen);

/* The 1-D integer dataset name of the index, of exactly n values, into out[n] as uint64. */
static int read_u64s(ct_dataset *ds, const char *name, size_t n, uint64_t *out, char *err, size_t errlen)
{
    hid_t d = H5I_INVALID_HID, sp = H5I_INVALID_HID;
    size_t len = 0;
    int rc = open_1d_int(ds, name, "uint64", 0, NULL, &d, &sp, &len, err, errlen);
    if (!rc && len != n)
        rc = ct_data_fail(err, errlen, "%s: /%s: has %zu entries but /shards has %zu; they must match", ds->path, name,
                          len, n);
    if (!rc && n && H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
        rc = ct_data_fail(err, errlen, "%s: /%s: cannot be read as unsigned integers", ds->path, name);
    close_id(&d, H5Dclose);
    close_id(&sp, H5Sclose);
    return rc;
}

/* /shards: a 1-D dataset of strings, each a shard's file name relative to the index's folder (or
 * absolute); resolved into ds->shard_path. */
static int read_shard_names(ct_dataset *ds, char *err, size_t errlen)
{
    hid_t d = H5Dopen2(ds->file, "shards", H5P_DEFAULT);
    hid_t sp = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID, type = d >= 0 ? H5Dget_type(d) : H5I_INVALID_HID;
    hid_t mem = H5Tcopy(H5T_C_S1);
    char **names = NULL;
    int rc = -1;
    if (d < 0 || sp < 0 || type < 0 || H5Tget_class(type) != H5T_STRING || H5Tis_variable_str(type) <= 0 ||
        H5Sget_simple_extent_ndims(sp) != 1) {
        ct_data_fail(err, errlen, "%s: /shards: must be a 1-D dataset of variable-length strings (shard file names)",
                     ds->path);
        goto out;
    }
    hsize_t n;
    H5Sget_simple_extent_dims(sp, &n, NULL);
    if (n == 0) {
        ct_data_fail(err, errlen, "%s: /shards: empty; an index names at least one shard", ds->path);
        goto out;
    }
    H5Tset_size(mem, H5T_VARIABLE);
    H5Tset_cset(mem, H5Tget_cset(type));
    names = calloc((size_t)n, sizeof *names);
    ds->shard_path = calloc((size_t)n, sizeof *ds->shard_path);
    if (!names || !ds->shard_path) {
        ct_data_fail(err, errlen, "%s: out of memory", ds->path);
        goto out;
    }
    if (H5Dread(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, names) < 0) {
        ct_data_fail(err, errlen, "%s: /shards: cannot be read as strings", ds->path);
        goto out;
    }
    ds->nshards = (size_t)n;
    const char *slash = strrchr(ds->path, '/');
    int dirlen = slash ? (int)(slash - ds->path) + 1 : 0;
    for (size_t i = 0; i < ds->nshards; i++) {
        const char *nm = names[i] ? names[i] : "";
        if (!nm[0]) {
            ct_data_fail(err, errlen, "%s: /shards[%zu]: empty name", ds->path, i);
            goto out;
        }
        size_t len = (nm[0] == '/' ? 0 : (size_t)dirlen) + strlen(nm) + 1;
        if (!(ds->shard_path[i] = malloc(len))) {
            ct_data_fail(err, errlen, "%s: out of memory", ds->path);
            goto out;
        }
        snprintf(ds->shard_path[i], len, "%.*s%s", nm[0] == '/' ? 0 : dirlen, ds->path, nm);
    }
    rc = 0;
out:
    for (size_t i = 0; names && i < ds->nshards; i++)
        if (names[i]) H5free_memory(names[i]);
    free(names);
    close_id(&mem, H5Tclose);
    close_id(&type, H5Tclose);
    close_id(&sp, H5Sclose);
    close_id(&d, H5Dclose);
    return rc;
}

static int same_meta(const ct_dataset_meta *a, const ct_dataset_meta *b)
{
    return !strcmp(a->tokenizer, b->tokenizer) && !strcmp(a->digest, b->digest) && a->vocab_size == b->vocab_size &&
           !strcmp(a->packing, b->packing);
}

/* Reads the index and opens every shard once: each must be a dataset (not another index) with the
 * index's attributes and the token and document counts it lists. */
static int open_index(ct_dataset *ds, char *err, size_t errlen)
{
    if (read_attrs(ds, err, errlen) || read_shard_names(ds, err, errlen)) return -1;
    size_t ns = ds->nshards;
    uint64_t *tok = calloc(ns, sizeof *tok), *docs = calloc(ns, sizeof *docs);
    ds->shard_start = calloc(ns + 1, sizeof *ds->shard_start);
    ds->doc_start = calloc(ns + 1, sizeof *ds->doc_start);
    int rc = -1;
    if (!tok || !docs || !ds->shard_start || !ds->doc_start) {
        ct_data_fail(err, errlen, "%s: out of memory for %zu shards", ds->path, ns);
        goto out;
    }
    if (read_u64s(ds, "shard_tokens", ns, tok, err, errlen) || read_u64s(ds, "shard_docs", ns, docs, err, errlen))
        goto out;
    close_id(&ds->file, H5Fclose); /* everything else is in the shards */
    for (size_t i = 0; i < ns; i++) {
        ct_dataset *sh = NULL;
        char sub[1024];
        if (open_dataset(&sh, ds->shard_path[i], 1, sub, sizeof sub)) {
            ct_data_fail(err, errlen, "%s: /shards[%zu]: %s", ds->path, i, sub);
            goto out;
        }
        const char *bad = !same_meta(&sh->meta, &ds->meta) ? "its tokenizer, digest, vocab_size or packing differ from the index's"
                          : sh->n != tok[i] ? "its token count differs from /shard_tokens"
                          : sh->ndocs != docs[i] ? "its /doc_offsets count differs from /shard_docs" : NULL;
        ds->any_mask |= sh->mask >= 0;
        ds->has_target |= sh->has_target;
        size_t n = sh->n, nd = sh->ndocs;
        ct_dataset_close(sh);
        if (bad) {
            ct_data_fail(err, errlen, "%s: /shards[%zu]: %s: %s (%zu tokens, %zu documents; the index says %llu, %llu)",
                         ds->path, i, ds->shard_path[i], bad, n, nd, (unsigned long long)tok[i],
                         (unsigned long long)docs[i]);
            goto out;
        }
        if (tok[i] == 0 || tok[i] > SIZE_MAX - ds->shard_start[i]) {
            ct_data_fail(err, errlen, "%s: /shard_tokens[%zu]: %llu; must be positive and the sum must fit", ds->path,
                         i, (unsigned long long)tok[i]);
            goto out;
        }
        ds->shard_start[i + 1] = ds->shard_start[i] + tok[i];
        ds->doc_start[i + 1] = ds->doc_start[i] + docs[i];
    }
    ds->n = (size_t)ds->shard_start[ns];
    ds->ndocs = (size_t)ds->doc_start[ns];
    if (!ds->has_target) {
        ct_data_fail(err, errlen, "%s: /loss_mask: 0 on every token of every shard: a dataset with no target token "
                     "teaches nothing (prepare it again; supervised examples need assistant text)", ds->path);
        goto out;
    }
    rc = 0;
out:
    free(tok);
    free(docs);
    return rc;
}

/* Shard i, opened (or found open); the least recently used one is closed to make room. */
static ct_dataset *shard(ct_dataset *ds, size_t i, char *err, size_t errlen)
{
    int slot = 0;
    for (int k = 0; k < SHARD_CACHE; k++) {
        if (ds->cache[k] && ds->cache_shard[k] == i) {
            ds->cache_used[k] = ++ds->clock;
            return ds->cache[k];
        }
        if (!ds->cache[k] || (ds->cache[slot] && ds->cache_used[k] < ds->cache_used[slot])) slot = k;
    }
    ct_dataset_close(ds->cache[slot]);
    ds->cache[slot] = NULL;
    if (open_dataset(&ds->cache[slot], ds->shard_path[i], 2, err, errlen)) return NULL;
    if (ds->cache[slot]->n != (size_t)(ds->shard_start[i + 1] - ds->shard_start[i])) { /* changed since open */
        ct_data_fail(err, errlen, "%s: changed since %s was opened (%zu tokens, %llu before)", ds->shard_path[i],
                     ds->path, ds->cache[slot]->n, (unsigned long long)(ds->shard_start[i + 1] - ds->shard_start[i]));
        ct_dataset_close(ds->cache[slot]);
        ds->cache[slot] = NULL;
        return NULL;
    }
    ds->cache_shard[slot] = i;
    ds->cache_used[slot] = ++ds->clock;
    return ds->cache[slot];
}

/* The shard holding position pos (< its end), by binary search over start[0..ns]. */
static size_t shard_of(const uint64_t *start, size_t ns, uint64_t pos)
{
    size_t lo = 0, hi = ns; /* start[lo] <= pos < start[hi] */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (start[mid] <= pos) lo = mid;
        else hi = mid;
    }
    return lo;
}

static int read_range(ct_dataset *ds, hid_t dset, hid_t space, hid_t memtype, const char *name, size_t start,
                      size_t n, size_t stride, void *buf, char *err, size_t errlen);

/* Sets has_target when /loss_mask holds a non-zero value, reading it in blocks up to the first
 * (at once in any real dataset; the whole mask only when it has none). */
static int find_target(ct_dataset *ds, char *err, size_t errlen)
{
    enum { BLOCK = 1 << 16 };
    uint8_t buf[BLOCK];
    hid_t mt = ds->mask_memtype >= 0 ? ds->mask_memtype : H5T_NATIVE_UINT8;
    for (size_t at = 0; at < ds->n && !ds->has_target; at += BLOCK) {
        size_t k = ds->n - at < BLOCK ? ds->n - at : BLOCK;
        if (read_range(ds, ds->mask, ds->mask_space, mt, "loss_mask", at, k, 1, buf, err, errlen)) return -1;
        for (size_t i = 0; i < k && !ds->has_target; i++) ds->has_target = buf[i] != 0;
    }
    return 0;
}

static int open_checked(ct_dataset *ds, int as_shard, char *err, size_t errlen)
{
    char detail[200];
    if (H5Fis_hdf5(ds->path) <= 0)
        return ct_data_fail(err, errlen, "%s: not an HDF5 file; expected a token dataset (ctrain prepare, or h5py)",
                    ds->path);
    /* Close degree and locking stay at HDF5's defaults: HDF5 refuses a second open of a file
     * already open in this process (by the trainer, a checkpoint reader) with other values. */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
#if H5_VERSION_GE(1, 10, 7)
    /* ...but go on where the file system has locking disabled (Lustre, some NFS mounts) */
    H5Pset_file_locking(fapl, 1, 1);
#endif
    ds->file = H5Fopen(ds->path, H5F_ACC_RDONLY, fapl);
    if (ds->file < 0) ct_data_fail(err, errlen, "%s: cannot open as HDF5 (%s)", ds->path, h5_detail(detail));
    H5Pclose(fapl); /* after reading the error stack: every API call clears it */
    if (ds->file < 0) return -1;
    if (H5Lexists(ds->file, "tokens", H5P_DEFAULT) <= 0 && H5Lexists(ds->file, "shards", H5P_DEFAULT) > 0) {
        if (as_shard) return ct_data_fail(err, errlen, "%s: is an index itself; a shard must hold /tokens", ds->path);
        return open_index(ds, err, errlen);
    }

    if (open_1d_int(ds, "tokens", "uint32", 0, NULL, &ds->tokens, &ds->tok_space, &ds->n, err, errlen)) return -1;
    size_t mlen = 0;
    int rc = open_1d_int(ds, "loss_mask", "uint8", 1, &ds->mask_memtype, &ds->mask, &ds->mask_space, &mlen, err,
                         errlen);
    if (rc < 0) return -1;
    if (rc == 0 && mlen != ds->n)
        return ct_data_fail(err, errlen, "%s: /loss_mask: has %zu entries but /tokens has %zu; they must match",
                    ds->path, mlen, ds->n);
    /* checked for shape and type so bad files fail early; read in ranges (the loader, masked) */
    rc = open_1d_int(ds, "doc_offsets", "uint64", 1, NULL, &ds->docs, &ds->docs_space, &ds->ndocs, err, errlen);
    if (rc < 0) return -1;
    if (read_attrs(ds, err, errlen)) return -1;
    if (!strcmp(ds->meta.packing, "masked") && ds->ndocs == 0)
        return ct_data_fail(err, errlen, "%s: /doc_offsets: %s; packing \"masked\" needs each document's first token "
                            "(uint64 [ndocs]) to restart positions and masks", ds->path, rc ? "missing" : "empty");

    hsize_t one = 1;
    ds->mem_space = H5Screate_simple(1, &one, NULL);
    ds->dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (ds->mem_space < 0 || ds->dxpl < 0 || H5Pset_type_conv_cb(ds->dxpl, conv_except, &ds->overflow) < 0)
        return ct_data_fail(err, errlen, "%s: cannot set up reads (%s)", ds->path, h5_detail(detail));
    if (ds->mask < 0 || ds->n == 0) ds->has_target = 1;
    else if (as_shard != 2 && find_target(ds, err, errlen)) return -1;
    if (!ds->has_target && !as_shard)
        return ct_data_fail(err, errlen, "%s: /loss_mask: 0 on all %zu tokens: a dataset with no target token teaches "
                            "nothing (prepare it again; supervised examples need assistant text)", ds->path, ds->n);
    return 0;
}

int ct_dataset_open(ct_dataset **out, const char *path, char *err, size_t errlen)
{
    return open_dataset(out, path, 0, err, errlen);
}

/* as_shard: 0 a dataset of its own; 1 an index's shard, validated when the index opens (it may
 * not be an index itself, and may lack targets if another shard has some); 2 such a shard opened
 * again to be read (its mask is not scanned again). */
static int open_dataset(ct_dataset **out, const char *path, int as_shard, char *err, size_t errlen)
{
    *out = NULL;
    if (!path || !*path) return ct_data_fail(err, errlen, "dataset: no path given");
    struct stat st;
    if (stat(path, &st) != 0) return ct_data_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return ct_data_fail(err, errlen, "%s: is a directory, not a token dataset", path);
    if (!S_ISREG(st.st_mode)) /* a FIFO would block HDF5's open until someone writes to it */
        return ct_data_fail(err, errlen, "%s: not a regular file (a FIFO, socket or device); a token dataset is an "
                            "HDF5 file", path);
    if (access(path, R_OK) != 0) return ct_data_fail(err, errlen, "%s: cannot read: %s", path, strerror(errno));

    ct_dataset *ds = calloc(1, sizeof *ds);
    if (!ds || !(ds->path = strdup(path))) {
        free(ds);
        return ct_data_fail(err, errlen, "%s: out of memory", path);
    }
    ds->file = ds->tokens = ds->mask = ds->docs = ds->docs_space = H5I_INVALID_HID;
    ds->tok_space = ds->mask_space = ds->mask_memtype = ds->mem_space = ds->dxpl = H5I_INVALID_HID;
    quiet_t q = quiet_on();
    int rc = open_checked(ds, as_shard, err, errlen);
    quiet_off(q);
    if (rc) {
        ct_dataset_close(ds);
        return -1;
    }
    *out = ds;
    return 0;
}

void ct_dataset_close(ct_dataset *ds)
{
    if (!ds) return;
    for (int k = 0; k < SHARD_CACHE; k++) ct_dataset_close(ds->cache[k]);
    for (size_t i = 0; ds->shard_path && i < ds->nshards; i++) free(ds->shard_path[i]);
    free(ds->shard_path);
    free(ds->shard_start);
    free(ds->doc_start);
    quiet_t q = quiet_on();
    close_id(&ds->dxpl, H5Pclose);
    close_id(&ds->mem_space, H5Sclose);
    close_id(&ds->mask_space, H5Sclose);
    close_id(&ds->mask_memtype, H5Tclose);
    close_id(&ds->tok_space, H5Sclose);
    close_id(&ds->mask, H5Dclose);
    close_id(&ds->tokens, H5Dclose);
    close_id(&ds->docs_space, H5Sclose);
    close_id(&ds->docs, H5Dclose);
    close_id(&ds->file, H5Fclose);
    quiet_off(q);
    free(ds->path);
    free(ds);
}

const char *ct_dataset_path(const ct_dataset *ds) { return ds->path; }
size_t ct_dataset_len(const ct_dataset *ds) { return ds->n; }
int ct_dataset_vocab_size(const ct_dataset *ds) { return ds->meta.vocab_size; }
const char *ct_dataset_tokenizer(const ct_dataset *ds) { return ds->meta.tokenizer; }
const ct_dataset_meta *ct_dataset_meta_of(const ct_dataset *ds) { return &ds->meta; }

void ct_dataset_meta_for(ct_dataset_meta *m, const ct_tokenizer *t, const char *packing)
{
    memset(m, 0, sizeof *m);
    snprintf(m->tokenizer, sizeof m->tokenizer, "%s", ct_tokenizer_name(t));
    char d[17];
    ct_tokenizer_digest_str(t, d);
    snprintf(m->digest, sizeof m->digest, "%s", d);
    m->vocab_size = ct_tokenizer_vocab_size(t);
    snprintf(m->packing, sizeof m->packing, "%s", packing && *packing ? packing : "plain");
}
int ct_dataset_has_mask(const ct_dataset *ds) { return ds->nshards ? ds->any_mask : ds->mask >= 0; }
size_t ct_dataset_ndocs(const ct_dataset *ds) { return ds->ndocs; }
size_t ct_dataset_shards(const ct_dataset *ds) { return ds->nshards; }

/* ---- reads */

/* n values of dset from start, stride apart (1: a contiguous range) */
static int read_range(ct_dataset *ds, hid_t dset, hid_t space, hid_t memtype, const char *name, size_t start,
                      size_t n, size_t stride, void *buf, char *err, size_t errlen)
{
    char detail[200];
    hsize_t off = start, count = n, step = stride;
    ds->overflow = 0;
    if (H5Sselect_hyperslab(space, H5S_SELECT_SET, &off, &step, &count, NULL) < 0 ||
        H5Sset_extent_simple(ds->mem_space, 1, &count, NULL) < 0 ||
        H5Dread(dset, memtype, ds->mem_space, space, ds->dxpl, buf) < 0) {
        if (ds->overflow)
            return ct_data_fail(err, errlen, "%s: /%s: a value in [%zu, %zu) is out of range (negative, or beyond %s)",
                        ds->path, name, start, start + (n - 1) * stride + 1,
                        memtype == H5T_NATIVE_UINT32 ? "uint32" : memtype == H5T_NATIVE_UINT64 ? "uint64" : "uint8");
        return ct_data_fail(err, errlen, "%s: /%s: reading [%zu, %zu) failed (%s)", ds->path, name, start,
                    start + (n - 1) * stride + 1, h5_detail(detail));
    }
    return 0;
}

/* An index: the range piece by piece from the shards that hold it. */
static int read_shards(ct_dataset *ds, size_t start, size_t n, uint32_t *tokens, uint8_t *mask, char *err,
                       size_t errlen)
{
    size_t done = 0;
    while (done < n) {
        uint64_t pos = (uint64_t)(start + done);
        size_t i = shard_of(ds->shard_start, ds->nshards, pos);
        size_t local = (size_t)(pos - ds->shard_start[i]), avail = (size_t)(ds->shard_start[i + 1] - pos);
        size_t k = n - done < avail ? n - done : avail;
        ct_dataset *sh = shard(ds, i, err, errlen);
        if (!sh || ct_dataset_read(sh, local, k, tokens ? tokens + done : NULL, mask ? mask + done : NULL, err, errlen))
            return -1;
        done += k;
    }
    return 0;
}

int ct_dataset_read(ct_dataset *ds, size_t start, size_t n, uint32_t *tokens, uint8_t *mask, char *err,
                    size_t errlen)
{
    if (start > ds->n || n > ds->n - start)
        return ct_data_fail(err, errlen, "%s: /tokens: range [%zu, %zu) is beyond its %zu tokens", ds->path, start,
                    start + n, ds->n);
    if (n == 0) return 0;
    if (ds->nshards) return read_shards(ds, start, n, tokens, mask, err, errlen);
    quiet_t q = quiet_on();
    int rc = 0;
    if (tokens)
        rc = read_range(ds, ds->tokens, ds->tok_space, H5T_NATIVE_UINT32, "tokens", start, n, 1, tokens, err, errlen);
    if (!rc && mask) {
        if (ds->mask >= 0) {
            hid_t mt = ds->mask_memtype >= 0 ? ds->mask_memtype : H5T_NATIVE_UINT8;
            rc = read_range(ds, ds->mask, ds->mask_space, mt, "loss_mask", start, n, 1, mask, err, errlen);
        } else {
            memset(mask, 1, n);
        }
    }
    quiet_off(q);
    return rc;
}

int ct_dataset_read_docs(ct_dataset *ds, size_t first, size_t n, size_t stride, uint64_t *out, char *err,
                         size_t errlen)
{
    if (n == 0) return 0;
    if (stride < 1 || first >= ds->ndocs || (n - 1) > (ds->ndocs - 1 - first) / stride)
        return ct_data_fail(err, errlen, "%s: /doc_offsets: %zu entries from %zu, %zu apart, are beyond its %zu",
                            ds->path, n, first, stride, ds->ndocs);
    if (ds->nshards) { /* shard by shard, each read strided too, positions moved to the whole's */
        size_t done = 0;
        while (done < n) {
            size_t g = first + done * stride; /* the next entry's document */
            size_t i = shard_of(ds->doc_start, ds->nshards, g);
            while (ds->doc_start[i + 1] == ds->doc_start[i]) i++; /* shards that start no document */
            size_t here = (size_t)(ds->doc_start[i + 1] - g), k = (here - 1) / stride + 1;
            if (k > n - done) k = n - done;
            ct_dataset *sh = shard(ds, i, err, errlen);
            if (!sh || ct_dataset_read_docs(sh, (size_t)(g - ds->doc_start[i]), k, stride, out + done, err, errlen))
                return -1;
            for (size_t j = 0; j < k; j++) out[done + j] += ds->shard_start[i];
            done += k;
        }
        return 0;
    }
    quiet_t q = quiet_on();
    int rc = read_range(ds, ds->docs, ds->docs_space, H5T_NATIVE_UINT64, "doc_offsets", first, n, stride, out, err,
                        errlen);
    quiet_off(q);
    return rc;
}

/* ---- write */

/* A 1-D dataset of n values. Contiguous and uncompressed: a range read is then one pread at a
 * computed offset, with no chunk index to search and no chunk cache to thrash. On failure,
 * detail (200 bytes) gets HDF5's reason. */
static int write_1d(hid_t file, const char *name, hid_t filetype, hid_t memtype, size_t n, const void *data,
                    char *detail)
{
    hsize_t dim = n;
    hid_t space = H5Screate_simple(1, &dim, NULL);
    hid_t d = space < 0 ? -1 : H5Dcreate2(file, name, filetype, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t st = d < 0 ? -1 : H5Dwrite(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (st < 0) h5_detail(detail); /* before any close clears HDF5's error stack */
    if (d >= 0 && H5Dclose(d) < 0 && st >= 0) {
        h5_detail(detail);
        st = -1;
    }
    if (space >= 0) H5Sclose(space);
    return st < 0 ? -1 : 0;
}

static int write_str_attr(hid_t file, hid_t space, hid_t str, const char *name, const char *value)
{
    hid_t a = H5Acreate2(file, name, str, space, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, str, &value) < 0 ? -1 : 0;
    if (a >= 0) H5Aclose(a);
    return rc;
}

/* Root attributes: the strings as variable-length UTF-8 (h5py reads them as str) and
 * vocab_size as int64 (what h5py writes for a Python int). On failure, detail gets HDF5's reason. */
static int write_attrs(hid_t file, const ct_dataset_meta *m, char *detail)
{
    int rc = -1;
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t str = H5Tcopy(H5T_C_S1);
    hid_t a = H5I_INVALID_HID;
    if (space < 0 || str < 0 || H5Tset_size(str, H5T_VARIABLE) < 0 || H5Tset_cset(str, H5T_CSET_UTF8) < 0) goto out;
    if (write_str_attr(file, space, str, "tokenizer", m->tokenizer) ||
        write_str_attr(file, space, str, "tokenizer_digest", m->digest) ||
        write_str_attr(file, space, str, "packing", m->packing[0] ? m->packing : "plain"))
        goto out;
    long long v = m->vocab_size;
    a = H5Acreate2(file, "vocab_size", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, H5T_NATIVE_LLONG, &v) < 0) goto out;
    rc = 0;
out:
    if (rc) h5_detail(detail);
    close_id(&a, H5Aclose);
    close_id(&str, H5Tclose);
    close_id(&space, H5Sclose);
    return rc;
}

/* Checks the arguments so that what is written always opens cleanly. */
static int check_write_args(const char *path, const uint32_t *tokens, size_t n, const uint8_t *mask,
                            const uint64_t *docs, size_t ndocs, const ct_dataset_meta *m, char *err, size_t errlen)
{
    if (!m || !m->tokenizer[0]) return ct_data_fail(err, errlen, "%s: attribute tokenizer: empty", path);
    if (!m->digest[0]) return ct_data_fail(err, errlen, "%s: attribute tokenizer_digest: empty", path);
    const int vocab_size = m->vocab_size;
    if (vocab_size <= 0) return ct_data_fail(err, errlen, "%s: attribute vocab_size: %d; must be positive", path, vocab_size);
    if (n == 0 || !tokens) return ct_data_fail(err, errlen, "%s: /tokens: no tokens to write", path);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] >= (uint32_t)vocab_size)
            return ct_data_fail(err, errlen, "%s: /tokens: token %u at position %zu is beyond vocab_size %d", path,
                        tokens[i], i, vocab_size);
    if (ndocs && !docs) return ct_data_fail(err, errlen, "%s: /doc_offsets: %zu offsets but no array", path, ndocs);
    size_t first = 0;
    while (mask && first < n && !mask[first]) first++;
    if (mask && first == n)
        return ct_data_fail(err, errlen, "%s: /loss_mask: 0 on all %zu tokens: a dataset with no target token teaches "
                            "nothing", path, n);
    if (!strcmp(m->packing, "masked") && !ndocs)
        return ct_data_fail(err, errlen, "%s: /doc_offsets: none; packing \"masked\" needs each document's first token",
                            path);
    for (size_t i = 0; i < ndocs; i++)
        if (docs[i] >= n || (i && docs[i] <= docs[i - 1]))
            return ct_data_fail(err, errlen,
                        "%s: /doc_offsets: offset %zu (%llu) must be below %zu and above the one before it", path,
                        i, (unsigned long long)docs[i], n);
    return 0;
}

/* Flushes the finished temporary file to disk, so the rename never exposes a file whose
 * contents are still only in the page cache. */
static int sync_file(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* A 1-D dataset to write; data NULL: left out. */
typedef struct {
    const char *name;
    hid_t filetype, memtype;
    size_t n;
    const void *data;
} array_1d;

/* The arrays, then the root attributes; on failure *what names the one that failed. */
static int write_arrays(hid_t file, const array_1d *a, int n, const ct_dataset_meta *meta, const char **what,
                        char *detail)
{
    for (int i = 0; i < n; i++) {
        if (!a[i].data) continue;
        if (write_1d(file, a[i].name, a[i].filetype, a[i].memtype, a[i].n, a[i].data, detail)) {
            *what = a[i].name;
            return -1;
        }
    }
    *what = "attributes";
    return write_attrs(file, meta, detail);
}

/* A file being written: path.tmp, open in HDF5, renamed to path by tmp_finish. */
typedef struct {
    char *tmp;
    hid_t file;
    quiet_t q;
} tmp_file;

/* Creates path.tmp as an HDF5 file; -1 with a message (nothing left behind). */
static int tmp_begin(tmp_file *w, const char *path, char *err, size_t errlen)
{
    char detail[200];
    w->file = H5I_INVALID_HID;
    size_t plen = strlen(path);
    if (!(w->tmp = malloc(plen + 5))) return ct_data_fail(err, errlen, "%s: out of memory", path);
    memcpy(w->tmp, path, plen);
    memcpy(w->tmp + plen, ".tmp", 5);
    /* plain fopen first: its errno says "No such file or directory" more clearly than HDF5 */
    FILE *probe = fopen(w->tmp, "wb");
    if (!probe) {
        ct_data_fail(err, errlen, "%s: cannot create: %s", w->tmp, strerror(errno));
        free(w->tmp);
        return -1;
    }
    fclose(probe);
    w->q = quiet_on();
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
#if H5_VERSION_GE(1, 10, 7)
    H5Pset_file_locking(fapl, 0, 1); /* the temporary name is ours alone */
#endif
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (w->file < 0) ct_data_fail(err, errlen, "%s: cannot create as HDF5 (%s)", w->tmp, h5_detail(detail));
    H5Pclose(fapl);
    if (w->file >= 0) return 0;
    quiet_off(w->q);
    unlink(w->tmp);
    free(w->tmp);
    return -1;
}

/* st: 0 when everything was written (else what failed, with detail). Closes, flushes and renames
 * path.tmp to path; on any failure removes it and leaves path as it was. */
static int tmp_finish(tmp_file *w, const char *path, int st, const char *what, const char *detail, char *err,
                      size_t errlen)
{
    char d2[200];
    int rc = -1;
    if (st) {
        ct_data_fail(err, errlen, "%s: %s: write failed (%s)", w->tmp, what, detail);
        H5Fclose(w->file);
    } else if (H5Fclose(w->file) < 0)
        ct_data_fail(err, errlen, "%s: closing failed (%s)", w->tmp, h5_detail(d2));
    else if (sync_file(w->tmp) != 0)
        ct_data_fail(err, errlen, "%s: fsync failed: %s", w->tmp, strerror(errno));
    else if (rename(w->tmp, path) != 0)
        ct_data_fail(err, errlen, "%s: cannot rename %s to it: %s", path, w->tmp, strerror(errno));
    else
        rc = 0;
    quiet_off(w->q);
    if (rc) unlink(w->tmp);
    free(w->tmp);
    return rc;
}

int ct_dataset_write(const char *path, const uint32_t *tokens, size_t n, const uint8_t *loss_mask,
                     const uint64_t *doc_offsets, size_t ndocs, const ct_dataset_meta *meta, char *err, size_t errlen)
{
    char detail[200] = "";
    if (!path || !*path) return ct_data_fail(err, errlen, "dataset: no path given");
    if (check_write_args(path, tokens, n, loss_mask, doc_offsets, ndocs, meta, err, errlen)) return -1;
    tmp_file w;
    if (tmp_begin(&w, path, err, errlen)) return -1;
    const array_1d arrays[3] = {
        {"tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, n, tokens},
        {"loss_mask", H5T_STD_U8LE, H5T_NATIVE_UINT8, n, loss_mask},
        {"doc_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, ndocs, doc_offsets}};
    const char *what = NULL;
    int st = write_arrays(w.file, arrays, 3, meta, &what, detail);
    return tmp_finish(&w, path, st, what, detail, err, errlen);
}

/* /shards as variable-length UTF-8 strings (h5py reads them as str). */
static int write_names(hid_t file, const char *const *names, size_t n, char *detail)
{
    hsize_t dim = n;
    hid_t str = H5Tcopy(H5T_C_S1);
    hid_t space = H5Screate_simple(1, &dim, NULL);
    int st = str < 0 || space < 0 || H5Tset_size(str, H5T_VARIABLE) < 0 || H5Tset_cset(str, H5T_CSET_UTF8) < 0;
    hid_t d = st ? H5I_INVALID_HID : H5Dcreate2(file, "shards", str, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (!st) st = d < 0 || H5Dwrite(d, str, H5S_ALL, H5S_ALL, H5P_DEFAULT, names) < 0;
    if (st) h5_detail(detail);
    close_id(&d, H5Dclose);
    close_id(&space, H5Sclose);
    close_id(&str, H5Tclose);
    return st ? -1 : 0;
}

int ct_dataset_write_index(const char *path, const char *const *shards, const uint64_t *tokens,
                           const uint64_t *docs, size_t nshards, const ct_dataset_meta *meta, char *err,
                           size_t errlen)
{
    char detail[200] = "";
    if (!path || !*path) return ct_data_fail(err, errlen, "dataset: no path given");
    if (nshards == 0) return ct_data_fail(err, errlen, "%s: /shards: no shards to list", path);
    uint32_t one = 0; /* the attributes' checks; the shards' tokens were checked when they were written */
    if (check_write_args(path, &one, 1, NULL, NULL, 0, meta, err, errlen)) return -1;
    for (size_t i = 0; i < nshards; i++)
        if (!shards[i] || !shards[i][0] || !tokens[i])
            return ct_data_fail(err, errlen, "%s: /shards[%zu]: needs a name and at least one token", path, i);
    tmp_file w;
    if (tmp_begin(&w, path, err, errlen)) return -1;
    const char *what = "/shards";
    int st = write_names(w.file, shards, nshards, detail);
    const array_1d arrays[2] = {{"shard_tokens", H5T_STD_U64LE, H5T_NATIVE_UINT64, nshards, tokens},
                                {"shard_docs", H5T_STD_U64LE, H5T_NATIVE_UINT64, nshards, docs}};
    if (!st) st = write_arrays(w.file, arrays, 2, meta, &what, detail);
    return tmp_finish(&w, path, st, what, detail, err, errlen);
}
