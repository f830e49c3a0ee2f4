/* test_chat_template.c — chat templates (data/chat_template.c) on a byte-level tokenizer whose ids
 * are predictable (one token per byte, id = byte; added tokens from 256): the rendered text and
 * the exact ids and loss mask of ChatML (Qwen2.5's default system message), Llama-3.1's header,
 * Llama-2, Mistral's three system placements, Gemma and ctrain's plain template, with
 * add_generation_prompt and train_on_prompt; buffers reused across calls; then every error path:
 * unknown names and roles, roles out of order (with the message index and role), templates that
 * match no family or no variant of one, the end-of-turn token missing from the tokenizer, bos or
 * eos missing where the template writes them, malformed or odd tokenizer_config.json, invalid
 * UTF-8, no messages; and random mutations of the published templates, which must load or fail
 * cleanly, never crash. The published templates are read from tests/chat_templates/ (the test runs
 * in the source directory). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "data.h"

static const char *const ADDED[] = {"<|im_start|>",
                                    "<|im_end|>",
                                    "<|endoftext|>",
                                    "<|begin_of_text|>",
                                    "<|start_header_id|>",
                                    "<|end_header_id|>",
                                    "<|eot_id|>",
                                    "<s>",
                                    "</s>",
                                    "<bos>",
                                    "<eos>",
                                    "<start_of_turn>",
                                    "<end_of_turn>",
                                    "[INST]",
                                    "[/INST]"};
#define NADDED (int)(sizeof ADDED / sizeof *ADDED)

static void write_text(const char *name, const char *text)
{
    FILE *f = fopen(ct_test_path(name), "wb");
    if (!f || fputs(text, f) < 0) {
        perror(name);
        exit(2);
    }
    fclose(f);
}

/* GPT-2's byte -> character map of ByteLevel. */
static unsigned byte_char(int b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return (unsigned)b;
    int n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174)) n++;
    return 256u + (unsigned)n;
}

/* tokenizer.json: ByteLevel, one token per byte (id = byte), no merges, the added tokens from 256
 * (all when nadded < 0, else the first nadded). */
static void write_tokenizer(int nadded)
{
    if (nadded < 0) nadded = NADDED;
    size_t cap = 1 << 16;
    char *j = malloc(cap), *p = j;
    p += sprintf(p, "{\"added_tokens\":[");
    for (int i = 0; i < nadded; i++)
        p += sprintf(p, "%s{\"id\":%d,\"content\":\"%s\",\"special\":true,\"normalized\":false}", i ? "," : "", 256 + i,
                     ADDED[i]);
    p += sprintf(
        p, "],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
           "\"trim_offsets\":true,\"use_regex\":true},\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},"
           "\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for (int b = 0; b < 256; b++) p += sprintf(p, "%s\"\\u%04x\":%d", b ? "," : "", byte_char(b), b);
    p += sprintf(p, "},\"merges\":[]}}");
    write_text("tokenizer.json", j);
    free(j);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    char *s = calloc(1, 1 << 16);
    size_t n = fread(s, 1, (1 << 16) - 1, f);
    s[n] = 0;
    fclose(f);
    return s;
}

static char *json_string(const char *s)
{
    char *o = malloc(strlen(s) * 6 + 3), *p = o;
    *p++ = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            *p++ = '\\', *p++ = (char)c;
        else if (c < 0x20)
            p += sprintf(p, "\\u%04x", c);
        else
            *p++ = (char)c;
    }
    *p++ = '"', *p = 0;
    return o;
}

/* tokenizer_config.json with bos/eos (NULL: absent) and the template (NULL: none). */
static void write_config(const char *bos, const char *eos, const char *tmpl)
{
    char *t = tmpl ? json_string(tmpl) : NULL;
    size_t n = 256 + (t ? strlen(t) : 0);
    char *c = malloc(n);
    int k = sprintf(c, "{\"tokenizer_class\":\"PreTrainedTokenizerFast\"");
    if (bos) k += sprintf(c + k, ",\"bos_token\":\"%s\"", bos);
    if (eos) k += sprintf(c + k, ",\"eos_token\":{\"content\":\"%s\"}", eos);
    if (t) k += sprintf(c + k, ",\"chat_template\":%s", t);
    sprintf(c + k, "}");
    write_text("tokenizer_config.json", c);
    free(c), free(t);
    unlink(ct_test_path("chat_template.jinja"));
}

