/* act_memory.c — the activation memory of a GPT-2 124M and a Llama-3.2-1B shape at 4 x 1024
 * tokens, with and without model.recompute and model.loss_chunk, on the cpu backend and the
 * CUDA backend (its table where a device is visible, else its layout): ct_model_act_bytes, which
 * is what ct_model_init_memory allocates beyond the parameters and gradients
 * (tests/test_model_act.c checks that on small shapes; allocating these would take the memory
 * itself: the cpu backend zero-fills what it allocates).
 * usage: act_memory [--B n] [--T n] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_config.h"
#include "model.h"

/* The CUDA backend's attention statistics, as kernels/cuda/attention.cu lays them out (lse and D,
 * fp32 [B*NH, T] each), for a build or machine without a device, where its table is not handed
 * out: with bf16 storage, all ct_model_act_bytes reads of a backend. */
static size_t cuda_stats_len(int B, int T, int NH) { return 2 * (size_t)B * NH * T; }

int main(int argc, char **argv)
{
    int B = 4, T = 1024;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--B") && i + 1 < argc) B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--T") && i + 1 < argc) T = atoi(argv[++i]);
        else return fprintf(stderr, "usage: act_memory [--B n] [--T n]\n"), 2;
    }
    struct {
        const char *name;
        ct_model_config c;
    } shapes[] = {
        {"gpt2-124M", {.vocab_size = 50257, .max_seq_len = 1024, .n_layer = 12, .n_head = 12, .n_embd = 768,
                       .norm_eps = 1e-5f}},
        {"llama-3.2-1B", {.arch = ct_arch_by_name("llama"), .model_type = "llama", .vocab_size = 128256,
                          .max_seq_len = 131072, .n_layer = 16, .n_head = 32, .n_kv_head = 8, .head_dim = 64,
                          .n_embd = 2048, .n_inner = 8192, .norm_eps = 1e-5f, .rope_theta = 500000.0}},
    };
    static const struct {
        int recompute, loss_chunk;
        const char *name;
    } settings[] = {{CT_RECOMPUTE_NONE, 0, "none, 0"},
                    {CT_RECOMPUTE_BLOCK, 0, "block, 0"},
                    {CT_RECOMPUTE_NONE, CT_LOSS_CHUNK_AUTO, "none, auto"},
                    {CT_RECOMPUTE_BLOCK, CT_LOSS_CHUNK_AUTO, "block, auto"}};
    const ct_backend *backends[2] = {ct_backend_cpu(), ct_backend_cuda()};
    ct_backend cuda_layout = *ct_backend_cpu();
    if (!backends[1]) {
        cuda_layout.name = "cuda";
        cuda_layout.elem_size = 2;
        cuda_layout.attention_stats_len = cuda_stats_len;
        backends[1] = &cuda_layout;
    }
    printf("| model | backend | B x T | recompute, loss_chunk | loss rows | activations MiB | vs none, 0 |\n");
    printf("|---|---|---|---|---|---|---|\n");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        char err[512];
        if (ct_model_config_check(&shapes[s].c, err, sizeof err)) return fprintf(stderr, "%s\n", err), 1;
        for (int b = 0; b < 2; b++) {
            const ct_backend *be = backends[b];
            if (!be) continue;
            double base = 0;
            for (int k = 0; k < 4; k++) {
                const ct_model_config *c = &shapes[s].c;
                size_t bytes = ct_model_act_bytes(c, B, T, settings[k].recompute, settings[k].loss_chunk, be);
                double mib = (double)bytes / 1048576.0;
                if (k == 0) base = mib;
                printf("| %s | %s | %d x %d | %s | %d | %.1f | %.2fx |\n", shapes[s].name, be->name, B, T,
                       settings[k].name, ct_model_loss_rows(c, B * T, settings[k].loss_chunk, be->elem_size), mib,
                       mib / base);
            }
        }
    }
    return 0;
}
