/* json_file.c — read a file whole, parse it, say where malformed JSON goes wrong, and refuse what
 * cJSON lets through (NUL characters, duplicate keys: ct_json_check). */
#include "json_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_check.h"

cJSON *ct_json_load(const char *path, size_t max_bytes, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *text = malloc(max_bytes + 1);
    size_t n = text ? fread(text, 1, max_bytes + 1, f) : 0;
    int bad = !text || ferror(f) || n > max_bytes;
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "%s: %s", path, !text ? "out of memory" : n > max_bytes ? "too large" : "unreadable");
        free(text);
        return NULL;
    }
    text[n] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root) {
        int line = 1, col = 1;
        for (const char *p = text; p < (end ? end : text) && *p; p++) {
            if (*p == '\n') line++, col = 1;
            else col++;
        }
        snprintf(err, errlen, "%s: malformed JSON at line %d, column %d", path, line, col);
    } else if (ct_json_check(text, n, root, path, err, errlen)) {
        cJSON_Delete(root);
        root = NULL;
    }
    free(text);
    return root;
}