static char *published(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "tests/chat_templates/%s.jinja", name);
    return read_text(path);
}

static ct_tokenizer *tok;
static ct_chat_template *load(const char *name, char *err, size_t errlen);

/* The published template `file` with bos/eos, loaded and checked to be recognised as `family`. */
static ct_chat_template *load_published(const char *file, const char *bos, const char *eos, const char *family)
{
    char err[512];
    char *tm = published(file);
    write_config(bos, eos, tm);
    free(tm);
    ct_chat_template *t = load("", err, sizeof err);
    CHECK(t && !strcmp(ct_chat_template_name(t), family));
    if (!t) fprintf(stderr, "%s: %s\n", file, err);
    return t;
}

static ct_chat_template *load(const char *name, char *err, size_t errlen)
{
    ct_tokenizer_free(tok);
    tok = NULL;
    if (ct_tokenizer_load(&tok, ct_test_path("tokenizer.json"), err, errlen)) {
        fprintf(stderr, "tokenizer: %s\n", err);
        exit(2);
    }
    ct_chat_template *t = NULL;
    err[0] = 0;
    if (ct_chat_template_load(&t, ct_test_dir, name, tok, err, errlen)) return NULL;
    return t;
}

/* Renders and checks the text, that the ids are its bytes (added tokens where they stand), and
 * the mask: `want_mask` marks the target bytes with '1' over the text ('0' elsewhere; an added
 * token is one token, masked as its first byte; freed here). */
static void check_render(ct_chat_template *t, const ct_chat_message *m, int n, int agp, const char *want_text,
                         char *want_mask)
{
    char err[512];
    char *text = ct_chat_render_text(t, m, n, agp, err, sizeof err);
    CHECK(text && !strcmp(text, want_text));
    if (text && strcmp(text, want_text)) fprintf(stderr, "  got  %s\n  want %s\n", text, want_text);
    int32_t *ids = NULL;
    uint8_t *mask = NULL;
    size_t cap = 0;
    long cnt = ct_chat_render(t, tok, m, n, agp, 0, &ids, &mask, &cap, err, sizeof err);
    CHECK(cnt > 0);
    size_t i = 0, k = 0, len = strlen(want_text);
    int ok = 1;
    while (i < len && cnt > 0) {
        int32_t want = (unsigned char)want_text[i];
        size_t step = 1;
        for (int a = 0; a < NADDED; a++)
            if (!strncmp(want_text + i, ADDED[a], strlen(ADDED[a])) && ct_tokenizer_id(tok, ADDED[a]) == 256 + a)
                want = 256 + a, step = strlen(ADDED[a]);
        if ((long)k >= cnt || ids[k] != want || mask[k] != (uint8_t)(want_mask[i] == '1')) {
            fprintf(stderr, "  token %zu (byte %zu): got id %d mask %d, want id %d mask %d\n", k, i,
                    (long)k < cnt ? ids[k] : -1, (long)k < cnt ? mask[k] : -1, want, want_mask[i] == '1');
            ok = 0;
            break;
        }
        i += step, k++;
    }
    CHECK(ok && (long)k == cnt);
    /* the same buffers again, with train_on_prompt: all but the first token */
    long c2 = ct_chat_render(t, tok, m, n, agp, 1, &ids, &mask, &cap, err, sizeof err);
    CHECK(c2 == cnt && mask[0] == 0);
    for (long q = 1; q < c2; q++) CHECK(mask[q] == 1);
    free(text), free(ids), free(mask), free(want_mask);
}

/* A mask string for text: '1' on the listed substrings' occurrences, in order from `from`. */
static char *mask_of(const char *text, const char *const *targets, int nt)
{
    size_t n = strlen(text);
    char *m = malloc(n + 1);
    memset(m, '0', n);
    m[n] = 0;
    const char *from = text;
    for (int i = 0; i < nt; i++) {
        const char *p = strstr(from, targets[i]);
        if (!p) {
            fprintf(stderr, "mask_of: %s not found\n", targets[i]);
            exit(2);
        }
        memset(m + (p - text), '1', strlen(targets[i]));
        from = p + strlen(targets[i]);
    }
    return m;
}

