/* hf_weights.c — Hugging Face weight folders, single-file or sharded, read and written (see hf_weights.h).
 *
 * Reading: every shard is opened (and its header validated) at open, so the cross-checks between
 * the index and the shards are complete before anything is read; each shard keeps one file
 * descriptor and its parsed header, and tensor data is read on demand with pread (ct_st_read_f32).
 * A name-sorted table maps each tensor to its shard, for find and for the reads.
 *
 * Writing: the shard plan is computed from the shapes alone, then each shard is streamed through
 * ct_st_writer into "<name>.tmp" from a single buffer sized to the largest tensor. */
#define _POSIX_C_SOURCE 200809L

#include "hf_weights.h"


#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fail.h"
#include "json_file.h"
#include "write_file.h"

#define HF_SINGLE "model.safetensors"
#define HF_INDEX "model.safetensors.index.json"
/* Index files of the largest public models are ~10 MB (DeepSeek-V3: ~90k tensors). */
#define HF_INDEX_MAX ((size_t)256 << 20)

/* "<dir>/<name><suffix>" (no doubled slash), malloc'd; NULL when out of memory. */
static char *join(const char *dir, const char *name, const char *suffix)
{
    size_t dl = strlen(dir), nl = strlen(name), sl = suffix ? strlen(suffix) : 0;
    int slash = dl && dir[dl - 1] == '/';
    char *p = malloc(dl + 1 + nl + sl + 1);
    if (p)
        snprintf(p, dl + 1 + nl + sl + 1, "%s%s%s%s", dir, slash ? "" : "/", name, suffix ? suffix : "");
    return p;
}

/* Present as a directory entry (a dangling link counts: opening it then says why it fails). */
static int entry_exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0 || errno != ENOENT;
}

/* A shard name the index may use: a plain file name in the folder (no path, not "." or ".."). */
static int plain_file_name(const char *s)
{
    return *s && strcmp(s, ".") && strcmp(s, "..") && !strchr(s, '/') && !strchr(s, '\\');
}

/* mkdir dir when missing; fails when it exists and is not a directory. */
static int ensure_dir(const char *dir, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(dir, &sb) == 0)
        return S_ISDIR(sb.st_mode) ? 0 : ct_fail(err, errlen, "%s: not a directory", dir);
    if (errno != ENOENT || (mkdir(dir, 0777) != 0 && errno != EEXIST))
        return ct_fail(err, errlen, "%s: cannot create directory: %s", dir, strerror(errno));
    return 0;
}

/* Best effort, like safetensors.c: makes renames and removals durable. */
static void sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Files of one save written in full under "<name>.tmp" before any is renamed into place. */
typedef struct {
    char **tmp, **final; /* [n]: tmp[i] NULL once renamed */
    int n, cap;
} staged_set;

/* Takes tmp and final (malloc'd) into s; -1 (both freed) when out of memory. */
static int staged_add(staged_set *s, char *tmp, char *final)
{
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 8;
        char **t = realloc(s->tmp, (size_t)cap * sizeof *t);
        if (t) s->tmp = t;
        char **f = t ? realloc(s->final, (size_t)cap * sizeof *f) : NULL;
        if (f) s->final = f;
        if (!t || !f) {
            free(tmp);
            free(final);
            return -1;
        }
        s->cap = cap;
    }
    s->tmp[s->n] = tmp;
    s->final[s->n++] = final;
    return 0;
}

/* Renames every staged file into place, in order; stops at the first failure. */
static int staged_commit(staged_set *s, char *err, size_t errlen)
{
    for (int i = 0; i < s->n; i++) {
        if (!s->tmp[i]) continue;
        if (rename(s->tmp[i], s->final[i]) != 0)
            return ct_fail(err, errlen, "%s: cannot rename %s into place: %s", s->final[i], s->tmp[i], strerror(errno));
        free(s->tmp[i]);
        s->tmp[i] = NULL;
    }
    return 0;
}

/* Removes the staged files not renamed yet, and frees s. */
static void staged_free(staged_set *s)
{
    for (int i = 0; i < s->n; i++) {
        if (s->tmp[i]) unlink(s->tmp[i]);
        free(s->tmp[i]);
        free(s->final[i]);
    }
    free(s->tmp);
    free(s->final);
    *s = (staged_set){0};
}

