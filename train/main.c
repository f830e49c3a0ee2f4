/* main.c — the ctrain command line: ctrain VERB CONFIG_OR_PATH [--set key=value]... */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "comm.h"
#include "config.h"
#include "data.h"
#include "eval.h"
#include "model.h"
#include "plan.h"
#include "prepare.h"
#include "hf_model.h"
#include "report.h"
#include "kernels.h"
#include "lora.h"
#include "run.h"
#include "sample.h"
#include "trainer.h"

#define MAX_OVERRIDES 64

/* A verb's arguments: one positional, then --set overrides. */
typedef struct {
    const char *path;
    const char *extra; /* a second positional argument, for verbs that take one */
    const char *overrides[MAX_OVERRIDES];
    int noverrides;
} args;

typedef struct {
    const char *name;
    const char *usage;
    const char *help;
    int takes_config; /* 1: the positional argument is a config, and --set applies; 2: two paths; 3: report's own */
    int (*run)(const args *a, ct_comm *comm);
} verb;

static int fail(const char *msg)
{
    fprintf(stderr, "ctrain: error: %s\n", msg);
    return 1;
}

/* Loads the config on every rank; the lowest failing rank reports. */
static int load_config(const args *a, ct_comm *comm, ct_config *cfg)
{
    char err[2048] = "";
    int rc = ct_config_load(cfg, a->path, a->overrides, a->noverrides, err, sizeof err);
    return ct_run_agree(comm, rc, err);
}

static int cmd_train(const args *a, ct_comm *comm)
{
    ct_config cfg;
    if (load_config(a, comm, &cfg)) return 1;
    return ct_train(&cfg, comm) ? 1 : 0;
}

/* The val set must be in the language of the model eval loaded (from: where its weights came from,
 * "<dir or file>[ + adapters ...]"). */
