/* data_impl.h — private to data/: error reporting and whole-file reads shared by its files. */
#ifndef CT_DATA_IMPL_H
#define CT_DATA_IMPL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static inline int ct_data_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Reads the whole file into a malloc'd buffer (*len bytes). Fails on a missing or unreadable
 * file, with "<path>: <why>" in err; an empty file is returned as such (len 0). */
int ct_data_read_all(const char *path, char **out, size_t *len, char *err, size_t errlen);

/* ---- prepare's inputs (prepare_inputs.c) */
#include <stdint.h>
typedef struct {
    char *path;
    uint64_t size;
    uint64_t start; /* where it begins in the concatenation of all inputs */
    int jsonl;      /* named *.jsonl: one document per non-blank line */
} ct_prep_file;
/* data.text as a list of files: a file; a folder's .txt and .jsonl files, recursively (names
 * starting with '.' skipped); or a glob(3) pattern (matching folders walked likewise). Sorted by
 * path (strcmp), empty files dropped. Errors: a missing file, a folder without such files, a
 * pattern without a match, nothing but empty files. */
int ct_prep_list(const char *text, ct_prep_file **files, size_t *n, char *err, size_t errlen);
void ct_prep_list_free(ct_prep_file *files, size_t n);
/* The train/val cut of a one-file corpus of len bytes nearest to target (see ct_data_prepare_text);
 * *cut = 0 when no cut leaves both parts non-empty. */
int ct_prep_find_cut(const char *path, uint64_t len, double target, uint64_t *cut, char *err, size_t errlen);

#endif
