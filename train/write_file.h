/* write_file.h — whole small files (configs, pointers, JSON side files) written so that every
 * failure is an error: each byte written, fsync'ed and closed, or err says which file and why. */
#ifndef CT_TRAIN_WRITE_FILE_H
#define CT_TRAIN_WRITE_FILE_H

#include <stddef.h>

/* Creates (or truncates) path and writes data[len] (write(2) retried on EINTR and short counts),
 * then fsync and close. On any failure (ENOSPC, EFBIG, EIO, ...) path is removed and err reads
 * "<path>: write failed: <reason>" (or "cannot create", "cannot sync"); returns -1. */
int ct_file_write(const char *path, const void *data, size_t len, char *err, size_t errlen);

/* Replaces path whole: data goes to "<path>.tmp" as ct_file_write writes it, which is then
 * renamed over path. On error path is as it was and no .tmp is left; returns -1 with err. */
int ct_file_replace(const char *path, const void *data, size_t len, char *err, size_t errlen);

#endif
