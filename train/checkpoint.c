/* checkpoint.c — HDF5 checkpoints: collective writes of each rank's slice, verified reads of
 * any slice, and the run directory's checkpoint files (tmp + rename, `latest`, rotation). */
#include "checkpoint.h"

#include "hf_config.h"
#include "lora.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>


/* The HDF5 format version checkpoints are written in (both bounds of H5Pset_libver_bounds). */
#define CT_CKPT_LIBVER H5F_LIBVER_V110

static const char *const groups[] = {"/model", "/optimizer/master", "/optimizer/exp_avg", "/optimizer/exp_avg_sq"};
enum { G_MODEL, G_MASTER, G_EXP_AVG, G_EXP_AVG_SQ, NGROUPS };

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---------------------------------------------------------------- checksums */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Sum of mix(index, bits) over x[0..n) whose first element has index `first` in its tensor:
 * any split of a tensor into parts adds up to the same value. */
static uint64_t checksum(const float *x, size_t n, uint64_t first)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], 4);
        sum += mix64(((first + i) << 32 ^ bits) + 0x9E3779B97F4A7C15ull);
    }
    return sum;
}

/* ---------------------------------------------------------------- slices and selections */

/* [lo, hi) of the flat buffer that rank writes: 1/world of the padded length. */
static void write_slice(ct_model *m, const ct_comm *comm, size_t *lo, size_t *hi)
{
    size_t s = ct_model_trainable((ct_model *)m).numel / (size_t)ct_comm_size(comm);
    *lo = s * (size_t)ct_comm_rank(comm);
    *hi = *lo + s;
}

/* The part [*a, *b) of tensor p (indices within the tensor) inside the flat range [lo, hi). */
static int part_of(const ct_param *p, size_t lo, size_t hi, size_t *a, size_t *b)
{
    size_t s = p->offset > lo ? p->offset : lo, e = p->offset + p->numel < hi ? p->offset + p->numel : hi;
    if (s >= e) return 0;
    *a = s - p->offset;
    *b = e - p->offset;
    return 1;
}

/* Selects elements [a, b) (row-major) of a dataset of p's shape: a partial first row, whole
 * rows, a partial last row. */
static herr_t select_range(hid_t space, const ct_param *p, size_t a, size_t b)
{
    if (p->ndim == 1) {
        hsize_t start = a, count = b - a;
        return H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, NULL, &count, NULL);
    }
    hsize_t cols = (hsize_t)p->shape[1];
    hsize_t r0 = a / cols, c0 = a % cols, r1 = (b - 1) / cols, c1 = (b - 1) % cols;
    hsize_t start[2], count[2];
    if (r0 == r1) {
        start[0] = r0, start[1] = c0, count[0] = 1, count[1] = c1 - c0 + 1;
        return H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    }
    herr_t rc = 0;
    start[0] = r0, start[1] = c0, count[0] = 1, count[1] = cols - c0;
    rc |= H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    if (r1 > r0 + 1) {
        start[0] = r0 + 1, start[1] = 0, count[0] = r1 - r0 - 1, count[1] = cols;
        rc |= H5Sselect_hyperslab(space, H5S_SELECT_OR, start, NULL, count, NULL);
    }
    start[0] = r1, start[1] = 0, count[0] = 1, count[1] = c1 + 1;
    rc |= H5Sselect_hyperslab(space, H5S_SELECT_OR, start, NULL, count, NULL);
    return rc;
}

/* ---------------------------------------------------------------- attributes */

static int attr_write(hid_t loc, const char *name, hid_t type, int n, const void *value)
{
    hsize_t dim = (hsize_t)n;
    hid_t space = n ? H5Screate_simple(1, &dim, NULL) : H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    int rc = (a >= 0 && H5Awrite(a, type, value) >= 0) ? 0 : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    return rc;
}

static int attr_i64(hid_t loc, const char *name, int64_t v) { return attr_write(loc, name, H5T_NATIVE_INT64, 0, &v); }

static int attr_string(hid_t loc, const char *name, const char *s)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(s) + 1);
    int rc = attr_write(loc, name, t, 0, s);
    H5Tclose(t);
    return rc;
}

static int attr_read(hid_t loc, const char *name, hid_t memtype, void *out)
{
    if (H5Aexists(loc, name) <= 0) return -1;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    int rc = (a >= 0 && H5Aread(a, memtype, out) >= 0) ? 0 : -1;
    if (a >= 0) H5Aclose(a);
    return rc;
}

/* A string attribute, malloc'd; NULL when missing or not a string. */
static char *attr_read_string(hid_t loc, const char *name)
{
    if (H5Aexists(loc, name) <= 0) return NULL;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT), ft = a >= 0 ? H5Aget_type(a) : -1;
    char *s = NULL;
    if (ft >= 0 && H5Tget_class(ft) == H5T_STRING && !H5Tis_variable_str(ft)) {
        size_t n = H5Tget_size(ft);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, n + 1);
        s = calloc(n + 2, 1);
        if (s && H5Aread(a, mt, s) < 0) free(s), s = NULL;
        H5Tclose(mt);
    }
    if (ft >= 0) H5Tclose(ft);
    if (a >= 0) H5Aclose(a);
    return s;
}

