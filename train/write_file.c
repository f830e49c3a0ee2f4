/* write_file.c — whole small files written and synced, every failure reported (write_file.h). */
#include "write_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fail.h"

int ct_file_write(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return ct_fail(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    const char *p = data;
    int rc = 0;
    while (len && !rc) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            rc = ct_fail(err, errlen, "%s: write failed: %s", path, n < 0 ? strerror(errno) : "no progress");
            break;
        }
        p += n, len -= (size_t)n;
    }
    if (!rc && fsync(fd) != 0) rc = ct_fail(err, errlen, "%s: cannot sync: %s", path, strerror(errno));
    if (close(fd) != 0 && !rc) rc = ct_fail(err, errlen, "%s: write failed: %s", path, strerror(errno));
    if (rc) unlink(path);
    return rc;
}

int ct_file_replace(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    size_t n = strlen(path) + 5;
    char *tmp = malloc(n);
    if (!tmp) return ct_fail(err, errlen, "%s: out of memory", path);
    snprintf(tmp, n, "%s.tmp", path);
    int rc = ct_file_write(tmp, data, len, err, errlen);
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = ct_fail(err, errlen, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return rc;
}