static int eval_data_matches(const ct_config *cfg, const char *from, char *err, size_t errlen)
{
    char dir[CT_PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s", from);
    dir[strcspn(dir, " ")] = 0;
    ct_tokenizer *tok = NULL;
    int rc = ct_run_tokenizer(cfg, dir, &tok, err, errlen) || ct_run_check_dataset(tok, "data.val", cfg->data.val, err, errlen);
    ct_tokenizer_free(tok);
    return rc ? -1 : 0;
}

static int cmd_eval(const args *a, ct_comm *comm)
{
    ct_config cfg;
    if (load_config(a, comm, &cfg)) return 1;
    ct_run_threads(comm);
    char err[2048] = "", from[CT_PATH_MAX + 64];
    const ct_backend *be = NULL;
    ct_kctx *ctx = NULL;
    int device;
    ct_model *m = NULL;
    ct_loader *val = NULL;
    int B = cfg.data.micro_batch, T = cfg.data.seq_len;
    int rc = -1;
    if (!cfg.data.val[0]) snprintf(err, sizeof err, "data.val: empty: name the HDF5 token dataset to evaluate on");
    else if (ct_run_backend(&cfg, comm, &be, &ctx, &device, err, sizeof err) == 0 &&
             ct_run_model(&cfg, CT_WEIGHTS_TRAINED, be, ctx, B, T, 1, -1, comm, &m, from, sizeof from, err, sizeof err) == 0 &&
             eval_data_matches(&cfg, from, err, sizeof err) == 0) {
        ct_loader_opts o = {.path = cfg.data.val, .seq_len = T, .micro_batch = B, .grad_accum = 1,
                            .rank = ct_comm_rank(comm), .world = ct_comm_size(comm), .seed = 0, .shuffle = 0,
                            .vocab_size = ct_model_config_of(m)->vocab_size};
        rc = ct_loader_init(&val, &o, err, sizeof err);
    }
    if (ct_run_agree(comm, rc, err) == 0) {
        double loss;
        if (ct_eval_loss(m, val, 0, B, T, comm, &loss, err, sizeof err)) ct_run_die(comm, err);
        /* the loss is reduced: every rank sees alike whether it is finite */
        rc = isfinite(loss) ? 0 : -1;
        if (ct_comm_rank(comm) == 0) {
            printf("model %s\nwindows %llu of %d tokens\n", from, (unsigned long long)ct_loader_windows(val), T + 1);
            if (rc == 0) printf("val_loss %.6f\n", loss);
            else
                fprintf(stderr, "ctrain: error: %s: val_loss %s on data.val \"%s\" is not finite: the model's weights "
                        "hold a NaN or Inf, or its outputs overflow\n", from, isnan(loss) ? "nan" : loss > 0 ? "inf" : "-inf",
                        cfg.data.val);
        }
    } else {
        rc = -1;
    }
    ct_loader_free(val);
    ct_model_free(m);
    if (ctx) be->kctx_free(ctx);
    return rc ? 1 : 0;
}

static int cmd_sample(const args *a, ct_comm *comm)
{
    ct_config cfg;
    if (load_config(a, comm, &cfg)) return 1;
    if (ct_comm_rank(comm) != 0) return 0; /* one text: rank 0 writes it */
    char err[2048];
    return ct_sample(&cfg, stdout, err, sizeof err) ? fail(err) : 0;
}

static int cmd_chat(const args *a, ct_comm *comm)
{
    ct_config cfg;
    if (load_config(a, comm, &cfg)) return 1;
    if (ct_comm_rank(comm) != 0) return 0; /* one conversation: rank 0 holds it */
    char err[2048];
    return ct_chat(&cfg, stdin, stdout, err, sizeof err) ? fail(err) : 0;
}

static int cmd_prepare(const args *a, ct_comm *comm)
{
    ct_config cfg;
    if (load_config(a, comm, &cfg)) return 1;
    return ct_run_prepare(&cfg, comm) ? 1 : 0;
}

static int cmd_info(const args *a, ct_comm *comm)
{
    char err[1024];
    ct_model_config cfg;
    if (ct_hf_read_config(a->path, &cfg, err, sizeof err)) return fail(err);
    const ct_backend *be = ct_backend_cpu();
    ct_kctx *ctx = be->kctx_init(0);
    ct_model *m = NULL;
    if (ct_model_init(&m, &cfg, be, ctx, 1, 1, 1, err, sizeof err)) return fail(err);
    int rc = ct_hf_load(m, a->path, err, sizeof err);
    if (rc == 0) {
        const ct_model_config *c = ct_model_config_of(m);
        printf("model      %s (%s family)\n", c->model_type, ct_model_arch_name(m));
        printf("layers     %d\nheads      %d (key/value %d, size %d)\nwidth      %d\nmlp        %d\nvocab      %d\n"
               "positions  %d\nnorm_eps   %g\nhead       %s\n",
               c->n_layer, c->n_head, c->n_kv_head, c->head_dim, c->n_embd, c->n_inner, c->vocab_size,
               c->max_seq_len, c->norm_eps, c->untied ? "untied" : "tied to the embedding");
        if (ct_model_has_rope(m))
            printf("rope       theta %g%s\nwindow     %d%s", c->rope_theta, c->rope_llama3 ? ", llama3 scaling" : "",
                   c->window, c->window ? "" : " (none)\n");
        if (c->window) printf(" (layers %d to %d)\n", c->window_from, c->n_layer - 1);
        printf("dtype      %s\n", c->dtype == 2 ? "bfloat16" : c->dtype == 1 ? "float16" : "float32");
        printf("parameters %zu\n", ct_model_count(m));
    }
    ct_model_free(m);
    be->kctx_free(ctx);
    return rc ? fail(err) : 0;
}

/* ctrain export CKPT OUT_DIR: a checkpoint's weights as a Hugging Face folder. */
static int cmd_export(const args *a, ct_comm *comm)
{
    if (!a->extra) return fail("export: missing OUT_DIR (usage: ctrain export CKPT OUT_DIR)");
    if (ct_comm_rank(comm) != 0) return 0;
    char err[2048];
    ct_model_config mc;
    if (ct_ckpt_read_config(a->path, &mc, err, sizeof err)) return fail(err);
    const ct_backend *be = ct_backend_cpu();
    ct_kctx *ctx = be->kctx_init(0);
    ct_model *m = NULL;
    /* a LoRA run's checkpoint holds adapters: its saved config says which */
    ct_config saved;
    ct_lora_spec spec;
    char *json = ct_ckpt_read_config_json(a->path, err, sizeof err);
    int rc = json ? ct_config_parse(&saved, json, a->path, err, sizeof err) : -1;
    free(json);
    int lora = rc == 0 && ct_run_lora(&saved);
    char from[CT_PATH_MAX + 128];
    if (rc == 0 && lora) {
        /* the base as the run had it (model.init_from): the adapters are checked against it and
         * the PEFT folder records it */
        rc = ct_lora_spec_from_config(&saved, &spec, err, sizeof err);
        if (rc == 0) rc = ct_run_model(&saved, CT_WEIGHTS_CONFIG, be, ctx, 1, 1, 1, -1, comm, &m, from, sizeof from, err,
                                       sizeof err);
    } else if (rc == 0) {
        rc = ct_model_init(&m, &mc, be, ctx, 1, 1, 1, err, sizeof err);
    }
    if (rc == 0) rc = ct_ckpt_read(a->path, m, NULL, NULL, comm, err, sizeof err);
    if (rc == 0) rc = lora ? ct_lora_save_peft(m, &spec, saved.model.init_from, a->extra, err, sizeof err)
                           : ct_hf_save(m, a->extra, ct_run_side_files(&saved), 0, err, sizeof err);
    if (rc == 0)
        printf("ctrain: wrote %s/%s from %s\n", a->extra,
               lora ? "adapter_model.safetensors and adapter_config.json" : "model.safetensors and config.json",
               a->path);
    ct_model_free(m);
    be->kctx_free(ctx);
    return rc ? fail(err) : 0;
}

/* ctrain merge CONFIG: the trained adapters folded into the base, as a full Hugging Face model. */
static int cmd_merge(const args *a, ct_comm *comm)
{
    ct_config cfg;
    if (load_config(a, comm, &cfg)) return 1;
    if (ct_comm_rank(comm) != 0) return 0;
    if (!ct_run_lora(&cfg)) return fail("merge: lora.targets is empty: the run has no adapters to merge");
    char err[2048], from[CT_PATH_MAX + 128], out[CT_PATH_MAX + 16];
    const ct_backend *be = ct_backend_cpu();
    ct_kctx *ctx = be->kctx_init(0);
    ct_model *m = NULL;
    snprintf(out, sizeof out, "%s/merged", cfg.run.dir);
    int rc = ct_run_model(&cfg, CT_WEIGHTS_TRAINED, be, ctx, 1, 1, 1, -1, comm, &m, from, sizeof from, err, sizeof err);
    if (rc == 0) rc = ct_lora_merge(m, err, sizeof err);
    if (rc == 0) rc = ct_hf_save(m, out, ct_run_side_files(&cfg), 0, err, sizeof err);
    if (rc == 0) printf("ctrain: merged %s into %s (model.safetensors, config.json)\n", from, out);
    ct_model_free(m);
    be->kctx_free(ctx);
    return rc ? fail(err) : 0;
}

static int cmd_plan(const args *a, ct_comm *comm)
{
    ct_config cfg;
    char err[2048] = "";
    if (load_config(a, comm, &cfg)) return 1;
    return ct_run_agree(comm, ct_plan_command(&cfg, comm, err, sizeof err), err) ? 1 : 0;
}

static const verb verbs[] = {
    {"train", "ctrain train CONFIG [--set key=value]...",
     "Trains the model the config describes on data.train, on every rank of the job (mpirun or srun;\n"
     "without a launcher, one rank). Writes run.dir/ctrain.json (the resolved config), run.dir/metrics.jsonl\n"
     "(one JSON object per step and per evaluation) and, at the end, run.dir/model.safetensors + config.json.\n"
     "A run.dir with a checkpoint resumes from it, with the same data, sequence length, global batch and model\n"
     "(checkpoint.allow_new_data lets the first three change). One job per run.dir (run.dir/ctrain.lock); a\n"
     "run.dir inside model.init_from or lora.init_from is refused, and nothing is written before every check\n"
     "has passed. A step whose loss or gradient norm is NaN or Inf is not applied and stops the run\n"
     "(optim.skip_nonfinite: skip that many first).",
     1, cmd_train},
    {"plan", "ctrain plan CONFIG [--set key=value]...",
     "Prints the memory each rank of `ctrain train CONFIG` will take, before allocating anything: weights,\n"
     "gradients, optimizer state, communication and unit buffers (ZeRO-2/3), activations and the process,\n"
     "the step's total and the peak (a GPU's memory on the cuda backend, else the host's); then the peak\n"
     "for 1 to 64 ranks at every ZeRO stage. Run it under the job's launcher for its world size. Exits 1,\n"
     "naming changes that fit, when the peak exceeds what is available (`train` checks the same at start).",
     1, cmd_plan},
    {"eval", "ctrain eval CONFIG [--set key=value]...",
     "Evaluates the model of run.dir (or model.init_from, a Hugging Face model folder) on the whole of\n"
     "data.val. The last line is `val_loss <float>`; a loss that is not finite (NaN, Inf) is an error.",
     1, cmd_eval},
    {"sample", "ctrain sample CONFIG [--set key=value]...",
     "Writes text from the model of run.dir (or model.init_from): sample.prompt continued for\n"
     "sample.max_tokens tokens at sample.temperature, from the sample.top_k most likely tokens.",
     1, cmd_sample},
    {"chat", "ctrain chat CONFIG [--set key=value]...",
     "Holds a conversation on the terminal with the model of run.dir (or model.init_from) in its chat\n"
     "template (data.chat_template, else the one its folder's tokenizer_config.json or chat_template.jinja\n"
     "holds): one message per line, the reply printed as it is generated, up to sample.max_tokens at\n"
     "sample.temperature and sample.top_k, stopping at the end of the turn. sample.system starts each\n"
     "conversation; /reset starts over, /exit (or the end of input) ends.",
     1, cmd_chat},
    {"prepare", "ctrain prepare CONFIG [--set key=value]...",
     "Turns data.text into the HDF5 token datasets data.train and data.val. data.text is a text file, a .jsonl\n"
     "file of documents (each line's string field data.text_field), a folder (its .txt and .jsonl files,\n"
     "recursively, in path order) or a glob. Each document is encoded with the tokenizer of data.tokenizer (a\n"
     "folder or tokenizer.json; \"bytes\"; \"\": model.init_from's tokenizer.json, else bytes), with its\n"
     "BOS/EOS and an eos after it unless the template ends with one. Of N documents, round(N x\n"
     "data.val_fraction) (at least 1) spread evenly become val; one text file is cut instead at the line break\n"
     "nearest (1 - data.val_fraction) of its length. The inputs stream in chunks of data.prepare_chunk_kb on\n"
     "data.prepare_threads threads per rank, and on every rank under mpirun or srun, with the same result;\n"
     "memory is about threads x 2.5 chunks (6 with the byte tokenizer). A set is one file, or an index of\n"
     "per-chunk shards in <data.train>-shards-<id>/ read as one dataset. Progress goes to stderr.\n"
     "A .jsonl file of {\"prompt\", \"response\"} or {\"messages\": [{\"role\", \"content\"}...]} examples:\n"
     "supervised data, rendered as \"### Prompt:\\n<prompt>\\n### Response:\\n<response><end-of-text>\" (messages:\n"
     "\"### User:\\n\", \"### Assistant:\\n\", \"### System:\\n\" headers), with a loss mask so only responses\n"
     "count, packed into windows of data.seq_len + 1 tokens without splitting an example; the last\n"
     "data.val_fraction of the examples become val.",
     1, cmd_prepare},
    {"export", "ctrain export CKPT OUT_DIR",
     "Writes the weights of an HDF5 checkpoint as a Hugging Face folder (model.safetensors +\n"
     "config.json) that transformers.GPT2LMHeadModel.from_pretrained loads; for a LoRA run's checkpoint,\n"
     "the adapters as a PEFT folder (adapter_config.json + adapter_model.safetensors).",
     2, cmd_export},
    {"merge", "ctrain merge CONFIG [--set key=value]...",
     "Folds the LoRA adapters of run.dir (or lora.init_from) into the base model.init_from and writes\n"
     "the merged model as a Hugging Face folder, run.dir/merged.",
     1, cmd_merge},
    {"info", "ctrain info MODEL_DIR",
     "Loads a Hugging Face model folder (config.json + model.safetensors), checks every tensor's\n"
     "name and shape against the config, and prints the architecture and parameter count.",
     0, cmd_info},
    {"report", "ctrain report RUN_DIR [RUN_DIR...] [-o FILE]",
     "Writes one self-contained HTML file (default report.html; inline SVG, no script, nothing fetched) of\n"
     "the runs' metrics.jsonl and ctrain.json: loss and val loss against steps and tokens, learning rate,\n"
     "throughput, gradient norm, MFU and memory where logged, every run overlaid in its own colour, and the\n"
     "resolved configs side by side with the keys that differ highlighted. A directory without\n"
     "metrics.jsonl or ctrain.json, or a damaged line, is an error naming the file and line.",
     3, NULL},
};
#define NVERBS (int)(sizeof verbs / sizeof verbs[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: ctrain VERB ARG [--set key=value]...   (ctrain VERB --help for each)\n\nverbs:\n");
    for (int i = 0; i < NVERBS; i++) fprintf(f, "  %s\n", verbs[i].usage);
}