/* Stages <dir>/<name> holding text and a final newline. */
static int stage_text(staged_set *s, const char *dir, const char *name, const char *text, char *err, size_t errlen)
{
    char *final = join(dir, name, NULL), *tmp = join(dir, name, ".tmp");
    size_t len = strlen(text);
    char *data = malloc(len + 2);
    if (!final || !tmp || !data) {
        free(final);
        free(tmp);
        free(data);
        return ct_fail(err, errlen, "%s: out of memory", dir);
    }
    memcpy(data, text, len);
    data[len++] = '\n';
    int rc = ct_file_write(tmp, data, len, err, errlen);
    free(data);
    if (rc) {
        free(final);
        free(tmp);
        return -1;
    }
    return staged_add(s, tmp, final) ? ct_fail(err, errlen, "%s: out of memory", dir) : 0;
}

static int stage_side_files(staged_set *s, const char *src, const char *dst, char *err, size_t errlen);

/* ================= reading ================= */

typedef struct {
    const ct_st_tensor *t;
    int shard;
} hf_entry;

struct ct_hf_weights {
    char *dir;
    int nshards;
    ct_safetensors **shards; /* [nshards], by file name */
    int n;
    const ct_st_tensor **order; /* [n]: shards in order, each in file order */
    hf_entry *sorted;           /* [n] by tensor name */
    ct_dtype dtype;
};

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const hf_entry *)a)->t->name, ((const hf_entry *)b)->t->name);
}

static int cmp_entry_key(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const hf_entry *)elem)->t->name);
}

static const hf_entry *lookup(const ct_hf_weights *w, const char *name)
{
    if (!w || !name || !w->n)
        return NULL;
    return bsearch(name, w->sorted, (size_t)w->n, sizeof *w->sorted, cmp_entry_key);
}

/* The shard index of t, or -1 when t is not one of w's tensors. */
static int shard_of(const ct_hf_weights *w, const ct_st_tensor *t)
{
    const hf_entry *e = t ? lookup(w, t->name) : NULL;
    return e && e->t == t ? e->shard : -1;
}

/* Opens shard k; a failure keeps the shard's own message and adds the index that names it and
 * a tensor it names the shard for. */
static int open_shard(ct_hf_weights *w, int k, const char *file, const char *index, const char *tensor, char *err,
                      size_t errlen)
{
    char *path = join(w->dir, file, NULL);
    if (!path)
        return ct_fail(err, errlen, "%s: out of memory", w->dir);
    int rc = ct_st_open(&w->shards[k], path, err, errlen);
    free(path);
    if (rc && index && err && errlen) {
        size_t l = strlen(err);
        snprintf(err + l, errlen - l, " (a shard named in %s, for tensor '%s')", index, tensor);
    }
    return rc;
}

/* An index entry: tensor name, shard file, shard number (filled once the files are known). */
typedef struct {
    const char *name, *file;
    int shard;
} idx_entry;

static int cmp_idx(const void *a, const void *b)
{
    return strcmp(((const idx_entry *)a)->name, ((const idx_entry *)b)->name);
}

