/* test_json_check.c — ct_json_check: NUL characters (escaped or raw, in values and keys, at any
 * depth) and duplicate keys (small and large objects, nested in arrays) are refused with the key
 * path; clean documents, "\\u0000" (an escaped backslash, then text) and equal keys in different
 * objects pass. Also built under ASan/UBSan (test_json_check_asan). */
#include "json_check.h"

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses text[len] as the readers do and checks it: want NULL means it must pass, else the
 * error must hold "doc: " + want. */
static void expect(const char *text, size_t len, const char *want)
{
    cJSON *j = cJSON_ParseWithLength(text, len);
    char err[512] = "";
    CHECK(j != NULL);
    if (!j) {
        fprintf(stderr, "  does not parse: %.*s\n", (int)len, text);
        return;
    }
    int rc = ct_json_check(text, len, j, "doc", err, sizeof err);
    char full[600];
    snprintf(full, sizeof full, "doc%s%s", want && *want ? ": " : "", want ? want : "");
    int ok = want ? rc == -1 && strstr(err, full) != NULL : rc == 0;
    CHECK(ok);
    if (!ok) fprintf(stderr, "  %.*s: rc %d, message \"%s\", wanted \"%s\"\n", (int)len, text, rc, err, want ? full : "(pass)");
    else if (want) printf("  expected error: %s\n", err);
    cJSON_Delete(j);
}

#define EXPECT(text, want) expect(text, strlen(text), want)

int main(void)
{
    /* clean */
    EXPECT("{\"a\": \"x\", \"b\": [1, \"y\", {\"a\": 2}], \"c\": {\"a\": 3}}", NULL);
    EXPECT("{\"a\": \"\\\\u0000\"}", NULL); /* a backslash, then the text u0000 */
    EXPECT("{\"a\": \"\\\"\\\\\", \"b\": \"\\u0001\\u00000\"}", "b: holds \\u0000"); /* escapes skipped whole */
    EXPECT("\"plain\"", NULL);

    /* NUL as an escape: in a value, a key, an array element, the top-level string */
    EXPECT("{\"a\": \"x\", \"b\": \"y\\u0000z\"}", "b: holds \\u0000");
    EXPECT("{\"a\": {\"b\\u0000c\": 1}}", "a.b: the key holds \\u0000");
    EXPECT("{\"m\": [{\"role\": \"user\"}, {\"content\": [\"ok\", \"bad\\u0000\"]}]}", "m[1].content[1]: holds \\u0000");
    EXPECT("\"\\u0000\"", "holds \\u0000");
    expect("\"x\\u0000\"", 9, "holds \\u0000");

    /* a raw NUL byte: inside a string (cJSON cuts it there) and outside any */
    expect("{\"a\": \"x\0y\"}", 12, "a: holds \\u0000");
    expect("{\"a\": 1}\0{}", 11, "byte 8: a NUL byte outside any string");

    /* duplicate keys: top level, nested, inside arrays, and a large object (sorted) */
    EXPECT("{\"a\": 1, \"b\": 2, \"a\": 3}", "a: key given twice");
    EXPECT("{\"o\": {\"k\": 1, \"k\": 1}}", "o.k: key given twice");
    EXPECT("{\"l\": [{\"x\": 1}, {\"y\": 1, \"y\": 2}]}", "l[1].y: key given twice");
    EXPECT("[{\"x\": 1}, {\"x\": 1}]", NULL);
    char big[8192];
    size_t n = (size_t)snprintf(big, sizeof big, "{\"vocab\": {");
    for (int i = 0; i < 300; i++) n += (size_t)snprintf(big + n, sizeof big - n, "%s\"t%d\": %d", i ? ", " : "", i, i);
    snprintf(big + n, sizeof big - n, "}}");
    EXPECT(big, NULL);
    snprintf(big + n, sizeof big - n, ", \"t123\": 5}}");
    EXPECT(big, "vocab.t123: key given twice");

    /* a long key is shortened in the message, control characters shown as '?' */
    char lk[600];
    n = (size_t)snprintf(lk, sizeof lk, "{\"a\\tb");
    for (int i = 0; i < 200; i++) lk[n++] = 'k';
    n += (size_t)snprintf(lk + n, sizeof lk - n, "\": 1, \"a\\tb");
    for (int i = 0; i < 200; i++) lk[n++] = 'k';
    snprintf(lk + n, sizeof lk - n, "\": 2}");
    EXPECT(lk, "a?bkkkk");
    return ct_test_finish("test_json_check");
}
