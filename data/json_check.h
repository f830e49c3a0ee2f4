/* json_check.h — the two things cJSON lets through that every ctrain JSON reader refuses, checked
 * in one place over the text and the tree parsed from it:
 *
 *  - a NUL in a string or a key, as the escape \u0000 or a raw byte: cJSON's strings are C strings,
 *    so everything after it would be dropped without a word ("a\u0000b" reads as "a");
 *  - a key given twice in one object: cJSON keeps both and its lookups find the first, Python's
 *    json keeps the last, serde refuses some and keeps the last of others. ctrain refuses them,
 *    so a file means one thing to every reader.
 *
 * The readers (train/config.c, config.json, adapter_config.json, a safetensors header and the
 * shards index through train/json_file.c or safetensors.c; tokenizer.json, tokenizer_config.json,
 * and each line of a JSON Lines file in data/) call ct_json_check right after parsing. It lives in
 * data/ because train/ depends on data/ and not the other way round. Unlike data.h it exposes a
 * cJSON type: only its callers need cJSON's header. */
#ifndef CT_DATA_JSON_CHECK_H
#define CT_DATA_JSON_CHECK_H

#include <cjson/cJSON.h>
#include <stddef.h>

/* root was parsed from text[0, len). 0 when it is clean; else -1 and err holds
 * "<where>: <key path>: <what>", where the key path joins keys with '.' and array indices as [i]
 * ("model.vocab", "messages[1].content"; none for the top-level value itself):
 *   "<where>: <path>: holds \u0000 (a NUL character), which is not supported"
 *   "<where>: <path>: key given twice (duplicate keys are refused)"
 * A NUL outside any string names the byte. where names the file (and line, for JSON Lines). */
int ct_json_check(const char *text, size_t len, const cJSON *root, const char *where, char *err, size_t errlen);

#endif
