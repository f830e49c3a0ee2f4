/* refdump.c — runs ctrain's GPT-2 on given tokens and dumps what the reference test compares
 * against PyTorch: logits, the mean loss, and every parameter's gradient under its Hugging
 * Face name and layout.
 *
 * usage: ct_refdump MODEL_DIR TOKENS_TXT OUT.safetensors [--reinit SEED] [--export DIR] [--adamw LR WD]
 *        ct_refdump MODEL_DIR DATA.h5 OUT.safetensors --batch B T [...]
 *   TOKENS_TXT: "B T", then B*T input tokens, then B*T targets (-1: not counted)
 *   DATA.h5 (--batch B T): the first micro-batch the loader gives, windows 0..B-1 in order, with
 *     their positions when the dataset's packing is masked (packed documents); "pos" holds them
 *     (as floats, [B, T]; 0..T-1 in each row otherwise)
 *   --reinit SEED: replace the loaded weights by ctrain's own initialisation
 *   --export DIR: write the model (after --reinit) as a Hugging Face folder
 *   --adamw LR WD: then one AdamW step (betas 0.9, 0.999, eps 1e-8, weight decay WD on the
 *     tensors ctrain decays, no clipping) on the mean loss's gradient; "after.<name>" holds the
 *     updated weights
 * With a ctrain config (a .json path) as MODEL_DIR, the model is the one `ctrain eval` would use
 * (run.dir's trained model or adapters, else model.init_from + lora.init_from), and only logits
 * and loss are dumped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "data.h"
#include "model.h"
#include "hf_model.h"
#include "optim.h"
#include "run.h"
#include "safetensors.h"

/* Tensor i of base (a flat buffer in the model's layout, host fp32) in Hugging Face's layout. */
static void dump_all(const ct_model *m, const float *base, const char *prefix, int nt, ct_st_entry *e,
                     char (*names)[112], float **bufs)
{
    for (int i = 0; i < nt; i++) {
        const ct_param *p = ct_model_tensor(m, i);
        snprintf(names[i], sizeof names[i], "%s%s", prefix, p->name);
        bufs[i] = malloc(p->numel * sizeof(float));
        const float *g = base + p->offset;
        if (p->conv1d) { /* to Hugging Face's [in, out] */
            for (int r = 0; r < p->shape[0]; r++)
                for (int c = 0; c < p->shape[1]; c++) bufs[i][(size_t)c * p->shape[0] + r] = g[(size_t)r * p->shape[1] + c];
        } else {
            memcpy(bufs[i], g, p->numel * sizeof(float));
        }
        e[i] = (ct_st_entry){.name = names[i], .data = bufs[i], .ndim = p->ndim,
                             .shape = {p->conv1d ? p->shape[1] : p->shape[0], p->conv1d ? p->shape[0] : p->shape[1]}};
    }
}