static int cmp_idx_key(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const idx_entry *)elem)->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Parses the index and opens the shards it names, checking that both agree exactly. */
static int open_index(ct_hf_weights *w, const char *index, char *err, size_t errlen)
{
    /* ct_json_load allocates its limit up front: give it the file's size, bounded */
    struct stat sb;
    if (stat(index, &sb) != 0)
        return ct_fail(err, errlen, "%s: cannot open: %s", index, strerror(errno));
    if ((uint64_t)sb.st_size > HF_INDEX_MAX)
        return ct_fail(err, errlen, "%s: %lld bytes, more than the %zu an index may have", index,
                    (long long)sb.st_size, HF_INDEX_MAX);
    cJSON *root = ct_json_load(index, (size_t)sb.st_size, err, errlen);
    if (!root)
        return -1;
    int rc = -1, m = 0, nfiles = 0;
    idx_entry *ents = NULL;
    const char **files = NULL;
    const cJSON *wm = NULL;
    if (!cJSON_IsObject(root)) {
        ct_fail(err, errlen, "%s: not a JSON object", index);
        goto done;
    }
    /* ct_json_load refused duplicate keys: a tensor listed twice, weight_map given twice */
    wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (meta && !cJSON_IsObject(meta) && !cJSON_IsNull(meta)) {
        ct_fail(err, errlen, "%s: metadata: not a JSON object", index);
        goto done;
    }
    if (!wm) {
        ct_fail(err, errlen, "%s: weight_map: missing", index);
        goto done;
    }
    if (!cJSON_IsObject(wm)) {
        ct_fail(err, errlen, "%s: weight_map: not a JSON object", index);
        goto done;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (m == INT32_MAX) {
            ct_fail(err, errlen, "%s: weight_map: too many entries", index);
            goto done;
        }
        m++;
    }
    ents = calloc(m ? (size_t)m : 1, sizeof *ents);
    files = calloc(m ? (size_t)m : 1, sizeof *files);
    if (!ents || !files) {
        ct_fail(err, errlen, "%s: out of memory for %d entries", index, m);
        goto done;
    }
    int i = 0;
    for (const cJSON *e = wm->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e)) {
            ct_fail(err, errlen, "%s: tensor '%s': weight_map value is not a string (a shard file name)", index,
                 e->string);
            goto done;
        }
        if (!plain_file_name(e->valuestring)) {
            ct_fail(err, errlen, "%s: tensor '%s': shard '%s' is not a plain file name in the folder", index, e->string,
                 e->valuestring);
            goto done;
        }
        ents[i].name = e->string;
        ents[i].file = files[i] = e->valuestring;
    }
    qsort(ents, (size_t)m, sizeof *ents, cmp_idx);
    qsort(files, (size_t)m, sizeof *files, cmp_str);
    for (i = 0; i < m; i++)
        if (!nfiles || strcmp(files[nfiles - 1], files[i]))
            files[nfiles++] = files[i];
    w->shards = calloc(nfiles ? (size_t)nfiles : 1, sizeof *w->shards);
    if (!w->shards) {
        ct_fail(err, errlen, "%s: out of memory", index);
        goto done;
    }
    w->nshards = nfiles;
    for (int k = 0; k < nfiles; k++) {
        const char *tensor = "";
        for (i = 0; i < m && !tensor[0]; i++)
            if (!strcmp(ents[i].file, files[k])) tensor = ents[i].name;
        if (open_shard(w, k, files[k], index, tensor, err, errlen))
            goto done;
    }
    /* every listed tensor is in the shard the index names ... */
    for (i = 0; i < m; i++) {
        const char **f = bsearch(&ents[i].file, files, (size_t)nfiles, sizeof *files, cmp_str);
        ents[i].shard = (int)(f - files);
        if (!ct_st_find(w->shards[ents[i].shard], ents[i].name)) {
            ct_fail(err, errlen, "%s: tensor '%s': weight_map names shard '%s', which does not hold it", index,
                 ents[i].name, ents[i].file);
            goto done;
        }
    }
    /* ... and every tensor of every shard is listed, under that shard (so each is in one shard) */
    for (int k = 0; k < nfiles; k++) {
        const ct_safetensors *st = w->shards[k];
        for (int j = 0; j < ct_st_count(st); j++) {
            const char *name = ct_st_at(st, j)->name;
            const idx_entry *e = bsearch(name, ents, (size_t)m, sizeof *ents, cmp_idx_key);
            if (!e) {
                ct_fail(err, errlen, "%s: tensor '%s': not listed in %s", ct_st_path(st), name, index);
                goto done;
            }
            if (e->shard != k) {
                ct_fail(err, errlen, "%s: tensor '%s': also in %s, where the index puts it (a tensor in two shards)",
                     ct_st_path(st), name, ct_st_path(w->shards[e->shard]));
                goto done;
            }
        }
    }
    rc = 0;
done:
    free(files);
    free(ents);
    cJSON_Delete(root);
    return rc;
}

