/* test_config.c — configs: defaults, overrides, the saved config reloading to the same
 * struct, every kind of bad input giving an error that names the file and key, and the
 * learning-rate schedule. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "trainer.h"

static char dir[64];

static const char *write_config(const char *name, const char *text)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); exit(2); }
    fputs(text, f);
    fclose(f);
    return path;
}

/* Loads text (with overrides) and expects an error containing every needle. */
static void expect_error(const char *text, const char *const *ovs, int nov, const char *n1, const char *n2)
{
    ct_config c;
    char err[1024] = "";
    const char *path = write_config("bad.json", text);
    int rc = ct_config_load(&c, path, ovs, nov, err, sizeof err);
    CHECK(rc == -1);
    if (!strstr(err, n1) || (n2 && !strstr(err, n2))) {
        fprintf(stderr, "  for %s: error \"%s\" lacks \"%s\" / \"%s\"\n", text, err, n1, n2 ? n2 : "");
        ct_test_failures++;
    }
}

static void test_defaults_and_overrides(void)
{
    ct_config d, c;
    char err[1024];
    ct_config_defaults(&d);
    CHECK(ct_config_check(&d, err, sizeof err) == 0);
    CHECK(d.optim.lr == 1e-3 && d.parallel.zero_stage == 1 && !strcmp(d.optim.schedule, "cosine"));
    const char *path = write_config("ok.json", "{\"optim\": {\"lr\": 0.005, \"max_steps\": 30, \"warmup_steps\": 5},\n"
                                                " \"run\": {\"dir\": \"runs/x\"}}");
    const char *ovs[] = {"optim.lr=0.25", "run.dir=runs/y", "optim.schedule=\"linear\"", "run.seed=7",
                         "data.text=has=equals"};
    CHECK(ct_config_load(&c, path, ovs, 5, err, sizeof err) == 0);
    CHECK(c.optim.lr == 0.25 && c.optim.max_steps == 30 && !strcmp(c.run.dir, "runs/y"));
    CHECK(!strcmp(c.optim.schedule, "linear") && c.run.seed == 7 && !strcmp(c.data.text, "has=equals"));
    CHECK(c.model.n_embd == d.model.n_embd); /* untouched keys keep their defaults */

    /* the saved resolved config loads back to the same struct */
    char *json = ct_config_to_json(&c, 1);
    CHECK(json != NULL);
    ct_config back;
    CHECK(ct_config_load(&back, write_config("saved.json", json ? json : "{}"), NULL, 0, err, sizeof err) == 0);
    CHECK(!memcmp(&back, &c, sizeof c));
    free(json);
}