static int die(const char *msg)
{
    fprintf(stderr, "ct_refdump: %s\n", msg);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 4) return die("usage: ct_refdump MODEL_DIR TOKENS_TXT OUT.safetensors [--reinit SEED] [--export DIR]");
    const char *model_dir = argv[1], *tokens_path = argv[2], *out_path = argv[3], *export_dir = NULL;
    long reinit = -1;
    double lr = -1, wd = 0;
    int B = 0, T = 0;
    for (int i = 4; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--reinit")) reinit = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--export")) export_dir = argv[i + 1];
        else if (!strcmp(argv[i], "--adamw") && i + 2 < argc) lr = atof(argv[i + 1]), wd = atof(argv[++i + 1]);
        else if (!strcmp(argv[i], "--batch") && i + 2 < argc) B = atoi(argv[i + 1]), T = atoi(argv[++i + 1]);
        else return die("unknown option");
    }
    char err[1024];
    size_t plen = strlen(tokens_path);
    const int from_data = plen > 3 && !strcmp(tokens_path + plen - 3, ".h5");
    int32_t *tokens = NULL, *targets = NULL, *pos = NULL;
    if (from_data) {
        if (B <= 0 || T <= 0) return die("a dataset needs --batch B T");
    } else {
        FILE *f = fopen(tokens_path, "r");
        if (!f || fscanf(f, "%d %d", &B, &T) != 2 || B <= 0 || T <= 0) return die("cannot read the tokens file");
        tokens = malloc(sizeof(int32_t) * B * T), targets = malloc(sizeof(int32_t) * B * T);
        for (int i = 0; i < B * T; i++)
            if (fscanf(f, "%d", &tokens[i]) != 1) return die("short tokens file");
        for (int i = 0; i < B * T; i++)
            if (fscanf(f, "%d", &targets[i]) != 1) return die("short tokens file");
        fclose(f);
    }

    const ct_backend *be = ct_backend_cpu();
    ct_kctx *ctx = be->kctx_init(0);
    ct_model *m;
    size_t len = strlen(model_dir);
    int from_config = len > 5 && !strcmp(model_dir + len - 5, ".json");
    if (from_config) {
        ct_config run;
        char from[2048];
        ct_comm *single = ct_comm_init_single();
        if (ct_config_load(&run, model_dir, NULL, 0, err, sizeof err) ||
            ct_run_model(&run, CT_WEIGHTS_TRAINED, be, ctx, B, T, 1, -1, single, &m, from, sizeof from, err, sizeof err))
            return die(err);
        ct_comm_free(single);
        fprintf(stderr, "ct_refdump: model %s\n", from);
    } else {
        ct_model_config mc;
        if (ct_hf_read_config(model_dir, &mc, err, sizeof err)) return die(err);
        if (ct_model_init(&m, &mc, be, ctx, B, T, 1, err, sizeof err)) return die(err);
        if (reinit >= 0) ct_model_init_weights(m, (uint64_t)reinit);
        else if (ct_hf_load(m, model_dir, err, sizeof err)) return die(err);
    }
    ct_model_config cfg = *ct_model_config_of(m);
    if (export_dir && ct_hf_save(m, export_dir, NULL, 0, err, sizeof err)) return die(err);
    float *pos_f = NULL;
    if (from_data) { /* windows 0..B-1 of the dataset, as ctrain eval reads them */
        ct_loader_opts o = {.path = tokens_path, .seq_len = T, .micro_batch = B, .grad_accum = 1, .rank = 0,
                            .world = 1, .shuffle = 0, .vocab_size = cfg.vocab_size};
        ct_loader *l;
        tokens = malloc(sizeof(int32_t) * B * T), targets = malloc(sizeof(int32_t) * B * T);
        int32_t *p = malloc(sizeof(int32_t) * B * T);
        pos_f = malloc(sizeof(float) * B * T);
        if (ct_loader_init(&l, &o, err, sizeof err) || ct_loader_next(l, tokens, targets, p, err, sizeof err))
            return die(err);
        for (int i = 0; i < B * T; i++) pos_f[i] = (float)p[i];
        if (ct_loader_masked(l)) pos = p;
        else free(p);
        ct_loader_free(l);
    }

    size_t nlogits = (size_t)B * T * cfg.vocab_size;
    float *logits = malloc(nlogits * sizeof(float));
    double loss_sum;
    long ntok;
    if (ct_model_forward(m, tokens, NULL, pos, B, T, 0.0f, NULL, NULL, err, sizeof err)) return die(err);
    const float *lg = ct_model_logits(m); /* cpu: host memory, fp32; rows padded */
    for (int i = 0; i < B * T; i++)
        memcpy(logits + (size_t)i * cfg.vocab_size, lg + (size_t)i * ct_model_logits_stride(m),
               (size_t)cfg.vocab_size * sizeof(float));
    long counted = 0;
    for (int i = 0; i < B * T; i++) counted += targets[i] >= 0;
    if (ct_model_forward(m, tokens, targets, pos, B, T, counted ? 1.0f / (float)counted : 0.0f, &loss_sum, &ntok, err,
                        sizeof err))
        return die(err);
    ct_model_zero_grad(m);
    ct_model_backward(m, NULL, NULL);
    float loss = (float)(loss_sum / (double)ntok);

    int nt = from_config ? 0 : ct_model_num_tensors(m); /* gradients: of the plain model only */
    int groups = lr >= 0 ? 2 : 1;
    ct_st_entry *e = calloc((size_t)nt * groups + 3, sizeof *e);
    char (*names)[112] = calloc((size_t)nt * groups, sizeof *names);
    float **bufs = calloc((size_t)nt * groups, sizeof *bufs);
    e[0] = (ct_st_entry){.name = "logits", .data = logits, .ndim = 3, .shape = {B, T, cfg.vocab_size}};
    e[1] = (ct_st_entry){.name = "loss", .data = &loss, .ndim = 1, .shape = {1}};
    dump_all(m, ct_model_grads(m), "grad.", nt, e + 2, names, bufs);
    if (lr >= 0) {
        ct_comm *single = ct_comm_init_single();
        ct_optim *o = NULL;
        ct_optim_hparams h = {.lr = (float)lr, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = (float)wd};
        float norm;
        if (ct_optim_init(&o, m, single, 0, 0, err, sizeof err) || ct_optim_step(o, &h, &norm)) return die(err);
        dump_all(m, ct_model_params(m), "after.", nt, e + 2 + nt, names + nt, bufs + nt);
        ct_optim_free(o);
        ct_comm_free(single);
    }
    nt *= groups;
    if (pos_f) e[nt + 2] = (ct_st_entry){.name = "pos", .data = pos_f, .ndim = 2, .shape = {B, T}};
    if (ct_st_write(out_path, e, nt + 2 + (pos_f != NULL), CT_DT_F32, NULL, err, sizeof err)) return die(err);
    printf("loss %.7f over %ld tokens\n", loss, ntok);
    for (int i = 0; i < nt; i++) free(bufs[i]);
    free(bufs);
    free(names);
    free(e);
    free(logits);
    free(tokens);
    free(targets);
    free(pos);
    free(pos_f);
    ct_model_free(m);
    be->kctx_free(ctx);
    return 0;
}