/* ---------------------------------------------------------------- host copies of state */

/* fp32 host copy of n storage-dtype elements at src (backend memory); NULL when out of memory. */
static float *to_host(const ct_backend *be, ct_kctx *ctx, const void *src, size_t n, int is_f32)
{
    float *host = malloc(n ? n * sizeof(float) : 1);
    if (!host) return NULL;
    if (is_f32 || be->elem_size == sizeof(float)) {
        be->download(ctx, host, src, n * sizeof(float));
        return host;
    }
    float *tmp = be->alloc(n * sizeof(float));
    if (!tmp) return free(host), NULL;
    be->to_f32(ctx, tmp, src, n);
    be->download(ctx, host, tmp, n * sizeof(float));
    be->free(tmp);
    return host;
}

/* ---------------------------------------------------------------- write */

static int write_root_attrs(hid_t file, const ct_model *m, const ct_optim *o, const ct_ckpt_state *st,
                            const char *config_json, int world)
{
    const ct_model_config *c = ct_model_config_of(m);
    int rc = 0;
    rc |= attr_string(file, "format", CT_CKPT_FORMAT);
    rc |= attr_i64(file, "version", CT_CKPT_VERSION);
    rc |= attr_i64(file, "step", st->step);
    rc |= attr_i64(file, "tokens", st->tokens);
    rc |= attr_i64(file, "optim_steps", ct_optim_steps_taken(o));
    rc |= attr_i64(file, "world", world);
    rc |= attr_i64(file, "zero_stage", st->zero_stage);
    rc |= attr_i64(file, "cursor_epoch", (int64_t)st->cursor.epoch);
    rc |= attr_i64(file, "cursor_step", (int64_t)st->cursor.step);
    rc |= attr_i64(file, "cursor_micro", st->cursor.micro);
    rc |= attr_write(file, "rng", H5T_NATIVE_UINT64, 4, st->rng.s);
    rc |= attr_string(file, "config", config_json ? config_json : "{}");
    if (st->data_tokens) { /* what data.train was, for a resume to compare */
        rc |= attr_write(file, "data_tokens", H5T_NATIVE_UINT64, 0, &st->data_tokens);
        rc |= attr_write(file, "data_sample", H5T_NATIVE_UINT64, 0, &st->data_sample);
        rc |= attr_string(file, "data_digest", st->data_digest);
    }
    /* the model: its config.json (the source's, carried over), and for older readers GPT-2's shape */
    char *hf = ct_hf_config_text(c, ct_model_hf_config(m));
    rc |= hf ? attr_string(file, "hf_config", hf) : -1;
    free(hf);
    if (ct_model_has_lora(m)) { /* the base the adapters train on (ct_lora_check_base reads it back) */
        const char *base = ct_model_base_fingerprint((ct_model *)m);
        rc |= base ? attr_string(file, "lora_base", base) : -1;
    }
    rc |= attr_i64(file, "vocab_size", c->vocab_size);
    rc |= attr_i64(file, "n_positions", c->max_seq_len);
    rc |= attr_i64(file, "n_layer", c->n_layer);
    rc |= attr_i64(file, "n_head", c->n_head);
    rc |= attr_i64(file, "n_embd", c->n_embd);
    double eps = c->norm_eps;
    rc |= attr_write(file, "layer_norm_epsilon", H5T_NATIVE_DOUBLE, 0, &eps);
    return rc ? -1 : 0;
}

/* Rank 0, before HDF5 touches path: a file of `bytes` fits under the file-size limit (ulimit -f)
 * and in the free space of its file system (where that reports sizes). HDF5 1.10 does not
 * survive a metadata write that fails while it closes a file: H5Fclose fails, and the library
 * then crashes as it ends (at exit or MPI_Finalize). So a shortage that can be seen is refused
 * here, before any HDF5 call; one that appears during the save still fails it with a message. */
static int check_room(const char *path, uint64_t bytes, char *err, size_t errlen)
{
    const double mib = 1048576.0;
    struct rlimit rl;
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && bytes > (uint64_t)rl.rlim_cur)
        return fail(err, errlen, "%s: the checkpoint needs about %.1f MiB, more than the file-size limit (ulimit -f: "
                    "%llu KiB)", path, bytes / mib, (unsigned long long)rl.rlim_cur >> 10);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = 0;
    else snprintf(dir, sizeof dir, ".");
    struct statvfs sv;
    if (statvfs(dir, &sv) == 0 && sv.f_blocks > 0) {
        uint64_t avail = (uint64_t)(geteuid() == 0 ? sv.f_bfree : sv.f_bavail) * sv.f_frsize;
        if (bytes > avail)
            return fail(err, errlen, "%s: the checkpoint needs about %.1f MiB and the file system has %.1f MiB free (a "
                        "full disk?)", path, bytes / mib, avail / mib);
    }
    return 0;
}

