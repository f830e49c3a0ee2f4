/* json_file.h — a small JSON file read and parsed, with errors a user can act on. */
#ifndef CT_TRAIN_JSON_FILE_H
#define CT_TRAIN_JSON_FILE_H

#include <cjson/cJSON.h>
#include <stddef.h>

/* Reads and parses path (at most max_bytes). NULL with err filled on failure:
 * "<path>: cannot open: <reason>", "<path>: larger than N bytes", or
 * "<path>: malformed JSON at line L, column C", or ct_json_check's "<path>: <key path>: ..." for
 * a NUL character or a key given twice. The caller frees with cJSON_Delete. */
cJSON *ct_json_load(const char *path, size_t max_bytes, char *err, size_t errlen);

#endif