static const ct_chat_message CONV[] = {
    {"user", "Hi there"}, {"assistant", "  Hello!  "}, {"user", "Bye"}, {"assistant", "Bye."}};

static void test_chatml(void)
{
    char err[512];
    write_tokenizer(-1);
    ct_chat_template *t = load_published("qwen2.5-7b-instruct", NULL, "<|im_end|>", "chatml");
    if (!t) return;
    CHECK(strstr(ct_chat_template_describe(t), "You are Qwen, created by Alibaba Cloud."));
    const char *want =
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n  Hello!  <|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nBye.<|im_end|>\n";
    const char *tg[] = {"  Hello!  <|im_end|>", "Bye.<|im_end|>"};
    check_render(t, CONV, 4, 0, want, mask_of(want, tg, 2));
    /* a system message of its own replaces the default; the generation prompt */
    ct_chat_message sys[] = {{"system", "Be brief."}, {"user", "Q"}};
    const char *w2 = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n";
    check_render(t, sys, 2, 1, w2, mask_of(w2, NULL, 0));
    int32_t stop[4];
    CHECK(ct_chat_template_stop_ids(t, stop, 4) == 1 && stop[0] == 257);
    /* any order is fine for ChatML; an unknown role is not */
    ct_chat_message odd[] = {{"assistant", "a"}, {"assistant", "b"}, {"system", "s"}};
    int32_t *ids = NULL;
    uint8_t *mask = NULL;
    size_t cap = 0;
    CHECK(ct_chat_render(t, tok, odd, 3, 0, 0, &ids, &mask, &cap, err, sizeof err) > 0);
    ct_chat_message tool[] = {{"user", "a"}, {"tool", "b"}};
    CHECK(ct_chat_render(t, tok, tool, 2, 0, 0, &ids, &mask, &cap, err, sizeof err) < 0 &&
          strstr(err, "message 1 (tool): unknown role"));
    CHECK(ct_chat_render(t, tok, tool, 0, 0, 0, &ids, &mask, &cap, err, sizeof err) < 0 && strstr(err, "no messages"));
    ct_chat_message bad[] = {{"user", "ok \xff bad"}};
    CHECK(ct_chat_render(t, tok, bad, 1, 0, 0, &ids, &mask, &cap, err, sizeof err) < 0 && strstr(err, "invalid UTF-8"));
    free(ids), free(mask);
    ct_chat_template_free(t);
    ct_chat_template_free(NULL);
    /* the same template from chat_template.jinja, which wins over tokenizer_config.json's */
    char *q = published("qwen2.5-7b-instruct");
    write_config(NULL, "<|im_end|>", "{{ nothing }}");
    write_text("chat_template.jinja", q);
    t = load("", err, sizeof err);
    CHECK(t && strstr(ct_chat_template_describe(t), "chat_template.jinja"));
    ct_chat_template_free(t);
    unlink(ct_test_path("chat_template.jinja"));
    /* the end-of-turn token must be a token of the tokenizer */
    write_tokenizer(1);
    write_config(NULL, "<|im_end|>", q);
    CHECK(!load("", err, sizeof err) && strstr(err, "\"<|im_end|>\" is not one token"));
    free(q);
}

