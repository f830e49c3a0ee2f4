/* safetensors.h — read and write Hugging Face safetensors files.
 *
 * Format: 8-byte little-endian header length n, n bytes of JSON
 *   {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {..}}
 * then the data section; offsets are relative to its start.
 *
 * Reading validates the whole header at open: every offset and length is bounds-checked
 * against the file, so a truncated file or a lying header is an error, never an
 * out-of-bounds read. As the Rust reference requires, the header length is at most 100 MB (a
 * length negative as a signed number is above that) and within the file, shape x dtype size =
 * end - begin for every tensor, and the tensors cover the data section exactly: no gaps, no
 * overlaps, no trailing bytes. Stricter than the reference: a key given twice (the reference
 * keeps the last) and a \u0000 in any name or metadata string (it keeps the NUL) are refused. Errors fill `err` with "<path>: <tensor or field>: <what is wrong>"
 * and return -1; on error no output is produced (and *out stays NULL). */
#ifndef CT_TRAIN_SAFETENSORS_H
#define CT_TRAIN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define CT_ST_MAX_DIMS 8

typedef enum { CT_DT_F32, CT_DT_F16, CT_DT_BF16, CT_DT_F64, CT_DT_I64, CT_DT_I32, CT_DT_U8, CT_DT_BOOL } ct_dtype;

typedef struct {
    const char *name;
    ct_dtype dtype;
    int ndim;
    int64_t shape[CT_ST_MAX_DIMS];
    size_t numel;
    uint64_t begin, end; /* byte offsets within the data section; end - begin == numel * dtype size */
} ct_st_tensor;

typedef struct ct_safetensors ct_safetensors;

/* Opens and validates a file. */
int ct_st_open(ct_safetensors **out, const char *path, char *err, size_t errlen);
void ct_st_close(ct_safetensors *st);

const char *ct_st_path(const ct_safetensors *st);
int ct_st_count(const ct_safetensors *st);
const ct_st_tensor *ct_st_at(const ct_safetensors *st, int i); /* in file order */
const ct_st_tensor *ct_st_find(const ct_safetensors *st, const char *name); /* NULL if absent */
/* value of a string entry of "__metadata__", or NULL */
const char *ct_st_metadata(const ct_safetensors *st, const char *key);

/* Reads tensor t converted to fp32 into dst[n]; n must equal t->numel. Floating dtypes only
 * (F32, F16, BF16, F64): others are an error naming the tensor. */
int ct_st_read_f32(ct_safetensors *st, const ct_st_tensor *t, float *dst, size_t n, char *err, size_t errlen);

/* One tensor to write: fp32 data in row-major order of `shape`. */
typedef struct {
    const char *name;
    const float *data;
    int ndim;
    int64_t shape[CT_ST_MAX_DIMS];
} ct_st_entry;

/* Writes entries (in the given order) to path as dtype F32, BF16 (round to nearest even) or F16.
 * meta: NULL-terminated key, value, key, value, ... strings for "__metadata__", or NULL.
 * Written to "<path>.tmp" then renamed, so a failed write never leaves a partial file. */
int ct_st_write(const char *path, const ct_st_entry *entries, int n, ct_dtype dtype, const char *const *meta,
                char *err, size_t errlen);

/* The checks ct_st_write makes before touching a file (dtype, names non-empty, UTF-8, unique and not
 * "__metadata__", shapes, meta); data pointers only when need_data. path only names the output in err. */
int ct_st_check_entries(const char *path, const ct_st_entry *entries, int n, ct_dtype dtype, const char *const *meta,
                        int need_data, char *err, size_t errlen);

/* Streaming writer: the header is written at open from the entries (their data pointers are not
 * used), then each tensor's data is given in entry order, so no more than one tensor need be in
 * memory. It writes path itself (no temporary name, no rename: that is the caller's business,
 * ct_st_write and ct_hf_weights_write do it). entries must stay valid until close or abort. */
typedef struct ct_st_writer ct_st_writer;
int ct_st_writer_open(ct_st_writer **out, const char *path, const ct_st_entry *entries, int n, ct_dtype dtype,
                      const char *const *meta, char *err, size_t errlen);
/* The next tensor's data: numel fp32 values (must equal its shape's count), converted to dtype. */
int ct_st_writer_put(ct_st_writer *w, const float *data, size_t numel, char *err, size_t errlen);
/* Flushes, fsyncs and closes; fails (naming the first one) when a tensor was not written. Always
 * frees w; on failure path is removed. */
int ct_st_writer_close(ct_st_writer *w, char *err, size_t errlen);
/* Closes, removes path and frees w (after an error); NULL is a no-op. */
void ct_st_writer_abort(ct_st_writer *w);

const char *ct_dtype_name(ct_dtype dt);
size_t ct_dtype_size(ct_dtype dt);

#endif
