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

#endif