static void test_llama3(void)
{
    char err[512];
    write_tokenizer(-1);
    ct_chat_template *t = load_published("llama-3.2-3b-instruct", "<|begin_of_text|>", "<|eot_id|>", "llama3");
    if (!t) return;
    ct_chat_message m[] = {{"system", "  Be kind. \n"}, {"user", " Hi "}, {"assistant", "\u3000Hello\t"}};
    const char *want =
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
        "2023\nToday Date: 26 Jul 2024\n\nBe kind.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>";
    const char *tg[] = {"Hello<|eot_id|>"};
    check_render(t, m, 3, 0, want, mask_of(want, tg, 1));
    ct_chat_template_set_date(t, "01 Jan 2030");
    char *text = ct_chat_render_text(t, m, 1, 1, err, sizeof err);
    CHECK(
        text &&
        strstr(text, "Today Date: 01 Jan 2030\n\nBe kind.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"));
    free(text);
    ct_chat_template_free(t);
    /* the template writes bos_token: the folder must name one */
    char *l = published("llama-3.2-3b-instruct");
    write_config(NULL, "<|eot_id|>", l);
    CHECK(!load("", err, sizeof err) && strstr(err, "writes bos_token"));
    /* a chat_template list needs a "default" entry */
    write_text("tokenizer_config.json",
               "{\"bos_token\":\"<s>\",\"chat_template\":[{\"name\":\"tool_use\",\"template\":\"x\"}]}");
    CHECK(!load("", err, sizeof err) && strstr(err, "chat_template: a list of templates without a \"default\""));
    write_text("tokenizer_config.json", "{\"chat_template\": 3}");
    CHECK(!load("", err, sizeof err) && strstr(err, "chat_template: not a string"));
    write_text("tokenizer_config.json", "{\"chat_template\": \"x\",");
    CHECK(!load("", err, sizeof err) && strstr(err, "tokenizer_config.json: malformed JSON"));
    free(l);
}

static void test_inst(void)
{
    char err[512];
    write_tokenizer(-1);
    /* Llama-2: <<SYS>> in the first user message, BOS before every [INST], strip() */
    ct_chat_template *t = load_published("llama-2-13b-chat", "<s>", "</s>", "llama2");
    ct_chat_message m[] = {{"system", "S"}, {"user", " Hi "}, {"assistant", " A "}, {"user", "B"}, {"assistant", "C"}};
    const char *want = "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\n Hi [/INST] A </s><s>[INST] B [/INST] C </s>";
    const char *tg[] = {"A </s>", "C </s>"};
    if (t) check_render(t, m, 5, 0, want, mask_of(want, tg, 2));
    int32_t *ids = NULL;
    uint8_t *mask = NULL;
    size_t cap = 0;
    ct_chat_message two_users[] = {{"user", "a"}, {"assistant", "b"}, {"user", "c"}, {"user", "d"}};
    CHECK(t && ct_chat_render(t, tok, two_users, 4, 0, 0, &ids, &mask, &cap, err, sizeof err) < 0 &&
          strstr(err, "message 3 (user): Conversation roles must alternate user/assistant/user/assistant/..."));
    ct_chat_message late_sys[] = {{"user", "a"}, {"system", "b"}};
    CHECK(t && ct_chat_render(t, tok, late_sys, 2, 0, 0, &ids, &mask, &cap, err, sizeof err) < 0 &&
          strstr(err, "message 1 (system): a system message may only come first"));
    ct_chat_message first_asst[] = {{"assistant", "a"}};
    CHECK(t && ct_chat_render(t, tok, first_asst, 1, 0, 0, &ids, &mask, &cap, err, sizeof err) < 0 &&
          strstr(err, "message 0 (assistant)"));
    ct_chat_template_free(t);
    /* Mistral v0.1: no system message */
    t = load_published("mistral-7b-instruct-v0.1", "<s>", "</s>", "mistral");
    CHECK(t && ct_chat_render(t, tok, m, 5, 0, 0, &ids, &mask, &cap, err, sizeof err) < 0 &&
          strstr(err, "message 0 (system): Only user and assistant roles are supported!"));
    const char *w1 = "<s>[INST]  Hi  [/INST] A </s> [INST] B [/INST]C</s> ";
    const char *tg1[] = {" A </s>", "C</s>"};
    if (t) check_render(t, m + 1, 4, 0, w1, mask_of(w1, tg1, 2));
    ct_chat_template_free(t);
    /* v0.2: the system message before the first user message */
    t = load_published("mistral-7b-instruct-v0.2", "<s>", "</s>", "mistral");
    const char *w2 = "<s> [INST] S\n\n Hi  [/INST]  A </s> [INST] B [/INST] C</s>";
    const char *tg2[] = {" A </s>", "C</s>"};
    if (t) check_render(t, m, 5, 0, w2, mask_of(w2, tg2, 2));
    ct_chat_template_free(t);
    /* Nemo (v3): the system message before the last message, only when that is a user message */
    char *nm = published("mistral-nemo-instruct-2407");
    write_config("<s>", "</s>", nm);
    t = load("", err, sizeof err);
    const char *w3 = "<s>[INST] Hi [/INST] A </s>[INST]S\n\nB[/INST]";
    if (t) check_render(t, m, 4, 0, w3, mask_of(w3, (const char *const[]){" A </s>"}, 1));
    const char *w4 = "<s>[INST] Hi [/INST] A </s>[INST]B[/INST]C</s>";
    if (t) check_render(t, m, 5, 1, w4, mask_of(w4, (const char *const[]){" A </s>", "C</s>"}, 2));
    ct_chat_template_free(t);
    /* eos_token is needed */
    write_config("<s>", NULL, nm);
    CHECK(!load("", err, sizeof err) && strstr(err, "ends a reply with eos_token"));
    free(nm);
    free(ids), free(mask);
}

