/* rundir.c — a run directory's guards: inputs it must not overlap, and its lock. */
#include "rundir.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fail.h"

/* The absolute, symlink-free form of path into out[PATH_MAX]; its last components need not
 * exist (they are appended to the real form of the part that does). -1 on another error. */
static int resolve(const char *path, char *out)
{
    if (realpath(path, out)) return 0;
    if (errno != ENOENT || !path[0]) return -1;
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
    char *slash = strrchr(buf, '/');
    const char *name = slash ? slash + 1 : buf;
    if (resolve(!slash ? "." : slash == buf ? "/" : (*slash = 0, buf), out)) return -1;
    if (!strcmp(name, "..")) {
        char *up = strrchr(out, '/');
        if (up) up[up == out] = 0; /* "/x" -> "/", "/x/y" -> "/x" */
    } else if (name[0] && strcmp(name, ".")) {
        size_t m = strlen(out);
        if (m + 1 + strlen(name) >= PATH_MAX) return -1;
        snprintf(out + m, PATH_MAX - m, "%s%s", out[m - 1] == '/' ? "" : "/", name);
    }
    return 0;
}

/* Whether path (real) is dir (real) or inside it. */
static int within(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    if (!strcmp(dir, "/")) return 1;
    return !strncmp(path, dir, n) && (path[n] == 0 || path[n] == '/');
}

/* The folder an init_from names (itself, or a checkpoint file's folder) as a real path; 0 when
 * it is not there (other checks report that). */
static int input_folder(const char *init, char *out, int *is_file)
{
    struct stat sb;
    if (!init[0] || stat(init, &sb) != 0 || !realpath(init, out)) return 0;
    *is_file = !S_ISDIR(sb.st_mode);
    if (*is_file) {
        char *slash = strrchr(out, '/');
        if (slash) slash[slash == out] = 0;
    }
    return 1;
}

int ct_rundir_check_inputs(const ct_config *cfg, char *err, size_t errlen)
{
    char run[PATH_MAX], in[PATH_MAX];
    if (resolve(cfg->run.dir, run)) return 0; /* unresolvable: creating it fails with its own message */
    const char *keys[2] = {"model.init_from", "lora.init_from"};
    const char *vals[2] = {cfg->model.init_from, cfg->lora.init_from};
    for (int i = 0; i < 2; i++) {
        int is_file = 0;
        if (!input_folder(vals[i], in, &is_file) || !within(run, in)) continue;
        if (is_file)
            return ct_fail(err, errlen,
                           "run.dir: \"%s\" is the folder of %s's checkpoint \"%s\" (%s): this run's checkpoints "
                           "would rotate it away; choose another run.dir (a run.dir whose `latest` names a "
                           "checkpoint resumes from it without %s)",
                           cfg->run.dir, keys[i], vals[i], in, keys[i]);
        return ct_fail(err, errlen,
                       "run.dir: \"%s\" is %s %s \"%s\" (%s): the run would write its weights and checkpoints over "
                       "its inputs; choose a run.dir outside it",
                       cfg->run.dir, strcmp(run, in) ? "inside" : "the same folder as", keys[i], vals[i], in);
    }
    return 0;
}

/* mkdir -p */
static int make_dirs(const char *path, char *err, size_t errlen)
{
    char buf[CT_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return ct_fail(err, errlen, "run.dir: cannot create %s: %s", buf, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    return 0;
}

int ct_rundir_lock(const char *dir, int *fd, char *err, size_t errlen)
{
    *fd = -1;
    if (make_dirs(dir, err, errlen)) return -1;
    char path[CT_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/ctrain.lock", dir);
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (f < 0) return ct_fail(err, errlen, "run.dir: cannot create %s: %s", path, strerror(errno));
    struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(f, F_SETLK, &l) == 0) {
        *fd = f;
        return 0;
    }
    int e = errno;
    if (e == EACCES || e == EAGAIN) {
        struct flock q = l;
        char who[64] = "";
        if (fcntl(f, F_GETLK, &q) == 0 && q.l_type != F_UNLCK && q.l_pid > 0)
            snprintf(who, sizeof who, " (process %d holds its lock)", (int)q.l_pid);
        close(f);
        return ct_fail(err, errlen,
                       "run.dir: \"%s\" is in use by another ctrain train: %s is locked%s; one job per run "
                       "directory: wait for it to end or stop it, or choose another run.dir",
                       dir, path, who);
    }
    close(f);
    fprintf(stderr, "ctrain: warning: run.dir: cannot lock %s (%s): this filesystem keeps no locks, so a second job "
            "on \"%s\" would not be refused\n", path, strerror(e), dir);
    return 0;
}

void ct_rundir_unlock(int fd)
{
    if (fd >= 0) close(fd);
}