/* The tables over all shards, and the dominant dtype. */
static int build_tables(ct_hf_weights *w, char *err, size_t errlen)
{
    size_t n = 0;
    for (int k = 0; k < w->nshards; k++)
        n += (size_t)ct_st_count(w->shards[k]);
    if (n > INT32_MAX)
        return ct_fail(err, errlen, "%s: too many tensors", w->dir);
    w->order = calloc(n ? n : 1, sizeof *w->order);
    w->sorted = calloc(n ? n : 1, sizeof *w->sorted);
    if (!w->order || !w->sorted)
        return ct_fail(err, errlen, "%s: out of memory", w->dir);
    uint64_t count[3] = {0, 0, 0}; /* F32, BF16, F16 */
    for (int k = 0; k < w->nshards; k++)
        for (int j = 0; j < ct_st_count(w->shards[k]); j++) {
            const ct_st_tensor *t = ct_st_at(w->shards[k], j);
            w->order[w->n] = t;
            w->sorted[w->n].t = t;
            w->sorted[w->n].shard = k;
            w->n++;
            if (t->dtype == CT_DT_F32) count[0] += t->numel;
            else if (t->dtype == CT_DT_BF16) count[1] += t->numel;
            else if (t->dtype == CT_DT_F16) count[2] += t->numel;
        }
    qsort(w->sorted, (size_t)w->n, sizeof *w->sorted, cmp_entry);
    for (int i = 1; i < w->n; i++) /* unreachable after the index checks; kept as the invariant find relies on */
        if (!strcmp(w->sorted[i - 1].t->name, w->sorted[i].t->name))
            return ct_fail(err, errlen, "%s: tensor '%s': in two files", w->dir, w->sorted[i].t->name);
    w->dtype = count[0] >= count[1] && count[0] >= count[2] ? CT_DT_F32
             : count[1] >= count[2]                          ? CT_DT_BF16
                                                             : CT_DT_F16;
    return 0;
}

int ct_hf_weights_open(ct_hf_weights **out, const char *dir, char *err, size_t errlen)
{
    if (!out || !dir || !*dir)
        return ct_fail(err, errlen, "hf weights: no %s given", out ? "folder" : "output handle");
    *out = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return ct_fail(err, errlen, "%s: cannot open: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return ct_fail(err, errlen, "%s: not a directory", dir);
    ct_hf_weights *w = calloc(1, sizeof *w);
    char *single = NULL, *index = NULL;
    int rc = -1;
    if (!w || !(w->dir = malloc(strlen(dir) + 1)) || !(single = join(dir, HF_SINGLE, NULL)) ||
        !(index = join(dir, HF_INDEX, NULL))) {
        ct_fail(err, errlen, "%s: out of memory", dir);
        goto done;
    }
    strcpy(w->dir, dir);
    if (entry_exists(single)) { /* transformers' order: the single file first, the index ignored then */
        if (!(w->shards = calloc(1, sizeof *w->shards))) {
            ct_fail(err, errlen, "%s: out of memory", dir);
            goto done;
        }
        w->nshards = 1;
        if (open_shard(w, 0, HF_SINGLE, NULL, NULL, err, errlen))
            goto done;
    } else if (entry_exists(index)) {
        if (open_index(w, index, err, errlen))
            goto done;
    } else {
        ct_fail(err, errlen, "%s: no " HF_SINGLE " or " HF_INDEX, dir);
        goto done;
    }
    if (build_tables(w, err, errlen))
        goto done;
    rc = 0;
done:
    free(single);
    free(index);
    if (rc) {
        ct_hf_weights_close(w);
        return -1;
    }
    *out = w;
    return 0;
}

void ct_hf_weights_close(ct_hf_weights *w)
{
    if (!w)
        return;
    for (int k = 0; k < w->nshards; k++)
        ct_st_close(w->shards[k]);
    free(w->shards);
    free(w->order);
    free(w->sorted);
    free(w->dir);
    free(w);
}

int ct_hf_weights_count(const ct_hf_weights *w) { return w ? w->n : 0; }

const ct_st_tensor *ct_hf_weights_at(const ct_hf_weights *w, int i)
{
    return w && i >= 0 && i < w->n ? w->order[i] : NULL;
}

const ct_st_tensor *ct_hf_weights_find(const ct_hf_weights *w, const char *name)
{
    const hf_entry *e = lookup(w, name);
    return e ? e->t : NULL;
}

const char *ct_hf_weights_file(const ct_hf_weights *w, const ct_st_tensor *t)
{
    int k = shard_of(w, t);
    return k >= 0 ? ct_st_path(w->shards[k]) : NULL;
}

int ct_hf_weights_read_f32(ct_hf_weights *w, const ct_st_tensor *t, float *dst, size_t n, char *err, size_t errlen)
{
    if (!w || !t)
        return ct_fail(err, errlen, "%s: no tensor given", w ? w->dir : "hf weights");
    int k = shard_of(w, t);
    if (k < 0)
        return ct_fail(err, errlen, "%s: tensor '%s': not a tensor of this folder", w->dir, t->name ? t->name : "?");
    return ct_st_read_f32(w->shards[k], t, dst, n, err, errlen);
}

ct_dtype ct_hf_weights_dtype(const ct_hf_weights *w) { return w ? w->dtype : CT_DT_F32; }

/* ================= writing ================= */

/* model-NNNNN-of-NNNNN.safetensors: the shard names save_pretrained writes and cleans up. */
static int is_shard_name(const char *s)
{
    if (strncmp(s, "model-", 6))
        return 0;
    s += 6;
    for (int part = 0; part < 2; part++) {
        size_t d = strspn(s, "0123456789");
        if (d < 5)
            return 0;
        s += d;
        if (part == 0) {
            if (strncmp(s, "-of-", 4))
                return 0;
            s += 4;
        }
    }
    return !strcmp(s, ".safetensors");
}

/* Writes s as a JSON string (escaped by cJSON). */
static int put_json_string(FILE *f, const char *s)
{
    cJSON *j = cJSON_CreateString(s);
    char *txt = j ? cJSON_PrintUnformatted(j) : NULL;
    int ok = txt && fputs(txt, f) >= 0;
    cJSON_free(txt);
    cJSON_Delete(j);
    return ok ? 0 : -1;
}

typedef struct {
    const char *name, *file;
} wm_entry;

static int cmp_wm(const void *a, const void *b)
{
    return strcmp(((const wm_entry *)a)->name, ((const wm_entry *)b)->name);
}

/* The index as save_pretrained writes it (2-space indent, sorted keys), to path, fsync'ed. */
static int write_index(const char *path, const ct_hf_out_tensor *t, int n, char *const *files, const int *shard,
                       uint64_t total, char *err, size_t errlen)
{
    wm_entry *wm = malloc((n ? (size_t)n : 1) * sizeof *wm);
    if (!wm)
        return ct_fail(err, errlen, "%s: out of memory", path);
    for (int i = 0; i < n; i++) {
        wm[i].name = t[i].name;
        wm[i].file = files[shard[i]];
    }
    qsort(wm, (size_t)n, sizeof *wm, cmp_wm);
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(wm);
        return ct_fail(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    }
    int ok = fprintf(f, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n  \"weight_map\": {", total) > 0;
    for (int i = 0; ok && i < n; i++)
        ok = fputs(i ? ",\n    " : "\n    ", f) >= 0 && put_json_string(f, wm[i].name) == 0 && fputs(": ", f) >= 0 &&
             put_json_string(f, wm[i].file) == 0;
    ok = ok && fputs(n ? "\n  }\n}\n" : "}\n}\n", f) >= 0 && fflush(f) == 0;
    const char *what = ok ? "sync" : "write";
    ok = ok && fsync(fileno(f)) == 0;
    int saved = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        saved = errno;
    }
    free(wm);
    if (!ok) {
        unlink(path);
        return ct_fail(err, errlen, "%s: cannot %s: %s", path, what, strerror(saved));
    }
    return 0;
}

