/* main.c — the ctrain command line: one verb per task, each with --help. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpt2.h"
#include "hf_gpt2.h"
#include "kernels.h"

typedef struct {
    const char *name;
    const char *usage;
    const char *help;
    int (*run)(int argc, char **argv);
} verb;

static int fail(const char *msg)
{
    fprintf(stderr, "ctrain: error: %s\n", msg);
    return 1;
}

/* ctrain info MODEL_DIR: load a Hugging Face GPT-2 folder and describe it. */
static int cmd_info(int argc, char **argv)
{
    if (argc != 1) return fail("info takes one argument, a Hugging Face model folder (see ctrain info --help)");
    const char *dir = argv[0];
    char err[1024];
    ct_gpt2_config cfg;
    if (ct_hf_gpt2_read_config(dir, &cfg, err, sizeof err)) return fail(err);
    const ct_backend *be = ct_backend_cpu();
    ct_kctx *ctx = be->kctx_init(0);
    ct_gpt2 *m = NULL;
    if (ct_gpt2_init(&m, &cfg, be, ctx, 1, 1, err, sizeof err)) return fail(err);
    int rc = ct_hf_gpt2_load(m, dir, err, sizeof err);
    if (rc == 0) {
        printf("model      gpt2\n");
        printf("layers     %d\nheads      %d\nwidth      %d\nvocab      %d\npositions  %d\nln_eps     %g\n",
               cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.max_seq_len, cfg.ln_eps);
        printf("parameters %zu\n", ct_gpt2_count(m));
    }
    ct_gpt2_free(m);
    be->kctx_free(ctx);
    return rc ? fail(err) : 0;
}

static const verb verbs[] = {
    {"info", "ctrain info MODEL_DIR",
     "Loads a Hugging Face GPT-2 folder (config.json + model.safetensors), checks every tensor's\n"
     "name and shape against the config, and prints the architecture and parameter count.",
     cmd_info},
};
#define NVERBS (int)(sizeof verbs / sizeof verbs[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: ctrain VERB [ARGS]   (ctrain VERB --help for each)\n\nverbs:\n");
    for (int i = 0; i < NVERBS; i++) fprintf(f, "  %s\n", verbs[i].usage);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    for (int i = 0; i < NVERBS; i++) {
        if (strcmp(argv[1], verbs[i].name)) continue;
        for (int a = 2; a < argc; a++) {
            if (!strcmp(argv[a], "--help") || !strcmp(argv[a], "-h")) {
                printf("usage: %s\n\n%s\n", verbs[i].usage, verbs[i].help);
                return 0;
            }
        }
        return verbs[i].run(argc - 2, argv + 2);
    }
    fprintf(stderr, "ctrain: error: unknown verb '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
