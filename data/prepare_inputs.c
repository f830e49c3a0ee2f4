/* prepare_inputs.c — what `prepare` reads: data.text as a file, a folder (its .txt and .jsonl
 * files, recursively) or a glob, in sorted path order; whether a .jsonl file holds supervised
 * examples; and the train/val cut of a corpus that is one text file, found by reading only
 * around it. */
#include "data.h"
#include "data_impl.h"

#include <cjson/cJSON.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

typedef struct {
    ct_prep_file *v;
    size_t n, cap;
} file_list;

static int add_file(file_list *l, const char *path, uint64_t size, char *err, size_t errlen)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        ct_prep_file *v = realloc(l->v, cap * sizeof *v);
        if (!v) return ct_data_fail(err, errlen, "%s: out of memory listing the inputs", path);
        l->v = v, l->cap = cap;
    }
    ct_prep_file *f = &l->v[l->n];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path))) return ct_data_fail(err, errlen, "%s: out of memory listing the inputs", path);
    f->size = size;
    f->jsonl = ends_with(path, ".jsonl");
    l->n++;
    return 0;
}

/* The .txt and .jsonl files under dir (names starting with '.' skipped), depth-first. */
static int walk(file_list *l, const char *dir, int depth, char *err, size_t errlen)
{
    if (depth > 64) return ct_data_fail(err, errlen, "%s: folders nested more than 64 deep (a link loop?)", dir);
    DIR *d = opendir(dir);
    if (!d) return ct_data_fail(err, errlen, "%s: cannot open the folder: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        char *path = malloc(len);
        if (!path) {
            rc = ct_data_fail(err, errlen, "%s: out of memory listing the inputs", dir);
            break;
        }
        snprintf(path, len, "%s%s%s", dir, ends_with(dir, "/") ? "" : "/", e->d_name);
        struct stat st;
        if (stat(path, &st) != 0) rc = ct_data_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        else if (S_ISDIR(st.st_mode)) rc = walk(l, path, depth + 1, err, errlen);
        else if (S_ISREG(st.st_mode) && (ends_with(path, ".txt") || ends_with(path, ".jsonl")))
            rc = add_file(l, path, (uint64_t)st.st_size, err, errlen);
        free(path);
    }
    closedir(d);
    return rc;
}

static int by_path(const void *a, const void *b)
{
    return strcmp(((const ct_prep_file *)a)->path, ((const ct_prep_file *)b)->path);
}

/* One name: a folder is walked, a file taken whatever its name (a glob or data.text chose it). */
static int add_path(file_list *l, const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) return ct_data_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        size_t before = l->n;
        if (walk(l, path, 0, err, errlen)) return -1;
        if (l->n == before) return ct_data_fail(err, errlen, "%s: no .txt or .jsonl files in this folder", path);
        return 0;
    }
    if (!S_ISREG(st.st_mode)) return ct_data_fail(err, errlen, "%s: not a regular file or a folder", path);
    if (access(path, R_OK) != 0) return ct_data_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return add_file(l, path, (uint64_t)st.st_size, err, errlen);
}

void ct_prep_list_free(ct_prep_file *f, size_t n)
{
    for (size_t i = 0; f && i < n; i++) free(f[i].path);
    free(f);
}

int ct_prep_list(const char *text, ct_prep_file **out, size_t *nout, char *err, size_t errlen)
{
    *out = NULL;
    *nout = 0;
    if (!text || !*text) return ct_data_fail(err, errlen, "prepare: no input named (data.text)");
    file_list l = {0};
    struct stat st;
    int rc;
    if (stat(text, &st) != 0 && strpbrk(text, "*?[")) {
        glob_t g;
        int gr = glob(text, 0, NULL, &g);
        if (gr == GLOB_NOMATCH) rc = ct_data_fail(err, errlen, "%s: no file matches this pattern", text);
        else if (gr != 0) rc = ct_data_fail(err, errlen, "%s: the pattern cannot be expanded (glob error %d)", text, gr);
        else {
            rc = 0;
            for (size_t i = 0; i < g.gl_pathc && !rc; i++) rc = add_path(&l, g.gl_pathv[i], err, errlen);
        }
        if (gr == 0 || gr == GLOB_NOMATCH) globfree(&g);
    } else {
        rc = add_path(&l, text, err, errlen);
    }
    if (rc) {
        ct_prep_list_free(l.v, l.n);
        return -1;
    }
    qsort(l.v, l.n, sizeof *l.v, by_path);
    size_t k = 0; /* drop empty files and a file named twice (a glob and a folder under it) */
    for (size_t i = 0; i < l.n; i++) {
        if (l.v[i].size == 0 || (k && !strcmp(l.v[k - 1].path, l.v[i].path))) {
            free(l.v[i].path);
            continue;
        }
        l.v[k++] = l.v[i];
    }
    if (k == 0) {
        ct_prep_list_free(l.v, k);
        return ct_data_fail(err, errlen, "%s: empty file%s; there is no text to prepare", text,
                            l.n > 1 ? "s" : "");
    }
    uint64_t start = 0;
    for (size_t i = 0; i < k; i++) {
        l.v[i].start = start;
        start += l.v[i].size;
    }
    *out = l.v;
    *nout = k;
    return 0;
}