static void test_bad_input(void)
{
    expect_error("{\"optim\": {\"lr\": 0.1,}}", NULL, 0, "bad.json: malformed JSON at line 1, column", NULL);
    expect_error("{\n\"optim\": {\n\"lr\": 0.1\n\"max_steps\": 3}}", NULL, 0, "line 4, column 1", NULL);
    expect_error("{\"optim\": {\"lrr\": 0.1}}", NULL, 0, "unknown key 'optim.lrr'", "did you mean 'optim.lr'");
    expect_error("{\"optim\": {\"warmup\": 10}}", NULL, 0, "unknown key 'optim.warmup'",
                 "did you mean 'optim.warmup_steps'");
    expect_error("{\"optimizer\": {}}", NULL, 0, "unknown section 'optimizer'", "did you mean 'optim'");
    expect_error("{\"optim\": 3}", NULL, 0, "optim: expected an object", NULL);
    expect_error("[1]", NULL, 0, "expected a JSON object", NULL);
    expect_error("{\"optim\": {\"lr\": \"fast\"}}", NULL, 0, "bad.json: optim.lr: expected a number", NULL);
    expect_error("{\"optim\": {\"max_steps\": 2.5}}", NULL, 0, "optim.max_steps: expected a whole number", NULL);
    expect_error("{\"optim\": {\"lr\": -1}}", NULL, 0, "optim.lr: -1 is out of range", NULL);
    expect_error("{\"parallel\": {\"zero_stage\": 4}}", NULL, 0, "parallel.zero_stage: 4 is out of range", NULL);
    expect_error("{\"model\": {\"recompute\": \"all\"}}", NULL, 0, "model.recompute: \"all\" is not one of none|block",
                 NULL);
    expect_error("{\"model\": {\"loss_chunk\": -2}}", NULL, 0, "model.loss_chunk: -2 is out of range", NULL);
    expect_error("{\"log\": {\"peak_tflops\": -1}}", NULL, 0, "log.peak_tflops: -1 is out of range", NULL);
    expect_error("{\"run\": {\"dir\": 5}}", NULL, 0, "run.dir: expected a string", NULL);
    expect_error("{\"run\": {\"device\": \"tpu\"}}", NULL, 0, "run.device: \"tpu\" is not one of auto|cpu|cuda",
                 NULL);
    expect_error("{\"optim\": {\"lr\": 0.1, \"lr\": 0.2}}", NULL, 0, "bad.json: optim.lr: key given twice", NULL);
    /* a section given twice was merged, key by key; a NUL cut a string short (run.dir "a") */
    expect_error("{\"optim\": {\"lr\": 0.1}, \"optim\": {\"max_steps\": 3}}", NULL, 0, "bad.json: optim: key given twice",
                 NULL);
    expect_error("{\"run\": {\"dir\": \"a\\u0000b\"}}", NULL, 0, "bad.json: run.dir: holds \\u0000", NULL);
    expect_error("{\"run\": {\"dir\\u0000x\": \"a\"}}", NULL, 0, "bad.json: run.dir: the key holds \\u0000", NULL);
    const char *ov0[] = {"run.dir=\"a\\u0000b\""};
    expect_error("{}", ov0, 1, "--set run.dir=\"a\\u0000b\": holds \\u0000", NULL);
    expect_error("{\"optim\": {\"warmup_steps\": 50, \"max_steps\": 10}}", NULL, 0,
                 "bad.json: optim.warmup_steps: 50 is more than optim.max_steps", NULL);
    expect_error("{\"model\": {\"n_embd\": 100, \"n_head\": 3}}", NULL, 0, "model.n_embd", "multiple of model.n_head");
    expect_error("{\"data\": {\"seq_len\": 512}, \"model\": {\"max_seq_len\": 256}}", NULL, 0,
                 "data.seq_len: 512 does not fit", NULL);
    expect_error("{\"data\": {\"micro_batch\": 0}}", NULL, 0, "data.micro_batch: 0 is out of range", NULL);
    const char *ov1[] = {"optim.lr=abc"};
    expect_error("{}", ov1, 1, "--set optim.lr=abc: optim.lr: expected a number", NULL);
    const char *ov2[] = {"optim.lrate=1"};
    expect_error("{}", ov2, 1, "unknown key 'optim.lrate'", "did you mean 'optim.lr'");
    const char *ov3[] = {"novalue"};
    expect_error("{}", ov3, 1, "--set novalue: expected key.path=value", NULL);
    ct_config c;
    char err[1024] = "";
    CHECK(ct_config_load(&c, "/nonexistent/x.json", NULL, 0, err, sizeof err) == -1 &&
          strstr(err, "/nonexistent/x.json: cannot open"));
    /* the text form (a checkpoint's config attribute) reads the same way */
    CHECK(ct_config_parse(&c, "{\"run\": {\"seed\": 1, \"seed\": 2}}", "ckpt: config", err, sizeof err) == -1 &&
          strstr(err, "ckpt: config: run.seed: key given twice"));
    CHECK(ct_config_parse(&c, "{\"data\": {\"text\": \"x\\u0000\"}}", "ckpt: config", err, sizeof err) == -1 &&
          strstr(err, "ckpt: config: data.text: holds \\u0000"));
}

static void test_schedule(void)
{
    ct_config c;
    ct_config_defaults(&c);
    c.optim.lr = 1.0, c.optim.min_lr = 0.1, c.optim.warmup_steps = 10, c.optim.max_steps = 110;
    CHECK(fabsf(ct_lr_at(&c, 1) - 0.1f) < 1e-7f);
    CHECK(fabsf(ct_lr_at(&c, 10) - 1.0f) < 1e-7f);
    CHECK(fabsf(ct_lr_at(&c, 60) - 0.55f) < 1e-6f); /* cosine: half-way is the mean */
    CHECK(fabsf(ct_lr_at(&c, 110) - 0.1f) < 1e-6f);
    CHECK(ct_lr_at(&c, 30) > ct_lr_at(&c, 31));
    strcpy(c.optim.schedule, "linear");
    CHECK(fabsf(ct_lr_at(&c, 35) - (1.0f - 0.9f * 0.25f)) < 1e-6f);
    strcpy(c.optim.schedule, "constant");
    CHECK(ct_lr_at(&c, 100) == 1.0f && ct_lr_at(&c, 5) == 0.5f);
    c.optim.warmup_steps = 0;
    CHECK(ct_lr_at(&c, 1) == 1.0f);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/ct_config_XXXXXX");
    if (!mkdtemp(dir)) return 2;
    test_defaults_and_overrides();
    test_bad_input();
    test_schedule();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
    return ct_test_finish("test_config");
}
