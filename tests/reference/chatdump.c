/* chatdump — the C side of the chat template reference test: loads a tokenizer folder and its
 * chat template (data.h) and renders conversations given one per input line as JSON:
 *   {"messages": [{"role": ..., "content": ...}, ...], "add_generation_prompt": bool,
 *    "train_on_prompt": bool, "date": "26 Jul 2024" (optional)}
 * The first output line is "<name>|<stop ids>|<describe>"; then one line per request:
 *   <ids>|<mask>|<hex of the rendered text>      or      ERR <message>
 * ids and the mask space-separated. A load error is printed as "ERR <message>" alone.
 * Usage: chatdump FOLDER TEMPLATE_NAME IN OUT (TEMPLATE_NAME "" for the folder's own). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

static int request(FILE *out, ct_chat_template *t, const ct_tokenizer *tok, const char *line)
{
    char err[600];
    cJSON *j = cJSON_Parse(line);
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(j, "messages"), *e;
    if (!cJSON_IsArray(ms)) {
        fprintf(out, "ERR chatdump: a request needs \"messages\"\n");
        cJSON_Delete(j);
        return 0;
    }
    int n = cJSON_GetArraySize(ms), k = 0;
    ct_chat_message *m = calloc((size_t)n + 1, sizeof *m);
    cJSON_ArrayForEach(e, ms)
    {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(e, "role"),
                    *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        m[k].role = cJSON_IsString(r) ? r->valuestring : NULL;
        m[k].content = cJSON_IsString(c) ? c->valuestring : NULL;
        k++;
    }
    int agp = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "add_generation_prompt"));
    int top = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "train_on_prompt"));
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "date");
    if (cJSON_IsString(d)) ct_chat_template_set_date(t, d->valuestring);
    int32_t *ids = NULL;
    uint8_t *mask = NULL;
    size_t cap = 0;
    long cnt = ct_chat_render(t, tok, m, n, agp, top, &ids, &mask, &cap, err, sizeof err);
    char *text = cnt < 0 ? NULL : ct_chat_render_text(t, m, n, agp, err, sizeof err);
    if (cnt < 0 || !text) {
        fprintf(out, "ERR %s\n", err);
    } else {
        for (long i = 0; i < cnt; i++) fprintf(out, i ? " %d" : "%d", (int)ids[i]);
        fputc('|', out);
        for (long i = 0; i < cnt; i++) fprintf(out, i ? " %d" : "%d", (int)mask[i]);
        fputc('|', out);
        for (const char *p = text; *p; p++) fprintf(out, "%02x", (unsigned char)*p);
        fputc('\n', out);
    }
    free(text), free(ids), free(mask), free(m);
    cJSON_Delete(j);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: chatdump FOLDER TEMPLATE_NAME IN OUT\n");
        return 2;
    }
    FILE *in = fopen(argv[3], "r"), *out = fopen(argv[4], "w");
    if (!in || !out) {
        perror("chatdump");
        return 1;
    }
    char err[600];
    ct_tokenizer *tok = NULL;
    ct_chat_template *t = NULL;
    if (ct_tokenizer_load(&tok, argv[1], err, sizeof err) ||
        ct_chat_template_load(&t, argv[1], argv[2], tok, err, sizeof err)) {
        fprintf(out, "ERR %s\n", err);
        fclose(out), fclose(in);
        ct_tokenizer_free(tok);
        return 0;
    }
    int32_t stop[4];
    int ns = ct_chat_template_stop_ids(t, stop, 4);
    fprintf(out, "%s|", ct_chat_template_name(t));
    for (int i = 0; i < ns && i < 4; i++) fprintf(out, i ? " %d" : "%d", (int)stop[i]);
    fprintf(out, "|%s\n", ct_chat_template_describe(t));
    char *line = NULL;
    size_t lcap = 0;
    ssize_t ln;
    while ((ln = getline(&line, &lcap, in)) > 0) {
        if (line[ln - 1] == '\n') line[--ln] = 0;
        if (ln) request(out, t, tok, line);
    }
    free(line);
    fclose(in), fclose(out);
    ct_chat_template_free(t);
    ct_tokenizer_free(tok);
    return 0;
}