/* Parses ARG [--set k=v | --set=k=v]...; returns -1 with a message on anything else. */
static int parse_args(const verb *v, int argc, char **argv, args *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--set") || !strncmp(s, "--set=", 6)) {
            const char *ov = s[5] == '=' ? s + 6 : (i + 1 < argc ? argv[++i] : NULL);
            const char *bad = v->takes_config != 1 ? "--set applies to verbs that take a config"
                              : !ov                     ? "--set needs key.path=value"
                              : a->noverrides == MAX_OVERRIDES ? "too many --set options" : NULL;
            if (bad) {
                fail(bad);
                return -1;
            }
            a->overrides[a->noverrides++] = ov;
        } else if (s[0] == '-' && s[1]) {
            fprintf(stderr, "ctrain: error: %s: unknown option '%s' (see ctrain %s --help)\n", v->name, s, v->name);
            return -1;
        } else if (!a->path) {
            a->path = s;
        } else if (v->takes_config == 2 && !a->extra) {
            a->extra = s;
        } else {
            fprintf(stderr, "ctrain: error: %s: unexpected argument '%s' (see ctrain %s --help)\n", v->name, s, v->name);
            return -1;
        }
    }
    if (!a->path) {
        fprintf(stderr, "ctrain: error: %s: missing %s (usage: %s)\n", v->name,
                v->takes_config == 1 ? "CONFIG" : v->takes_config == 2 ? "CKPT" : "MODEL_DIR", v->usage);
        return -1;
    }
    return 0;
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
    const verb *v = NULL;
    for (int i = 0; i < NVERBS; i++)
        if (!strcmp(argv[1], verbs[i].name)) v = &verbs[i];
    if (!v) {
        fprintf(stderr, "ctrain: error: unknown verb '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: %s\n\n%s\n", v->usage, v->help);
            if (v->takes_config == 1) {
                printf("\n");
                ct_config_describe(stdout);
            }
            return 0;
        }
    }
    /* a file-size limit (ulimit -f) must fail a write with EFBIG, which ctrain reports, not kill
     * the process in the middle of a checkpoint */
    signal(SIGXFSZ, SIG_IGN);
    if (v->takes_config == 3) return ct_report_main(argc - 2, argv + 2); /* run dirs and -o; no ranks */
    args a;
    if (parse_args(v, argc - 2, argv + 2, &a)) return 1;
    char err[1024];
    ct_comm *comm = NULL;
    if (ct_comm_init(&comm, &argc, &argv, err, sizeof err)) return fail(err);
    int rc = v->run(&a, comm);
    /* what a verb printed (a sample, val_loss, the log) reached stdout, which may be a file on a
     * full disk: a failed write is an error, not a success with lines missing */
    errno = 0;
    if ((fflush(stdout) != 0 || ferror(stdout)) && rc == 0) {
        fprintf(stderr, "ctrain: error: standard output: write failed: %s\n", strerror(errno ? errno : EIO));
        rc = 1;
    }
    ct_comm_free(comm);
    return rc;
}
