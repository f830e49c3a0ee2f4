/* config.h — an experiment: one JSON file, validated, with every default in one table.
 *
 * Sections and keys: docs/DESIGN.md ("Formats"); `ctrain train --help` lists them all with
 * their defaults and meaning (ct_config_describe). Strings are fixed-size buffers so the
 * struct is plain data: copied, printed and saved whole. */
#ifndef CT_TRAIN_CONFIG_H
#define CT_TRAIN_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CT_PATH_MAX 1024

typedef struct {
    struct {
        char dir[CT_PATH_MAX];     /* run directory: metrics, resolved config, final weights */
        int64_t seed;
        char device[8];            /* auto | cpu | cuda */
    } run;
    struct {
        char init_from[CT_PATH_MAX]; /* "" (random init) or a Hugging Face model folder or checkpoint */
        char arch[8];              /* random init: gpt2 | llama */
        int vocab_size, max_seq_len, n_layer, n_head, n_embd;
        int n_kv_head, n_inner;    /* 0: n_head, 4 * n_embd */
        double rope_theta, norm_eps;
        int tie_embeddings;
        char recompute[8];         /* none | block: activation recompute (ct_model_memory) */
        int loss_chunk;            /* rows per chunk of the LM head and loss; 0: all; -1: auto */
    } model;
    struct {
        char text[CT_PATH_MAX];    /* `ctrain prepare` input: file, folder or glob */
        char text_field[64];       /* .jsonl documents: the field holding the text */
        char tokenizer[CT_PATH_MAX]; /* "" (the model's), "bytes", or a folder / tokenizer.json */
        char chat_template[16];    /* "" auto | chatml | llama3 | llama2 | mistral | gemma | plain */
        int train_on_prompt;
        char packing[8];           /* "" (by data kind) | masked | plain | none */
        double val_fraction;
        int prepare_threads;       /* 0: online cores / ranks on the node */
        int prepare_chunk_kb;
        char train[CT_PATH_MAX], val[CT_PATH_MAX];
        int seq_len, micro_batch;
    } data;
    struct {
        double lr, min_lr, weight_decay, beta1, beta2, eps, grad_clip;
        int max_steps, warmup_steps;
        char schedule[16];         /* cosine | linear | constant */
        int skip_nonfinite;        /* steps with a NaN/Inf loss or gradient norm skipped before the run stops */
    } optim;
    struct {
        int grad_accum, zero_stage;
        int overlap_comm;
    } parallel;
    struct {
        char targets[512];         /* "" (off), PEFT target_modules joined by commas, or "all-linear" */
        int r;
        double alpha, dropout;
        int rslora;                /* scale alpha / sqrt(r) instead of alpha / r */
        char init_from[CT_PATH_MAX]; /* a PEFT adapter folder to continue training */
    } lora;
    struct {
        int every;                 /* save every N steps (0: only at the end and on preemption) */
        int keep;                  /* newest checkpoints kept in run.dir */
        int allow_new_data;        /* a resume may change data.train, data.seq_len or the global batch */
    } checkpoint;
    struct {
        int every;                 /* a log line every N steps */
        int eval_every;            /* 0: only at the end */
        int eval_batches;          /* micro-batches per rank per evaluation; 0: the whole val set */
        double peak_tflops;        /* one rank's device peak for MFU; 0: the GPU's from a table, none on the CPU */
    } log;
    struct {
        char prompt[1024];
        char system[1024];         /* ctrain chat: the system message ("" none) */
        double temperature;
        int top_k, max_tokens;
        char format[8];            /* text (bytes) | ids (token ids, space-separated) */
    } sample;
} ct_config;

/* The defaults. */
void ct_config_defaults(ct_config *cfg);

/* Loads path over the defaults, then applies overrides "a.b=value" (JSON value, or a bare
 * string). On error fills err ("<file>: <key>: <what is wrong>", malformed JSON with line and
 * column, unknown keys with the nearest valid key) and returns -1. */
int ct_config_load(ct_config *cfg, const char *path, const char *const *overrides, int noverrides, char *err,
                   size_t errlen);

/* The same from JSON text (a checkpoint's saved config); name is used in messages. */
int ct_config_parse(ct_config *cfg, const char *text, const char *name, char *err, size_t errlen);

/* Cross-field checks (ranges are checked while loading): e.g. warmup_steps <= max_steps. */
int ct_config_check(const ct_config *cfg, char *err, size_t errlen);

/* The whole config as JSON, indented or on one line (malloc'd; caller frees); NULL when out
 * of memory. */
char *ct_config_to_json(const ct_config *cfg, int pretty);

/* Every key with its type, default and meaning, for --help. */
void ct_config_describe(FILE *f);

#endif
