/* fail.h — the error convention of train/'s readers in one place: fill err (when given) with a
 * formatted message and return -1, so error paths read `return ct_fail(err, errlen, ...)`. */
#ifndef CT_TRAIN_FAIL_H
#define CT_TRAIN_FAIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static inline int ct_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

#endif