/* An upper bound of a checkpoint's size: its data, and generously its metadata. */
static uint64_t size_bound(const ct_model *m, const char *config_json)
{
    ct_trainable tr = ct_model_trainable((ct_model *)m);
    uint64_t bytes = (128u << 10) + 2 * (config_json ? strlen(config_json) : 0);
    for (int i = 0; i < tr.ntensors; i++) bytes += NGROUPS * ((uint64_t)tr.tensors[i].numel * sizeof(float) + 1024);
    return bytes;
}

/* Rank 0: the file's whole structure (attributes, groups, every dataset allocated in place with
 * its checksum), without data; offsets[g * nt + i] receives where each dataset's bytes start. */
static int create_layout(const char *path, ct_model *m, const ct_optim *o, const ct_ckpt_state *st,
                         const char *config_json, int world, const uint64_t *sums, uint64_t *offsets, char *err,
                         size_t errlen)
{
    ct_trainable tr = ct_model_trainable(m);
    int nt = tr.ntensors;
    if (check_room(path, size_bound(m, config_json), err, errlen)) return -1;
    /* HDF5 1.10's format at both bounds: superblock v3 and v2 object headers, whose checksums
     * HDF5 verifies on every read, so damaged metadata is refused instead of parsed; pinned high
     * too, so any HDF5 from 1.10 on (h5py included) reads the file whatever HDF5 built ctrain.
     * The root's attributes stay in its object header (not in a fractal heap, which stores
     * values over 4 KiB, such as a long config, without a checksum). */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), fcpl = H5Pcreate(H5P_FILE_CREATE), file = -1;
    if (fapl >= 0 && fcpl >= 0 && H5Pset_libver_bounds(fapl, CT_CKPT_LIBVER, CT_CKPT_LIBVER) >= 0 &&
        H5Pset_attr_phase_change(fcpl, 64, 48) >= 0)
        file = H5Fcreate(path, H5F_ACC_TRUNC, fcpl, fapl);
    if (fapl >= 0) H5Pclose(fapl);
    if (fcpl >= 0) H5Pclose(fcpl);
    if (file < 0) return fail(err, errlen, "%s: cannot create (a missing or read-only directory, or a full disk?)", path);
    /* contiguous, allocated now, never filled: the ranks write the bytes themselves */
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_layout(dcpl, H5D_CONTIGUOUS);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    int rc = write_root_attrs(file, m, o, st, config_json, world);
    hid_t opt = H5Gcreate2(file, "/optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    rc |= opt < 0 || H5Gclose(opt) < 0;
    for (int g = 0; g < NGROUPS && !rc; g++) {
        hid_t grp = H5Gcreate2(file, groups[g], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        rc |= grp < 0;
        for (int i = 0; i < nt && !rc; i++) {
            const ct_param *p = &tr.tensors[i];
            hsize_t dims[2] = {(hsize_t)p->shape[0], (hsize_t)p->shape[1]};
            hid_t space = H5Screate_simple(p->ndim, dims, NULL);
            hid_t d = H5Dcreate2(grp, p->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
            rc |= d < 0 || attr_write(d, "checksum", H5T_NATIVE_UINT64, 0, &sums[g * nt + i]);
            if (!rc && g == G_MODEL) rc |= attr_i64(d, "hf_transposed", p->conv1d);
            haddr_t at = d >= 0 ? H5Dget_offset(d) : HADDR_UNDEF;
            rc |= at == HADDR_UNDEF;
            offsets[g * nt + i] = (uint64_t)at;
            if (d >= 0) H5Dclose(d);
            H5Sclose(space);
        }
        if (grp >= 0) H5Gclose(grp);
    }
    H5Pclose(dcpl);
    if (H5Fclose(file) < 0) rc = 1;
    return rc ? fail(err, errlen, "%s: cannot write the file's structure (a full disk?)", path) : 0;
}

/* Where progress goes (ct_ckpt_on_progress): set once by the process that wants lines, read by
 * its saves and loads. */
static ct_ckpt_progress_fn progress_fn;
static void *progress_user;

void ct_ckpt_on_progress(ct_ckpt_progress_fn fn, void *user) { progress_fn = fn, progress_user = user; }

static void progress(const char *path, int saving, uint64_t done, uint64_t total)
{
    if (progress_fn) progress_fn(progress_user, path, saving, done, total);
}

/* bytes of the tensors' parts inside [lo, hi) of the flat buffer */
static uint64_t part_bytes(ct_trainable tr, size_t lo, size_t hi)
{
    uint64_t n = 0;
    size_t a, b;
    for (int i = 0; i < tr.ntensors; i++)
        if (part_of(&tr.tensors[i], lo, hi, &a, &b)) n += (b - a) * sizeof(float);
    return n;
}

/* This rank's bytes: its part of every tensor of every group, at the offsets rank 0 laid out. */
static int write_slices(const char *path, ct_model *m, float *const *host, size_t lo, size_t hi,
                        const uint64_t *offsets, char *err, size_t errlen)
{
    ct_trainable tr = ct_model_trainable(m);
    int nt = tr.ntensors;
    int fd = open(path, O_WRONLY);
    if (fd < 0) return fail(err, errlen, "%s: cannot open for writing: %s", path, strerror(errno));
    int rc = 0;
    uint64_t done = 0, total = NGROUPS * part_bytes(tr, lo, hi); /* began in ct_ckpt_write */
    for (int g = 0; g < NGROUPS && !rc; g++) {
        for (int i = 0; i < nt && !rc; i++) {
            const ct_param *p = &tr.tensors[i];
            size_t a, b;
            if (!part_of(p, lo, hi, &a, &b)) continue;
            /* a contiguous dataset stores row-major elements in order: [a, b) is one byte range */
            const char *src = (const char *)(host[g] + (p->offset + a - lo));
            size_t left = (b - a) * sizeof(float);
            off_t at = (off_t)(offsets[g * nt + i] + a * sizeof(float));
            while (left && !rc) {
                ssize_t n = pwrite(fd, src, left, at);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) {
                    rc = fail(err, errlen, "%s: %s/%s: write failed: %s", path, groups[g], p->name,
                              n < 0 ? strerror(errno) : "no progress");
                    break;
                }
                src += n, left -= (size_t)n, at += n;
            }
            if (!rc) progress(path, 1, done += (b - a) * sizeof(float), total);
        }
    }
    if (!rc && fsync(fd) != 0) rc = fail(err, errlen, "%s: fsync failed: %s", path, strerror(errno));
    if (close(fd) != 0 && !rc) rc = fail(err, errlen, "%s: close failed: %s", path, strerror(errno));
    return rc;
}

/* Parallel HDF5 cannot survive an I/O error on only some ranks: its collective close then
 * waits in mismatched collectives forever. So the ranks share no HDF5 call: rank 0 lays the
 * file out (metadata only), every rank writes its own slices' bytes at the offsets HDF5 chose,
 * and the ranks agree on the outcome through the communicator, which never hangs. */
int ct_ckpt_write(const char *path, ct_model *m, ct_optim *o, const ct_ckpt_state *st, const char *config_json,
                  ct_comm *comm, char *err, size_t errlen)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* our own messages, not HDF5's error stacks */
    const ct_backend *be = ct_model_backend(m);
    ct_kctx *ctx = ct_model_kctx(m);
    ct_trainable tr = ct_model_trainable(m);
    int nt = tr.ntensors, rank = ct_comm_rank(comm);
    size_t lo, hi, obegin, olen;
    write_slice(m, comm, &lo, &hi);
    ct_optim_slice(o, &obegin, &olen);
    err[0] = 0;
    progress(path, 1, 0, NGROUPS * part_bytes(tr, lo, hi)); /* the host copies and checksums count too */

    /* this rank's slice in host memory: parameters, master weights, m, v; copies from a device,
     * the backend's own fp32 memory as it is on the CPU (a save then costs no memory) */
    float *host[NGROUPS] = {0};
    const int borrow = !strcmp(be->name, "cpu") && be->elem_size == sizeof(float);
    const void *src[NGROUPS] = {ct_optim_weights_at(o, lo), ct_optim_master(o) + (lo - obegin),
                                ct_optim_exp_avg(o) + (lo - obegin), ct_optim_exp_avg_sq(o) + (lo - obegin)};
    for (int g = 0; g < NGROUPS; g++) {
        be->sync(ctx);
        host[g] = borrow ? (float *)src[g] : to_host(be, ctx, src[g], hi - lo, g != G_MODEL);
    }
    uint64_t *sums = calloc((size_t)nt * NGROUPS, sizeof *sums), *offsets = calloc((size_t)nt * NGROUPS, sizeof *offsets);
    int rc = (host[0] && host[1] && host[2] && host[3] && sums && offsets) ? 0 : fail(err, errlen, "out of memory for "
                                                                                      "the checkpoint's host copy");
    for (int g = 0; g < NGROUPS && !rc; g++) {
        for (int i = 0; i < nt; i++) {
            const ct_param *p = &tr.tensors[i];
            size_t a, b;
            if (part_of(p, lo, hi, &a, &b)) sums[g * nt + i] = checksum(host[g] + (p->offset + a - lo), b - a, a);
        }
    }
    if (!ct_comm_all_ok(comm, rc == 0)) goto done;
    if (ct_comm_allreduce_sum_u64(comm, sums, (size_t)nt * NGROUPS)) {
        rc = fail(err, errlen, "communication failed");
        goto done;
    }
    if (rank == 0) rc = create_layout(path, m, o, st, config_json, ct_comm_size(comm), sums, offsets, err, errlen);
    if (!ct_comm_all_ok(comm, rc == 0)) goto done;
    if (ct_comm_broadcast(comm, offsets, (size_t)nt * NGROUPS * sizeof *offsets, 0)) {
        rc = fail(err, errlen, "communication failed");
        goto done;
    }
    rc = write_slices(path, m, host, lo, hi, offsets, err, errlen);
done:
    for (int g = 0; g < NGROUPS && !borrow; g++) free(host[g]);
    free(sums);
    free(offsets);
    if (!ct_comm_all_ok(comm, rc == 0)) {
        if (rc == 0) {
            snprintf(err, errlen, "%s: the save failed on another rank", path);
            return -2;
        }
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- read */

static int open_checked(const char *path, hid_t *file, char *err, size_t errlen)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    struct stat sb;
    if (stat(path, &sb) != 0) return fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
#if H5_VERSION_GE(1, 12, 0)
    htri_t is_hdf5 = H5Fis_accessible(path, H5P_DEFAULT);
#else
    htri_t is_hdf5 = H5Fis_hdf5(path);
#endif
    if (is_hdf5 <= 0 || (*file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0)
        return fail(err, errlen, "%s: not a readable HDF5 file (truncated or corrupt?)", path);
    char *format = attr_read_string(*file, "format");
    int64_t version = -1;
    int rc = 0;
    if (!format || strcmp(format, CT_CKPT_FORMAT))
        rc = fail(err, errlen, "%s: attribute format: not a ctrain checkpoint (expected \"%s\")", path, CT_CKPT_FORMAT);
    else if (attr_read(*file, "version", H5T_NATIVE_INT64, &version))
        rc = fail(err, errlen, "%s: attribute version: missing or not an integer", path);
    else if (version != CT_CKPT_VERSION)
        rc = fail(err, errlen, "%s: attribute version: %lld is not a version this ctrain reads (%d)", path,
                  (long long)version, CT_CKPT_VERSION);
    free(format);
    if (rc) H5Fclose(*file), *file = -1;
    return rc;
}

int ct_ckpt_read_config(const char *path, ct_model_config *mc, char *err, size_t errlen)
{
    hid_t file;
    if (open_checked(path, &file, err, errlen)) return -1;
    char *hf = attr_read_string(file, "hf_config");
    if (!hf && H5Aexists(file, "hf_config") > 0) {
        H5Fclose(file);
        return fail(err, errlen, "%s: attribute hf_config: not a fixed-length string (the model's config.json)", path);
    }
    if (hf) {
        /* the architecture and its whole config, as config.json says them */
        H5Fclose(file);
        char name[4200];
        snprintf(name, sizeof name, "%s: attribute hf_config", path);
        int rc = ct_hf_config_parse_text(hf, name, mc, err, errlen);
        free(hf);
        return rc;
    }
    /* checkpoints written before the model interface: GPT-2, its shape in attributes */
    int64_t v[5];
    static const char *const names[] = {"vocab_size", "n_positions", "n_layer", "n_head", "n_embd"};
    double eps = 1e-5;
    int rc = 0;
    for (int i = 0; i < 5 && !rc; i++)
        if (attr_read(file, names[i], H5T_NATIVE_INT64, &v[i]) || v[i] <= 0 || v[i] > (1 << 30))
            rc = fail(err, errlen, "%s: attribute %s: missing or invalid", path, names[i]);
    if (!rc && attr_read(file, "layer_norm_epsilon", H5T_NATIVE_DOUBLE, &eps))
        rc = fail(err, errlen, "%s: attribute layer_norm_epsilon: missing", path);
    H5Fclose(file);
    if (rc) return -1;
    *mc = (ct_model_config){.vocab_size = (int)v[0], .max_seq_len = (int)v[1], .n_layer = (int)v[2],
                            .n_head = (int)v[3], .n_embd = (int)v[4], .norm_eps = (float)eps};
    char cerr[256];
    if (ct_model_config_check(mc, cerr, sizeof cerr)) return fail(err, errlen, "%s: %s", path, cerr);
    return 0;
}

char *ct_ckpt_read_config_json(const char *path, char *err, size_t errlen)
{
    hid_t file;
    if (open_checked(path, &file, err, errlen)) return NULL;
    char *json = attr_read_string(file, "config");
    H5Fclose(file);
    if (!json) fail(err, errlen, "%s: attribute config: missing", path);
    return json;
}

/* Reads tensor p's elements [a, b) from group g into dst and returns its stored checksum. */
static int read_part(hid_t file, int g, const ct_param *p, size_t a, size_t b, float *dst, uint64_t *stored,
                     const char *path, char *err, size_t errlen)
{
    char name[256];
    snprintf(name, sizeof name, "%s/%s", groups[g], p->name);
    if (H5Lexists(file, groups[g], H5P_DEFAULT) <= 0 || H5Lexists(file, name, H5P_DEFAULT) <= 0)
        return fail(err, errlen, "%s: %s: missing", path, name);
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    if (d < 0) return fail(err, errlen, "%s: %s: cannot open", path, name);
    hid_t fspace = H5Dget_space(d);
    hsize_t dims[2] = {0, 0};
    int nd = H5Sget_simple_extent_ndims(fspace);
    if (nd >= 1 && nd <= 2) H5Sget_simple_extent_dims(fspace, dims, NULL);
    int rc = 0;
    if (nd != p->ndim || dims[0] != (hsize_t)p->shape[0] || (nd == 2 && dims[1] != (hsize_t)p->shape[1])) {
        rc = fail(err, errlen, "%s: %s: shape [%llu%s%llu] does not match the model's [%d%s%d]", path, name,
                  (unsigned long long)dims[0], nd == 2 ? ", " : "", nd == 2 ? (unsigned long long)dims[1] : 0ull,
                  p->shape[0], p->ndim == 2 ? ", " : "", p->ndim == 2 ? p->shape[1] : 0);
    } else if (attr_read(d, "checksum", H5T_NATIVE_UINT64, stored)) {
        rc = fail(err, errlen, "%s: %s: attribute checksum missing", path, name);
    } else if (b > a) {
        hsize_t n = b - a;
        hid_t mspace = H5Screate_simple(1, &n, NULL);
        if (select_range(fspace, p, a, b) < 0 || H5Dread(d, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, dst) < 0)
            rc = fail(err, errlen, "%s: %s: cannot read (truncated or corrupt file?)", path, name);
        H5Sclose(mspace);
    }
    H5Sclose(fspace);
    H5Dclose(d);
    return rc;
}

static int read_state(hid_t file, ct_ckpt_state *st, int64_t *optim_steps, const char *path, char *err,
                      size_t errlen)
{
    int64_t v[8];
    static const char *const names[] = {"step", "tokens", "optim_steps", "world", "zero_stage", "cursor_epoch",
                                        "cursor_step", "cursor_micro"};
    for (int i = 0; i < 8; i++)
        if (attr_read(file, names[i], H5T_NATIVE_INT64, &v[i]) || v[i] < 0)
            return fail(err, errlen, "%s: attribute %s: missing or invalid", path, names[i]);
    if (attr_read(file, "rng", H5T_NATIVE_UINT64, st->rng.s))
        return fail(err, errlen, "%s: attribute rng: missing", path);
    st->step = v[0], st->tokens = v[1], *optim_steps = v[2], st->world = (int)v[3], st->zero_stage = (int)v[4];
    st->cursor = (ct_loader_cursor){.epoch = (uint64_t)v[5], .step = (uint64_t)v[6], .micro = (int)v[7]};
    /* data.train's identity: absent from older checkpoints */
    st->data_tokens = st->data_sample = 0;
    st->data_digest[0] = 0;
    if (H5Aexists(file, "data_tokens") > 0) {
        char *digest = attr_read_string(file, "data_digest");
        int bad = attr_read(file, "data_tokens", H5T_NATIVE_UINT64, &st->data_tokens) ||
                  attr_read(file, "data_sample", H5T_NATIVE_UINT64, &st->data_sample) || !digest ||
                  strlen(digest) >= sizeof st->data_digest;
        if (!bad) snprintf(st->data_digest, sizeof st->data_digest, "%s", digest);
        free(digest);
        if (bad) return fail(err, errlen, "%s: attributes data_tokens, data_sample, data_digest: missing or invalid", path);
    }
    return 0;
}

int ct_ckpt_read_state(const char *path, ct_ckpt_state *st, char *err, size_t errlen)
{
    hid_t file;
    if (open_checked(path, &file, err, errlen)) return -1;
    int64_t optim_steps;
    int rc = read_state(file, st, &optim_steps, path, err, errlen);
    H5Fclose(file);
    return rc;
}

int ct_ckpt_read(const char *path, ct_model *m, ct_optim *o, ct_ckpt_state *st, ct_comm *comm, char *err,
                 size_t errlen)
{
    const ct_backend *be = ct_model_backend(m);
    ct_kctx *ctx = ct_model_kctx(m);
    ct_trainable tr = ct_model_trainable(m);
    int nt = tr.ntensors;
    size_t numel = tr.numel, begin = 0, len = 0;
    if (o) ct_optim_slice(o, &begin, &len);
    /* every rank verifies the whole of /model; the optimizer groups are verified by adding up
     * every rank's part when the state is sharded. A model that keeps only its slice of the
     * weights (ZeRO-3) reads and verifies /model that way too: no rank holds the whole. */
    int shared = o && len < numel, sliced = o && !tr.params;
    const size_t mlo = sliced ? begin : 0, mn = sliced ? len : numel; /* the part of /model read here */
    const int ngroups = sliced ? 4 : 3; /* sums and stored: m, v, master, and /model when sliced */
    float *params = calloc(mn ? mn : 1, sizeof(float));
    float *state[3] = {0};
    uint64_t *sums = calloc((size_t)nt * 4, sizeof(uint64_t)), *stored = calloc((size_t)nt * 4, sizeof(uint64_t));
    int64_t optim_steps = 0;
    ct_ckpt_state got; /* copied to *st only once everything is verified */
    hid_t file = -1;
    int rc = -1;
    for (int k = 0; o && k < 3; k++) state[k] = calloc(len ? len : 1, sizeof(float));
    if (!params || !sums || !stored || (o && (!state[0] || !state[1] || !state[2]))) {
        fail(err, errlen, "out of memory reading %s", path);
        goto agree;
    }
    if (open_checked(path, &file, err, errlen)) goto agree;
    ct_model_config mc;
    const ct_model_config *have = ct_model_config_of(m);
    if (ct_ckpt_read_config(path, &mc, err, errlen)) goto agree;
    if (!ct_model_config_same(&mc, have)) {
        fail(err, errlen, "%s: the checkpoint's model (%s, %d layers, %d heads, width %d, vocab %d, %d positions) is "
             "not this config's (%s, %d, %d, %d, %d, %d)", path, mc.model_type, mc.n_layer, mc.n_head, mc.n_embd,
             mc.vocab_size, mc.max_seq_len, have->model_type, have->n_layer, have->n_head, have->n_embd,
             have->vocab_size, have->max_seq_len);
        goto agree;
    }
    if (ct_model_has_lora(m)) {
        char *base = attr_read_string(file, "lora_base"), where[CT_PATH_MAX + 64];
        snprintf(where, sizeof where, "%s: attribute lora_base", path);
        int other = ct_lora_check_base(m, base, NULL, where, err, errlen);
        free(base);
        if (other) goto agree;
    }
    uint64_t done = 0, total = part_bytes(tr, mlo, mlo + mn) + (o ? 3 * part_bytes(tr, begin, begin + len) : 0);
    progress(path, 0, 0, total);
    for (int i = 0; i < nt; i++) {
        const ct_param *p = &tr.tensors[i];
        uint64_t want;
        if (sliced) { /* this rank's part; the checksums are summed across ranks below */
            size_t a = 0, b = 0;
            int has = part_of(p, begin, begin + len, &a, &b);
            float *dst = has ? params + (p->offset + a - begin) : params;
            if (read_part(file, G_MODEL, p, a, b, dst, &stored[3 * nt + i], path, err, errlen)) goto agree;
            if (has) sums[3 * nt + i] = checksum(dst, b - a, a), progress(path, 0, done += (b - a) * sizeof(float), total);
            continue;
        }
        if (read_part(file, G_MODEL, p, 0, p->numel, params + p->offset, &want, path, err, errlen)) goto agree;
        progress(path, 0, done += p->numel * sizeof(float), total);
        if (checksum(params + p->offset, p->numel, 0) != want) {
            fail(err, errlen, "%s: /model/%s: checksum mismatch: the file is corrupt", path, p->name);
            goto agree;
        }
    }
    for (int k = 0; o && k < 3; k++) {
        for (int i = 0; i < nt; i++) {
            const ct_param *p = &tr.tensors[i];
            size_t a = 0, b = 0;
            int has = part_of(p, begin, begin + len, &a, &b);
            float *dst = has ? state[k] + (p->offset + a - begin) : state[k];
            if (read_part(file, G_MASTER + k, p, a, b, dst, &stored[k * nt + i], path, err, errlen)) goto agree;
            if (has) sums[k * nt + i] = checksum(dst, b - a, a), progress(path, 0, done += (b - a) * sizeof(float), total);
        }
    }
    if (o && read_state(file, &got, &optim_steps, path, err, errlen)) goto agree;
    rc = 0;
agree:
    if (file >= 0) H5Fclose(file);
    if (o && !ct_comm_all_ok(comm, rc == 0)) {
        if (rc == 0) rc = -2, snprintf(err, errlen, "another rank could not read %s", path);
        goto done;
    }
    if (rc) goto done;
    if (shared && ct_comm_allreduce_sum_u64(comm, sums, (size_t)nt * (size_t)ngroups)) {
        rc = fail(err, errlen, "communication failed verifying %s", path);
        goto done;
    }
    for (int j = 0; o && j < nt * ngroups; j++) {
        if (sums[j] != stored[j]) {
            rc = fail(err, errlen, "%s: %s/%s: checksum mismatch: the file is corrupt", path,
                      groups[j / nt == 3 ? G_MODEL : 1 + j / nt], tr.tensors[j % nt].name);
            goto done;
        }
    }
    /* everything verified: only now is the model (and optimizer) overwritten */
    void *tmp = be->alloc(mn * sizeof(float));
    if (!tmp) {
        rc = fail(err, errlen, "out of memory loading %s", path);
        goto done;
    }
    be->upload(ctx, tmp, params, mn * sizeof(float));
    if (sliced) ct_optim_set_slice_weights(o, tmp);
    else if (o) ct_optim_set_weights(o, tmp);
    else if (ct_model_has_lora(m)) be->to_storage(ctx, tr.params, tmp, numel);
    else ct_model_store(m, 0, tmp, numel);
    be->free(tmp);
    if (o) {
        be->upload(ctx, ct_optim_master(o), state[0], len * sizeof(float));
        be->upload(ctx, ct_optim_exp_avg(o), state[1], len * sizeof(float));
        be->upload(ctx, ct_optim_exp_avg_sq(o), state[2], len * sizeof(float));
        ct_optim_set_steps_taken(o, (int)optim_steps);
        if (st) *st = got;
    }
    be->sync(ctx);
    if (!ct_model_has_lora(m)) {
        /* the model's config.json travels on: an export of this checkpoint writes it back */
        hid_t again;
        char *hf = NULL;
        if (open_checked(path, &again, err, errlen) == 0) hf = attr_read_string(again, "hf_config"), H5Fclose(again);
        if (hf) ct_model_set_hf_config(m, hf, mc.dtype);
        free(hf);
    }
done:
    free(params);
    for (int k = 0; k < 3; k++) free(state[k]);
    free(sums);
    free(stored);
    return rc;
}

/* ---------------------------------------------------------------- run directories */

int ct_ckpt_latest(const char *dir, char *path, size_t pathlen, char *err, size_t errlen)
{
    char pointer[4096], name[512] = "";
    snprintf(pointer, sizeof pointer, "%s/latest", dir);
    FILE *f = fopen(pointer, "r");
    if (!f) return 0;
    int got = fscanf(f, "%511s", name) == 1;
    fclose(f);
    if (!got || strchr(name, '/')) return fail(err, errlen, "%s: does not name a checkpoint file", pointer);
    snprintf(path, pathlen, "%s/%s", dir, name);
    struct stat sb;
    if (stat(path, &sb) != 0) return fail(err, errlen, "%s: names %s, which is missing", pointer, name);
    return 1;
}

/* 1 when name is exactly "ckpt_<step>.h5": files that only start alike are the user's */
static int step_of(const char *name, long *step)
{
    int n = 0;
    return sscanf(name, "ckpt_%ld.h5%n", step, &n) == 1 && n > 0 && name[n] == '\0';
}

/* Rank 0: removes all but the newest keep checkpoints, and leftover temporary files. */
static void rotate(const char *dir, int keep, long newest)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        long step;
        size_t n = strlen(e->d_name);
        int is_tmp = n > 4 && !strcmp(e->d_name + n - 4, ".tmp") && !strncmp(e->d_name, "ckpt_", 5);
        int old = step_of(e->d_name, &step) && step != newest && keep > 0;
        if (old) {
            /* count the checkpoints newer than this one */
            int newer = 0;
            DIR *d2 = opendir(dir);
            struct dirent *e2;
            long s2;
            while (d2 && (e2 = readdir(d2)))
                if (step_of(e2->d_name, &s2) && s2 > step) newer++;
            if (d2) closedir(d2);
            old = newer >= keep;
        }
        if (is_tmp || old) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

int ct_ckpt_save(const char *dir, int keep, ct_model *m, ct_optim *o, const ct_ckpt_state *st,
                 const char *config_json, ct_comm *comm, char *path_out, size_t pathlen, char *err, size_t errlen)
{
    char name[64], final[4096], tmp[4200];
    snprintf(name, sizeof name, "ckpt_%08lld.h5", (long long)st->step);
    snprintf(final, sizeof final, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    int rc = ct_ckpt_write(tmp, m, o, st, config_json, comm, err, errlen);
    if (ct_comm_rank(comm) == 0) {
        if (rc == 0) {
            /* every rank has fsync'ed its bytes: only now does the name say the file is complete */
            char pointer[4096], pointer_tmp[4200];
            snprintf(pointer, sizeof pointer, "%s/latest", dir);
            snprintf(pointer_tmp, sizeof pointer_tmp, "%s.tmp", pointer);
            FILE *p = NULL;
            if (rename(tmp, final) != 0) rc = fail(err, errlen, "%s: cannot rename: %s", tmp, strerror(errno));
            else if (!(p = fopen(pointer_tmp, "w")) || fprintf(p, "%s\n", name) < 0 || fflush(p) ||
                     fsync(fileno(p)) || fclose(p) || (p = NULL, rename(pointer_tmp, pointer) != 0))
                rc = fail(err, errlen, "%s: cannot update: %s", pointer, strerror(errno));
            if (p) fclose(p);
            if (rc == 0) rotate(dir, keep, (long)st->step);
        } else {
            unlink(tmp);
        }
    }
    if (ct_comm_all_ok(comm, rc == 0)) {
        snprintf(path_out, pathlen, "%s", final);
        return 0;
    }
    if (rc == 0) {
        snprintf(err, errlen, "%s: the save failed on rank 0", final);
        return -2;
    }
    return rc;
}