int ct_data_text_is_sft(const char *text, const char *text_field)
{
    struct stat st;
    if (!text || !ends_with(text, ".jsonl") || stat(text, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    FILE *f = fopen(text, "rb");
    if (!f) return 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int sft = 0, first = 1;
    while ((n = getline(&line, &cap, f)) > 0) {
        char *p = line;
        if (first && n >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3)) p += 3;
        first = 0;
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
        if (!*p) continue;
        cJSON *j = cJSON_Parse(p);
        const char *field = text_field && *text_field ? text_field : "text";
        sft = cJSON_IsObject(j) && !cJSON_GetObjectItemCaseSensitive(j, field) &&
              (cJSON_GetObjectItemCaseSensitive(j, "messages") || cJSON_GetObjectItemCaseSensitive(j, "prompt"));
        cJSON_Delete(j);
        break;
    }
    free(line);
    fclose(f);
    return sft;
}

/* ---- the cut of a one-file corpus, as ct_data_prepare_text always made it: just after the line
 * break nearest to the target (the earlier on a tie), or, without one, the nearest character
 * start; never leaving a part empty. Read in blocks outwards from the target. */
enum { BLOCK = 1 << 16 };

/* The first c in [lo, hi] (scanning down from hi when down, else up from lo) where the file allows
 * a cut: after a '\n' (lines), or at a byte that is no UTF-8 continuation byte. 0 when none. */
static int scan_cut(int fd, uint64_t lo, uint64_t hi, int down, int lines, uint64_t *found)
{
    unsigned char buf[BLOCK];
    *found = 0;
    if (lo > hi) return 0;
    /* the byte examined for c: c - 1 (lines) or c */
    uint64_t a = lines ? lo - 1 : lo, b = lines ? hi - 1 : hi; /* byte range [a, b] */
    while (a <= b) {
        uint64_t len = b - a + 1 < BLOCK ? b - a + 1 : BLOCK;
        uint64_t off = down ? b + 1 - len : a;
        ssize_t got = pread(fd, buf, (size_t)len, (off_t)off);
        if (got != (ssize_t)len) return -1;
        for (uint64_t k = 0; k < len; k++) {
            uint64_t i = down ? len - 1 - k : k;
            int hit = lines ? buf[i] == '\n' : (buf[i] & 0xC0) != 0x80;
            if (hit) {
                *found = off + i + (lines ? 1 : 0);
                return 0;
            }
        }
        if (down) {
            if (off == a) break;
            b = off - 1;
        } else
            a = off + len;
    }
    return 0;
}

int ct_prep_find_cut(const char *path, uint64_t len, double target, uint64_t *cut, char *err, size_t errlen)
{
    *cut = 0;
    if (len < 2) return 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ct_data_fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    uint64_t mid = target < 1.0 ? 1 : target > (double)(len - 1) ? len - 1 : (uint64_t)target;
    int rc = 0;
    for (int lines = 1; lines >= 0 && !*cut; lines--) {
        uint64_t left, right;
        if (scan_cut(fd, 1, mid, 1, lines, &left) || scan_cut(fd, mid + 1, len - 1, 0, lines, &right)) {
            rc = ct_data_fail(err, errlen, "%s: read error looking for the train/val cut", path);
            break;
        }
        if (left && (!right || target - (double)left <= (double)right - target)) *cut = left;
        else if (right) *cut = right;
    }
    close(fd);
    return rc;
}
