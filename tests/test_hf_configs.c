/* test_hf_configs.c — the config.json files of published models (tests/hf_configs/, which the
 * benchmarks use too: Llama-3.2-1B, Qwen2.5-0.5B, SmolLM2-135M, Mistral-7B-v0.1, as their Hugging
 * Face folders hold them) read into the shapes their model cards give, every key they carry
 * accepted; SmolLM2's parameter count. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "hf_config.h"
#include "model.h"
#include "safetensors.h"

typedef struct {
    const char *file, *model_type;
    int C, L, H, K, D, I, V, untied, qkv_bias, window, window_from, llama3, dtype;
    float eps;
    double theta, factor;
} want_t;

static const want_t wants[] = {
    {"llama-3.2-1b.json", "llama", 2048, 16, 32, 8, 64, 8192, 128256, 0, 0, 0, 0, 1, CT_DT_BF16, 1e-5f, 500000, 32},
    {"qwen2.5-0.5b.json", "qwen2", 896, 24, 14, 2, 64, 4864, 151936, 0, 1, 0, 0, 0, CT_DT_BF16, 1e-6f, 1e6, 0},
    {"smollm2-135m.json", "llama", 576, 30, 9, 3, 64, 1536, 49152, 0, 0, 0, 0, 0, CT_DT_BF16, 1e-5f, 100000, 0},
    {"mistral-7b-v0.1.json", "mistral", 4096, 32, 32, 8, 128, 14336, 32000, 1, 0, 4096, 0, 0, CT_DT_BF16, 1e-5f,
     10000, 0},
};

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/hf_configs";
    for (size_t i = 0; i < sizeof wants / sizeof wants[0]; i++) {
        const want_t *w = &wants[i];
        char path[1024], err[1024] = "";
        snprintf(path, sizeof path, "%s/%s", dir, w->file);
        FILE *f = fopen(path, "rb");
        char *text = calloc(1, 1 << 16);
        CHECK(f && text);
        if (!f || !text) return ct_test_finish("test_hf_configs");
        size_t got = fread(text, 1, (1 << 16) - 1, f);
        fclose(f);
        CHECK(got > 0);
        ct_model_config c;
        int rc = ct_hf_config_parse_text(text, path, &c, err, sizeof err);
        free(text);
        if (rc) fprintf(stderr, "%s: %s\n", w->file, err);
        CHECK(rc == 0);
        CHECK(!strcmp(c.model_type, w->model_type));
        CHECK(c.n_embd == w->C && c.n_layer == w->L && c.n_head == w->H && c.n_kv_head == w->K);
        CHECK(c.head_dim == w->D && c.n_inner == w->I && c.vocab_size == w->V);
        CHECK(c.untied == w->untied && c.qkv_bias == w->qkv_bias && !c.o_bias && !c.mlp_bias);
        CHECK(c.window == w->window && c.window_from == w->window_from);
        CHECK(c.norm_eps == w->eps && c.rope_theta == w->theta && c.dtype == w->dtype);
        CHECK(c.rope_llama3 == w->llama3 && (!w->llama3 || (c.rope_factor == w->factor && c.rope_low_freq == 1 &&
                                                          c.rope_high_freq == 4 && c.rope_orig_max == 8192)));
        if (ct_test_failures) fprintf(stderr, "  after %s\n", w->file);
        if (!strcmp(w->file, "smollm2-135m.json") && rc == 0) {
            /* transformers counts 134,515,008 parameters (the tied head once) */
            const ct_backend *be = ct_backend_cpu();
            ct_model *m = NULL;
            CHECK(ct_model_init(&m, &c, be, be->kctx_init(0), 1, 1, 1, err, sizeof err) == 0);
            if (m) CHECK(ct_model_count(m) == 134515008u);
            ct_model_free(m);
        }
    }
    return ct_test_finish("test_hf_configs");
}