/* Removes the weight files in dir that this save did not write: model.safetensors when sharded,
 * the index when not, and model-NNNNN-of-NNNNN.safetensors shards not in files[nfiles]. */
static int remove_stale(const char *dir, int sharded, char *const *files, int nfiles, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d)
        return ct_fail(err, errlen, "%s: cannot list it to remove stale weight files: %s", dir, strerror(errno));
    char **stale = NULL;
    size_t ns = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        const char *name = e->d_name;
        int is_stale = sharded ? !strcmp(name, HF_SINGLE) : !strcmp(name, HF_INDEX);
        if (!is_stale && is_shard_name(name)) {
            is_stale = 1;
            for (int k = 0; sharded && k < nfiles && is_stale; k++)
                is_stale = strcmp(name, files[k]) != 0;
        }
        if (!is_stale)
            continue;
        if (ns == cap) {
            char **p = realloc(stale, (cap = cap ? 2 * cap : 8) * sizeof *stale);
            if (!p) {
                rc = ct_fail(err, errlen, "%s: out of memory", dir);
                break;
            }
            stale = p;
        }
        if (!(stale[ns] = join(dir, name, NULL)))
            rc = ct_fail(err, errlen, "%s: out of memory", dir);
        else
            ns++;
    }
    closedir(d);
    for (size_t i = 0; i < ns; i++) {
        struct stat sb;
        /* regular files and links only: a directory of that name is not ours to remove */
        if (!rc && lstat(stale[i], &sb) == 0 && (S_ISREG(sb.st_mode) || S_ISLNK(sb.st_mode)) &&
            unlink(stale[i]) != 0 && errno != ENOENT)
            rc = ct_fail(err, errlen, "%s: cannot remove this stale weight file of an earlier save: %s", stale[i],
                      strerror(errno));
        free(stale[i]);
    }
    free(stale);
    return rc;
}

