/* lora.h — LoRA fine-tuning as PEFT does it: which linear layers get adapters, their
 * initialisation, and adapters to and from PEFT's format; merging them into the base.
 *
 * A PEFT adapter folder holds adapter_config.json (peft_type "LORA", r, lora_alpha,
 * lora_dropout, target_modules, use_rslora, fan_in_fan_out true for GPT-2's Conv1D, false for nn.Linear) and
 * adapter_model.safetensors ("base_model.model.<module>.lora_A.weight" [r, in],
 * "...lora_B.weight" [out, r]). Errors name the file or config key and return -1. */
#ifndef CT_TRAIN_LORA_H
#define CT_TRAIN_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "model.h"

/* The adapter settings: from the config's lora section, or from a PEFT adapter_config.json. */
typedef struct {
    char targets[512]; /* comma-separated PEFT target_modules, or "all-linear" */
    int r;
    float alpha, dropout;
    int rslora;
} ct_lora_spec;

/* cfg's lora section; when lora.init_from names a PEFT folder, its adapter_config.json instead. */
int ct_lora_spec_from_config(const ct_config *cfg, ct_lora_spec *spec, char *err, size_t errlen);

/* Adds adapters to m as spec says: a target matches a module whose name equals it or ends with
 * "." + target (PEFT's rule; "c_proj" matches both attn.c_proj and mlp.c_proj); "all-linear"
 * is every linear of the blocks. A target that matches nothing is an error listing the module
 * names. A is initialised as PEFT does (Kaiming-uniform: U(-1/sqrt(in), 1/sqrt(in))) from
 * seed, B to zero. The base is frozen. */
int ct_lora_add(ct_model *m, const ct_lora_spec *spec, uint64_t seed, int shards, char *err, size_t errlen);
/* The same adapters, not initialised: for a model made by ct_model_init_counting (a memory plan). */
int ct_lora_attach(ct_model *m, const ct_lora_spec *spec, int shards, char *err, size_t errlen);

/* Reads a PEFT adapter_config.json. Keys that would change what PEFT computes and that ctrain
 * does not run (DoRA, bias, rank/alpha patterns, layer selection, exclusions, modules to save,
 * initialisations that rewrite the base, a newer PEFT's options when set) are refused naming the
 * key; the full table is in lora.c. */
int ct_lora_read_peft_config(const char *dir, ct_lora_spec *spec, char *err, size_t errlen);

/* The base a LoRA run trained on, recorded beside its adapters: ct_model_base_fingerprint in
 * adapter_model.safetensors' __metadata__ (which peft ignores), with the base's name
 * (model.init_from) for messages, and as the checkpoint attribute lora_base. */
#define CT_LORA_BASE_KEY "ctrain_base_fingerprint"
#define CT_LORA_BASE_NAME_KEY "ctrain_base_model"
/* 0 when recorded (may be NULL: nothing recorded, as in PEFT's own files) is m's base
 * fingerprint; else -1 with err "<where>: these adapters were trained on another base model ...". */
int ct_lora_check_base(ct_model *m, const char *recorded, const char *recorded_name, const char *where, char *err,
                       size_t errlen);
/* Loads adapter_model.safetensors of dir into m's adapters: its recorded base must be m's base
 * (ct_lora_check_base); every adapter of m must be there with its shape (errors name the tensor);
 * extra tensors are errors. */
int ct_lora_load_peft(ct_model *m, const char *dir, char *err, size_t errlen);
/* Writes adapter_config.json + adapter_model.safetensors that peft's PeftModel.from_pretrained
 * loads onto the base; base_model names the base (model.init_from) and its fingerprint goes into
 * the safetensors metadata. */
int ct_lora_save_peft(ct_model *m, const ct_lora_spec *spec, const char *base_model, const char *dir, char *err,
                      size_t errlen);

/* Folds every adapter into its base weight (W += scale * B . A) and removes nothing else:
 * afterwards ct_hf_save writes the merged model. */
int ct_lora_merge(ct_model *m, char *err, size_t errlen);

/* "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364", as PEFT's
 * print_trainable_parameters. */
void ct_lora_describe(ct_model *m, char *out, size_t n);

#endif