static void test_gemma_plain_names(void)
{
    char err[512];
    write_tokenizer(-1);
    ct_chat_template *t = load_published("gemma-2-2b-it", "<bos>", "<eos>", "gemma");
    const char *want =
        "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\nBye.<end_of_turn>\n<start_of_turn>model\n";
    const char *tg[] = {"Hello!<end_of_turn>", "Bye.<end_of_turn>"};
    if (t) check_render(t, CONV, 4, 1, want, mask_of(want, tg, 2));
    int32_t *ids = NULL;
    uint8_t *mask = NULL;
    size_t cap = 0;
    ct_chat_message sys[] = {{"system", "s"}, {"user", "u"}};
    CHECK(t && ct_chat_render(t, tok, sys, 2, 0, 0, &ids, &mask, &cap, err, sizeof err) < 0 &&
          strstr(err, "message 0 (system): System role not supported"));
    int32_t stop[4];
    CHECK(t && ct_chat_template_stop_ids(t, stop, 4) == 2 && stop[0] == 256 + 12 && stop[1] == 256 + 10);
    ct_chat_template_free(t);
    /* no template: plain, with eos_token after each reply */
    write_config(NULL, "</s>", NULL);
    t = load("", err, sizeof err);
    CHECK(t && !strcmp(ct_chat_template_name(t), "plain"));
    const char *wp = "### User:\nHi there\n### Assistant:\n  Hello!  </s>\n### User:\nBye\n### Assistant:\nBye.</s>\n";
    const char *tp[] = {"  Hello!  </s>", "Bye.</s>"};
    if (t) check_render(t, CONV, 4, 0, wp, mask_of(wp, tp, 2));
    ct_chat_template_free(t);
    /* no eos_token in the folder: the tokenizer's own eos ends each reply */
    write_config(NULL, NULL, NULL);
    t = load("", err, sizeof err);
    CHECK(t && ct_tokenizer_eos(tok) >= 0 && ct_chat_template_stop_ids(t, stop, 4) == 1 && stop[0] == ct_tokenizer_eos(tok));
    ct_chat_template_free(t);
    /* a key given twice (cJSON would read the first eos_token), a NUL that cuts the template short */
    write_text("tokenizer_config.json", "{\"eos_token\": \"</s>\", \"eos_token\": \"<|im_end|>\"}");
    CHECK(!load("", err, sizeof err) && strstr(err, "tokenizer_config.json: eos_token: key given twice"));
    write_text("tokenizer_config.json", "{\"chat_template\": \"{{ messages }}\\u0000{{ more }}\"}");
    CHECK(!load("", err, sizeof err) && strstr(err, "tokenizer_config.json: chat_template: holds \\u0000"));
    /* forced names: the builtin first forms */
    write_config("<s>", "</s>", NULL);
    t = load("mistral", err, sizeof err);
    const char *wm = "<s>[INST] Hi there [/INST]  Hello!  </s>[INST] Bye [/INST]Bye.</s>";
    if (t) check_render(t, CONV, 4, 0, wm, mask_of(wm, (const char *const[]){"  Hello!  </s>", "Bye.</s>"}, 2));
    ct_chat_template_free(t);
    write_config("<s>", "<|im_end|>", "{{ whatever }}");
    t = load("chatml", err, sizeof err);
    CHECK(t && strstr(ct_chat_template_describe(t), "builtin chatml"));
    ct_chat_template_free(t);
    /* unknown names and templates */
    CHECK(!load("vicuna", err, sizeof err) && strstr(err, "unknown template \"vicuna\"") &&
          strstr(err, "chatml, llama3, llama2, mistral, gemma, plain"));
    CHECK(!load("", err, sizeof err) && strstr(err, "does not recognise") && strstr(err, "data.chat_template"));
    /* a family's markers in an unknown shape (Qwen1.5's last message without <|im_end|>) */
    write_config(
        "<s>", "<|im_end|>",
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']}}{% if "
        "(loop.last and add_generation_prompt) or not loop.last %}{{ '<|im_end|>' + '\\n'}}{% endif %}{% endfor "
        "%}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
        "{% endif %}");
    CHECK(!load("", err, sizeof err) && strstr(err, "a chatml template (by its markers), but") &&
          strstr(err, "data.chat_template"));
    write_config(
        "<s>", "<|im_end|>",
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>' }}"
        "{% endif %}");
    CHECK(!load("", err, sizeof err) && strstr(err, "renders reasoning"));
    write_config("<s>", "<|im_end|>", "{{ 'unterminated }}");
    CHECK(!load("", err, sizeof err) && strstr(err, "not closed"));
    free(ids), free(mask);
}