/* The shard of each tensor, as huggingface_hub's split_state_dict_into_shards_factory assigns them:
 * a tensor larger than the limit becomes a shard at once; the others fill the current shard, which is
 * numbered when it is closed (the next tensor does not fit) or at the end. Returns the shard count. */
static int plan_shards(const uint64_t *bytes, int n, uint64_t limit, int *shard)
{
    int nshards = 0, open_first = -1; /* the shard being filled: its tensors from open_first on hold -1 */
    uint64_t open_size = 0;
    for (int i = 0; i < n; i++) {
        if (bytes[i] > limit) {
            shard[i] = nshards++;
            continue;
        }
        if (open_first >= 0 && open_size + bytes[i] > limit) {
            for (int j = open_first; j < i; j++)
                if (shard[j] == -1)
                    shard[j] = nshards;
            nshards++;
            open_first = -1;
        }
        if (open_first < 0) {
            open_first = i;
            open_size = 0;
        }
        shard[i] = -1;
        open_size += bytes[i];
    }
    if (open_first >= 0) {
        for (int j = open_first; j < n; j++)
            if (shard[j] == -1)
                shard[j] = nshards;
        nshards++;
    }
    return nshards;
}

int ct_hf_weights_write(const char *dir, const ct_hf_out_tensor *t, int n, ct_dtype dtype, uint64_t max_shard_bytes,
                        ct_hf_fetch_fn fetch, void *user, const char *const *meta, char *err, size_t errlen)
{
    return ct_hf_folder_write(dir, t, n, dtype, max_shard_bytes, fetch, user, meta, NULL, NULL, err, errlen);
}

