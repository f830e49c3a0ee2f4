/* json_check.c — NUL characters and duplicate keys in parsed JSON (see json_check.h).
 *
 * A NUL is found in the text (the tree cannot show it: the string already ends there): a scan
 * counts the strings, keys included, up to the first one holding a NUL; a walk of the tree in
 * document order (cJSON keeps children in order) then finds the same string and names its key
 * path. Duplicate keys are found in the tree, object by object: pairwise for small objects,
 * by sorting for large ones (a tokenizer.json vocabulary has 10^5 keys). */
#include "json_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_impl.h"

enum { PATH_MAX_LEN = 400, KEY_SHOWN = 80 };

typedef struct {
    char path[PATH_MAX_LEN];
    size_t len;
} kpath;

/* Appends ".key" (or "key" at the top), control characters shown as '?', long keys cut. */
static void push_key(kpath *p, const char *key)
{
    size_t n = p->len;
    if (n && n + 1 < sizeof p->path) p->path[n++] = '.';
    size_t k = 0;
    for (; key[k] && k < KEY_SHOWN && n + 1 < sizeof p->path; k++)
        p->path[n++] = (unsigned char)key[k] < 0x20 ? '?' : key[k];
    if (key[k] && n + 4 < sizeof p->path) memcpy(p->path + n, "...", 3), n += 3;
    p->path[n] = 0;
    p->len = n;
}

static void push_index(kpath *p, int i)
{
    int w = snprintf(p->path + p->len, sizeof p->path - p->len, "[%d]", i);
    if (w > 0 && (size_t)w < sizeof p->path - p->len) p->len += (size_t)w;
    else p->path[p->len] = 0;
}

static void pop_to(kpath *p, size_t len)
{
    p->len = len;
    p->path[len] = 0;
}

/* ": <path>", or nothing for the top-level value itself */
static const char *sep(const kpath *p) { return p->len ? ": " : ""; }

/* The index (in document order, keys counted) of the first string holding a NUL, with its byte
 * in *at; -1 when none; -2 for a raw NUL outside any string. */
static long first_nul(const char *t, size_t n, size_t *at)
{
    long k = -1;
    for (size_t i = 0; i < n; i++) {
        if (t[i] == '\0') return *at = i, -2;
        if (t[i] != '"') continue;
        k++;
        for (i++; i < n && t[i] != '"'; i++) {
            if (t[i] == '\0') return *at = i, k;
            if (t[i] != '\\') continue;
            if (i + 5 < n && t[i + 1] == 'u' && !memcmp(t + i + 2, "0000", 4)) return *at = i, k;
            i++; /* the escaped character, so \\ and \" are skipped whole */
        }
    }
    return -1;
}

/* Walks v (reached by path p) in document order, counting strings in *count; when the target-th
 * is met, fills err and returns 1. */
static int name_nul(const cJSON *v, kpath *p, long target, long *count, const char *where, char *err, size_t errlen)
{
    size_t mark = p->len;
    if (v->string) {
        push_key(p, v->string);
        if ((*count)++ == target) {
            ct_data_fail(err, errlen, "%s%s%s: the key holds \\u0000 (a NUL character), which is not supported",
                         where, sep(p), p->path);
            return 1;
        }
    }
    if (cJSON_IsString(v) && (*count)++ == target) {
        ct_data_fail(err, errlen, "%s%s%s: holds \\u0000 (a NUL character), which is not supported", where, sep(p),
                     p->path);
        return 1;
    }
    int i = 0;
    for (const cJSON *c = v->child; c && (cJSON_IsArray(v) || cJSON_IsObject(v)); c = c->next, i++) {
        size_t before = p->len;
        if (cJSON_IsArray(v)) push_index(p, i);
        if (name_nul(c, p, target, count, where, err, errlen)) return 1;
        pop_to(p, before);
    }
    pop_to(p, mark);
    return 0;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* The first key of object o given twice, or NULL (*oom set when memory ran out). */
static const char *duplicate_in(const cJSON *o, int *oom)
{
    size_t n = 0;
    for (const cJSON *c = o->child; c; c = c->next) n++;
    if (n < 2) return NULL;
    if (n <= 16) {
        for (const cJSON *c = o->child->next; c; c = c->next)
            for (const cJSON *d = o->child; d != c; d = d->next)
                if (!strcmp(c->string, d->string)) return c->string;
        return NULL;
    }
    const cJSON **keys = malloc(n * sizeof *keys);
    if (!keys) return *oom = 1, NULL;
    n = 0;
    for (const cJSON *c = o->child; c; c = c->next) keys[n++] = c;
    qsort(keys, n, sizeof *keys, cmp_key);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (!strcmp(keys[i - 1]->string, keys[i]->string)) dup = keys[i]->string;
    free(keys);
    return dup;
}

static int find_duplicates(const cJSON *v, kpath *p, const char *where, char *err, size_t errlen)
{
    size_t mark = p->len;
    if (cJSON_IsObject(v)) {
        int oom = 0;
        const char *dup = duplicate_in(v, &oom);
        if (oom) return ct_data_fail(err, errlen, "%s%s%s: out of memory checking for duplicate keys", where, sep(p),
                                      p->path);
        if (dup) {
            push_key(p, dup);
            return ct_data_fail(err, errlen, "%s%s%s: key given twice (duplicate keys are refused)", where, sep(p),
                                  p->path);
        }
    }
    if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return 0;
    int i = 0;
    for (const cJSON *c = v->child; c; c = c->next, i++) {
        if (cJSON_IsObject(v)) push_key(p, c->string);
        else push_index(p, i);
        if (find_duplicates(c, p, where, err, errlen)) return -1;
        pop_to(p, mark);
    }
    return 0;
}

int ct_json_check(const char *text, size_t len, const cJSON *root, const char *where, char *err, size_t errlen)
{
    if (!root) return ct_data_fail(err, errlen, "%s: no JSON to check", where);
    kpath p = {.len = 0};
    size_t at = 0;
    long k = text ? first_nul(text, len, &at) : -1;
    if (k == -2)
        return ct_data_fail(err, errlen, "%s: byte %zu: a NUL byte outside any string; JSON text cannot hold one",
                            where, at);
    if (k >= 0) {
        long count = 0;
        if (name_nul(root, &p, k, &count, where, err, errlen)) return -1;
        return ct_data_fail(err, errlen, "%s: byte %zu: a string holds \\u0000 (a NUL character), which is not supported",
                            where, at);
    }
    return find_duplicates(root, &p, where, err, errlen);
}