/* Each published template with random bytes deleted, doubled or replaced by Jinja's punctuation:
 * loading fails with a message or succeeds, and a template that loads renders. */
static void test_fuzz(void)
{
    static const char *const files[] = {"qwen2.5-7b-instruct", "llama-3.2-3b-instruct",
                                        "llama-2-13b-chat",    "mistral-nemo-instruct-2407",
                                        "gemma-2-2b-it",       "mistral-7b-instruct-v0.2"};
    static const char punct[] = "{}%#-'\"\\[]|+ \n";
    uint64_t rng = 7;
    char err[512];
    int loaded = 0, failed = 0;
    write_tokenizer(-1);
    for (int f = 0; f < 6; f++) {
        char *src = published(files[f]);
        size_t n = strlen(src);
        char *buf = malloc(n + 64);
        for (int it = 0; it < 120; it++) {
            memcpy(buf, src, n + 1);
            size_t len = n;
            for (int k = 0; k < 1 + (int)(ct_test_rand_u64(&rng) % 4); k++) {
                size_t at = (size_t)(ct_test_rand_u64(&rng) % len);
                int op = (int)(ct_test_rand_u64(&rng) % 3);
                if (op == 0 && len > 1)
                    memmove(buf + at, buf + at + 1, len - at), len--;
                else if (op == 1)
                    memmove(buf + at + 1, buf + at, len - at + 1), len++;
                else
                    buf[at] = punct[ct_test_rand_u64(&rng) % (sizeof punct - 1)];
            }
            write_config("<s>", "</s>", buf);
            ct_chat_template *t = load("", err, sizeof err);
            if (!t) {
                CHECK(err[0]);
                failed++;
                continue;
            }
            loaded++;
            int32_t *ids = NULL;
            uint8_t *mask = NULL;
            size_t cap = 0;
            ct_chat_message sys[] = {{"system", "s"}, {"user", "u"}, {"assistant", "a"}};
            long c1 = ct_chat_render(t, tok, sys, 3, 1, 0, &ids, &mask, &cap, err, sizeof err);
            long c2 = ct_chat_render(t, tok, sys + 1, 2, 0, 0, &ids, &mask, &cap, err, sizeof err);
            CHECK(c1 != 0 && c2 > 0);
            free(ids), free(mask);
            ct_chat_template_free(t);
        }
        free(buf), free(src);
    }
    printf("fuzz: %d mutated templates loaded, %d refused\n", loaded, failed);
}

int main(void)
{
    ct_test_dir_create("ct_test_chat_template");
    test_chatml();
    test_llama3();
    test_inst();
    test_gemma_plain_names();
    test_fuzz();
    ct_tokenizer_free(tok);
    ct_test_dir_remove();
    return ct_test_finish("test_chat_template");
}