int ct_hf_folder_write(const char *dir, const ct_hf_out_tensor *t, int n, ct_dtype dtype, uint64_t max_shard_bytes,
                       ct_hf_fetch_fn fetch, void *user, const char *const *meta, const char *config_json,
                       const char *side_from, char *err, size_t errlen)
{
    if (!dir || !*dir)
        return ct_fail(err, errlen, "hf weights: no output folder given");
    if (n < 0 || (n > 0 && !t))
        return ct_fail(err, errlen, "%s: invalid tensor count %d", dir, n);
    if (n > 0 && !fetch)
        return ct_fail(err, errlen, "%s: no fetch function given", dir);
    int rc = -1, nfiles = 0, sharded = 0;
    ct_st_entry *entries = calloc(n ? (size_t)n : 1, sizeof *entries), *sub = NULL;
    uint64_t *bytes = calloc(n ? (size_t)n : 1, sizeof *bytes);
    int *shard = calloc(n ? (size_t)n : 1, sizeof *shard), *first = NULL, *members = NULL;
    char **files = NULL, **tmps = NULL, *index = NULL, *index_tmp = NULL;
    float *buf = NULL;
    ct_st_writer *sw = NULL;
    int index_written = 0;
    staged_set extra = {0}; /* config.json and the side files */
    if (!entries || !bytes || !shard) {
        ct_fail(err, errlen, "%s: out of memory", dir);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        entries[i].name = t[i].name;
        entries[i].ndim = t[i].ndim;
        memcpy(entries[i].shape, t[i].shape, sizeof t[i].shape);
    }
    if (ct_st_check_entries(dir, entries, n, dtype, meta, 0, err, errlen))
        goto done;
    size_t max_numel = 1;
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++)
            numel *= (size_t)t[i].shape[d]; /* bounded by ct_st_check_entries */
        bytes[i] = (uint64_t)numel * ct_dtype_size(dtype);
        total += bytes[i];
        if (numel > max_numel)
            max_numel = numel;
    }
    if (ensure_dir(dir, err, errlen))
        goto done;
    /* the small files first: a bad side file fails the save before the weights are written */
    if ((config_json && stage_text(&extra, dir, "config.json", config_json, err, errlen)) ||
        (side_from && stage_side_files(&extra, side_from, dir, err, errlen)))
        goto done;

    nfiles = plan_shards(bytes, n, max_shard_bytes ? max_shard_bytes : UINT64_MAX, shard);
    if (!nfiles)
        nfiles = 1; /* no tensors: an empty model.safetensors */
    sharded = nfiles > 1;
    files = calloc((size_t)nfiles, sizeof *files);
    tmps = calloc((size_t)nfiles, sizeof *tmps);
    first = calloc((size_t)nfiles + 1, sizeof *first);
    members = calloc(n ? (size_t)n : 1, sizeof *members);
    sub = calloc(n ? (size_t)n : 1, sizeof *sub);
    buf = malloc(max_numel * sizeof *buf);
    if (!files || !tmps || !first || !members || !sub || !buf) {
        ct_fail(err, errlen, "%s: out of memory (the largest tensor has %zu elements)", dir, max_numel);
        goto done;
    }
    for (int k = 0; k < nfiles; k++) {
        char name[64];
        if (sharded)
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, nfiles);
        else
            snprintf(name, sizeof name, "%s", HF_SINGLE);
        if (!(files[k] = strdup(name))) {
            ct_fail(err, errlen, "%s: out of memory", dir);
            goto done;
        }
    }
    /* members of each shard, in tensor order: first[k] .. first[k + 1] - 1 */
    for (int i = 0; i < n; i++)
        first[shard[i] + 1]++;
    for (int k = 0; k < nfiles; k++)
        first[k + 1] += first[k];
    {
        int *fill = calloc((size_t)nfiles, sizeof *fill);
        if (!fill) {
            ct_fail(err, errlen, "%s: out of memory", dir);
            goto done;
        }
        for (int i = 0; i < n; i++)
            members[first[shard[i]] + fill[shard[i]]++] = i;
        free(fill);
    }

    for (int k = 0; k < nfiles; k++) {
        int cnt = first[k + 1] - first[k];
        for (int j = 0; j < cnt; j++)
            sub[j] = entries[members[first[k] + j]];
        char *path = join(dir, files[k], ".tmp");
        if (!path) {
            ct_fail(err, errlen, "%s: out of memory", dir);
            goto done;
        }
        if (ct_st_writer_open(&sw, path, sub, cnt, dtype, meta, err, errlen)) {
            free(path);
            goto done;
        }
        tmps[k] = path; /* from here on, removed on failure */
        for (int j = 0; j < cnt; j++) {
            int i = members[first[k] + j];
            size_t numel = (size_t)(bytes[i] / ct_dtype_size(dtype));
            if (err && errlen)
                err[0] = '\0';
            if (fetch(user, i, buf, err, errlen) != 0) {
                if (err && errlen && !err[0])
                    ct_fail(err, errlen, "%s: tensor '%s': could not be fetched", dir, t[i].name);
                goto done;
            }
            if (ct_st_writer_put(sw, buf, numel, err, errlen))
                goto done;
        }
        int crc = ct_st_writer_close(sw, err, errlen);
        sw = NULL;
        if (crc)
            goto done;
    }
    if (sharded) {
        if (!(index = join(dir, HF_INDEX, NULL)) || !(index_tmp = join(dir, HF_INDEX, ".tmp"))) {
            ct_fail(err, errlen, "%s: out of memory", dir);
            goto done;
        }
        if (write_index(index_tmp, t, n, files, shard, total, err, errlen))
            goto done;
        index_written = 1;
    }

    /* all complete: into place, the small files first and the weights last, so a folder with new
     * weights is whole; shards before the index, so the index never names a shard that is not there */
    if (staged_commit(&extra, err, errlen))
        goto done;
    for (int k = 0; k < nfiles; k++) {
        char *final = join(dir, files[k], NULL);
        int r = final ? rename(tmps[k], final) : -1;
        int saved = errno;
        if (r != 0) {
            ct_fail(err, errlen, "%s: cannot rename %s into place: %s", final ? final : dir, tmps[k],
                 final ? strerror(saved) : "out of memory");
            free(final);
            goto done;
        }
        free(final);
        free(tmps[k]);
        tmps[k] = NULL;
    }
    if (sharded) {
        if (rename(index_tmp, index) != 0) {
            ct_fail(err, errlen, "%s: cannot rename %s into place: %s", index, index_tmp, strerror(errno));
            goto done;
        }
        index_written = 0;
    }
    if (remove_stale(dir, sharded, files, nfiles, err, errlen))
        goto done;
    sync_dir(dir);
    rc = 0;
done:
    staged_free(&extra); /* removes what was not renamed */
    ct_st_writer_abort(sw); /* removes its file; NULL is a no-op */
    for (int k = 0; tmps && k < nfiles; k++) {
        if (tmps[k] && rc)
            unlink(tmps[k]);
        free(tmps[k]);
    }
    if (index_written)
        unlink(index_tmp);
    for (int k = 0; files && k < nfiles; k++)
        free(files[k]);
    free(files);
    free(tmps);
    free(index);
    free(index_tmp);
    free(first);
    free(members);
    free(sub);
    free(buf);
    free(shard);
    free(bytes);
    free(entries);
    return rc;
}

/* ================= side files ================= */

static const char *const side_files[] = {
    "tokenizer.json",    "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
    "vocab.json",        "merges.txt",            "tokenizer.model",         "added_tokens.json",
    "chat_template.jinja",
};

/* Stages a copy of src as dst (through "<dst>.tmp"); nothing when src does not exist. */
static int stage_copy(staged_set *s, const char *src, const char *dst, char *err, size_t errlen)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        if (errno == ENOENT)
            return 0;
        return ct_fail(err, errlen, "%s: cannot open: %s", src, strerror(errno));
    }
    struct stat sb;
    int bad_stat = fstat(in, &sb) != 0;
    if (bad_stat || !S_ISREG(sb.st_mode)) {
        int rc = ct_fail(err, errlen, "%s: %s", src, bad_stat ? "cannot stat" : "not a regular file");
        close(in);
        return rc;
    }
    size_t dl = strlen(dst);
    char *tmp = malloc(dl + 5), *final = strdup(dst);
    if (!tmp || !final) {
        close(in);
        free(tmp);
        free(final);
        return ct_fail(err, errlen, "%s: out of memory", dst);
    }
    memcpy(tmp, dst, dl);
    memcpy(tmp + dl, ".tmp", 5);
    int rc = -1;
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (out < 0) {
        ct_fail(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    char buf[1 << 15];
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            ct_fail(err, errlen, "%s: read failed: %s", src, strerror(errno));
            goto done;
        }
        if (r == 0)
            break;
        for (ssize_t off = 0; off < r;) {
            ssize_t wr = write(out, buf + off, (size_t)(r - off));
            if (wr < 0 && errno == EINTR)
                continue;
            if (wr <= 0) {
                ct_fail(err, errlen, "%s: write failed: %s", tmp, wr < 0 ? strerror(errno) : "no progress");
                goto done;
            }
            off += wr;
        }
    }
    if (fsync(out) != 0) {
        ct_fail(err, errlen, "%s: cannot sync: %s", tmp, strerror(errno));
        goto done;
    }
    int c = close(out);
    out = -1;
    if (c != 0) {
        ct_fail(err, errlen, "%s: write failed: %s", tmp, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    if (out >= 0)
        close(out);
    close(in);
    if (rc) {
        unlink(tmp);
        free(tmp);
        free(final);
        return -1;
    }
    return staged_add(s, tmp, final) ? ct_fail(err, errlen, "%s: out of memory", dst) : 0;
}

static int stage_side_files(staged_set *s, const char *src, const char *dst, char *err, size_t errlen)
{
    if (!src || !*src || !dst || !*dst)
        return ct_fail(err, errlen, "hf side files: no %s folder given", !src || !*src ? "source" : "destination");
    struct stat ss, ds;
    if (stat(src, &ss) != 0)
        return ct_fail(err, errlen, "%s: cannot open: %s", src, strerror(errno));
    if (!S_ISDIR(ss.st_mode))
        return ct_fail(err, errlen, "%s: not a directory", src);
    if (ensure_dir(dst, err, errlen))
        return -1;
    if (stat(dst, &ds) == 0 && ds.st_dev == ss.st_dev && ds.st_ino == ss.st_ino)
        return 0; /* the same folder: every file is already there */
    for (size_t i = 0; i < sizeof side_files / sizeof side_files[0]; i++) {
        char *from = join(src, side_files[i], NULL), *to = join(dst, side_files[i], NULL);
        int rc = from && to ? stage_copy(s, from, to, err, errlen) : ct_fail(err, errlen, "%s: out of memory", dst);
        free(from);
        free(to);
        if (rc)
            return -1;
    }
    return 0;
}

int ct_hf_copy_side_files(const char *src, const char *dst, char *err, size_t errlen)
{
    staged_set s = {0};
    int rc = stage_side_files(&s, src, dst, err, errlen) || staged_commit(&s, err, errlen) ? -1 : 0;
    if (rc == 0 && s.n)
        sync_dir(dst);
    staged_free(&s);
    return rc;
}
