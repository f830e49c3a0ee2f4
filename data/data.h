/* data.h — tokens in, batches out: the byte-level tokenizer, HDF5 token datasets, the
 * `prepare` step, and the loader that gives each rank its part of every global batch.
 *
 * Dataset layout (one HDF5 file): /tokens uint32 [n]; optional /loss_mask uint8 [n] (1: the
 * token counts as a target); optional /doc_offsets uint64 [ndocs] (start of each document);
 * attributes on the root group: "tokenizer" (string: a name, e.g. "bytes" or the tokenizer's
 * folder name), "tokenizer_digest" (string: 16 hex digits of ct_tokenizer_digest, or "bytes";
 * datasets written before it existed lack it: "bytes" is then assumed for tokenizer "bytes"),
 * "vocab_size" (int) and "packing" (string: plain | masked | none; absent: plain).
 * Errors fill err with "<file>: <dataset or attribute>: <what is wrong>" and return -1. */
#ifndef CT_DATA_H
#define CT_DATA_H

#include <stddef.h>
#include <stdint.h>

/* ---- byte-level tokenizer: token i < 256 is byte i; 256 is end-of-text */
#define CT_TOK_BYTES_EOT 256
#define CT_TOK_BYTES_VOCAB 257
#define CT_TOK_BYTES_DIGEST "bytes" /* its identity in datasets (it has no file to digest) */

/* Encodes len bytes of text into out[len] (one token per byte); returns len. */
size_t ct_tok_bytes_encode(const char *text, size_t len, int32_t *out);
/* Decodes n tokens into out (capacity cap bytes, NUL-terminated); end-of-text and tokens
 * outside the vocabulary are skipped. Returns the number of bytes written. */
size_t ct_tok_bytes_decode(const int32_t *tokens, size_t n, char *out, size_t cap);

/* ---- Hugging Face tokenizer.json, with ids identical to the `tokenizers` library's.
 * Supported: the BPE model (vocab; merges as "a b" or ["a", "b"]; ignore_merges; byte_fallback to
 * <0xXX>; unk_token; fuse_unk); normalizers NFC, Prepend, Replace, Sequence; pre-tokenizers
 * ByteLevel, Split (String or Regex pattern, every behavior, invert), Metaspace, Digits, Sequence;
 * added tokens (special or not; lstrip, rstrip, single_word; normalized false: matched on the raw
 * text, true: on the normalized text); post-processors TemplateProcessing (single sequences),
 * ByteLevel, Sequence; decoders ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence.
 * Anything else (another model, normalizer, pre-tokenizer, ...; BPE dropout,
 * continuing_subword_prefix, end_of_word_suffix; truncation; fixed padding) is refused at load with
 * an error naming it. Regexes run on PCRE2 (UTF + UCP, JIT) with \s as Oniguruma's White_Space. */
typedef struct ct_tokenizer ct_tokenizer;

/* path: a tokenizer.json file, or a folder holding tokenizer.json and, optionally,
 * tokenizer_config.json: when its tokenizer_class is LlamaTokenizer(Fast) or
 * CodeLlamaTokenizer(Fast), the post-processor is rebuilt as transformers 4.x does (BOS when
 * add_bos_token, default true; EOS when add_eos_token, default false; bos_token/eos_token name
 * them). transformers 5 no longer does this: it keeps tokenizer.json's post-processor. A file path
 * reads tokenizer.json alone. Errors: "<file>: <component or key>: <what>". */
int ct_tokenizer_load(ct_tokenizer **out, const char *path, char *err, size_t errlen);
void ct_tokenizer_free(ct_tokenizer *t);
int ct_tokenizer_vocab_size(const ct_tokenizer *t); /* max id + 1, added tokens included */
/* FNV-1a of tokenizer.json's bytes (and of the tokenizer_config.json overrides): for datasets to
 * name their tokenizer. */
uint64_t ct_tokenizer_digest(const ct_tokenizer *t);
/* Encodes text[len] (UTF-8) into (*ids)[0..count), *ids grown with realloc (*cap its capacity;
 * both may start as NULL/0, and one buffer serves call after call). add_special: apply the
 * post-processor (BOS/EOS). Returns the number of ids written, or -1 with err. Invalid UTF-8 is refused: "encode: invalid UTF-8 at byte N"
 * (N: the offset of the first byte of the first invalid sequence), nothing written. Thread-safe:
 * a loaded tokenizer is read-only, so several threads may encode with it at once. */
long ct_tokenizer_encode(const ct_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
                         size_t *cap, char *err, size_t errlen);
/* ids -> malloc'd NUL-terminated UTF-8 text, as tokenizers' decode(ids, skip_special_tokens).
 * An id outside the vocabulary (which tokenizers would silently drop) is an error: NULL, with
 * err naming the id and its position. */
char *ct_tokenizer_decode(const ct_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char *err,
                          size_t errlen);
/* The same, with the length in *len: the text may hold NUL bytes (a token of byte 0). */
char *ct_tokenizer_decode_n(const ct_tokenizer *t, const int32_t *ids, size_t n, int skip_special, size_t *len,
                            char *err, size_t errlen);
int ct_tokenizer_id(const ct_tokenizer *t, const char *token); /* -1 if absent */
/* The byte-level tokenizer behind the same API (a static object: ct_tokenizer_free ignores it):
 * encode gives one id per byte (any bytes, no UTF-8 check; add_special adds nothing, as GPT-2's
 * post-processor); eos is end-of-text (256); decode skips 256 with skip_special and writes
 * "<|endoftext|>" for it otherwise. */
const ct_tokenizer *ct_tokenizer_bytes(void);
int ct_tokenizer_is_bytes(const ct_tokenizer *t);
/* Its name: "bytes", or the folder's name (a file path: the name of the folder holding it). */
const char *ct_tokenizer_name(const ct_tokenizer *t);
/* The identity datasets record: 16 lowercase hex digits of the digest, or "bytes". */
void ct_tokenizer_digest_str(const ct_tokenizer *t, char out[17]);
/* End-of-sequence and beginning-of-sequence ids, or -1: tokenizer_config.json's eos_token /
 * bos_token when the folder has one (a string or {"content": ...}), else the post-processor's
 * last added token (eos) and first (bos); a tokenizer.json alone with neither: "<|endoftext|>"
 * if the vocabulary has it (GPT-2 style). The byte tokenizer: eos 256, no bos. */
int32_t ct_tokenizer_eos(const ct_tokenizer *t);
int32_t ct_tokenizer_bos(const ct_tokenizer *t);

/* ---- chat templates, rendered without Jinja, with ids identical to transformers'
 * apply_chat_template(messages, tokenize=True) (which tokenizes the rendered text without the
 * post-processor: BOS appears once, where the template writes it, or not at all).
 *
 * A model's template (Jinja) is recognised by its markers, as llama.cpp does: <|im_start|> ChatML;
 * <|start_header_id|> + <|end_header_id|> Llama-3; [INST] with <<SYS>> Llama-2, without it Mistral;
 * <start_of_turn> Gemma. Each family's variants are told apart by fingerprints of the template's
 * text, and what varies is read from that text: ChatML's default system message (Qwen2.5,
 * SmolLM2), Llama-3.1+'s "Cutting Knowledge Date" header and its fallback date_string, whether the
 * first message may be a system message and where it goes ([INST] variants: refused, in <<SYS>>,
 * before the first user message, or before the last one when that is the last message), the
 * spaces around [INST]/[/INST] and replies, trimming, where BOS goes. A template whose markers name a
 * family but whose shape matches none of its known variants is refused rather than rendered
 * approximately; so is a template that renders reasoning (<think>) and a ChatML one that also writes
 * eos_token. Rendering follows the template exactly, including its quirks (Llama-3 and Gemma
 * trim contents; Mistral's v3 templates put the system message only into a last user message).
 *
 * Role rules: roles are "system", "user" and "assistant" (anything else is an error naming the
 * message). ChatML and Llama-3 take any order. Llama-2, Mistral and Gemma require user/assistant
 * alternation starting with user after an optional first system message, and refuse a system
 * message elsewhere (where their Jinja would drop it silently or render it as a turn); Gemma and
 * Mistral v0.1 refuse a system message altogether. A conversation need not hold an assistant turn.
 *
 * The date in Llama-3.1+'s system header: transformers renders strftime_now("%d %b %Y") (today)
 * where the template asks for it (Llama-3.2), or the template's fixed date_string (3.1, 3.3). ctrain
 * renders the template's fallback literal date_string ("26 Jul 2024") so a dataset does not depend on
 * the day it was prepared; ct_chat_template_set_date changes it (apply_chat_template(...,
 * date_string=...) gives the same). */
typedef struct {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8 */
} ct_chat_message;
typedef struct ct_chat_template ct_chat_template;

/* dir: the model or tokenizer folder. Its template is chat_template.jinja if present, else
 * tokenizer_config.json's "chat_template" (a string, or a list of {"name", "template"} whose
 * "default" entry is taken); bos_token and eos_token (a string or {"content": ...}) come from
 * tokenizer_config.json, else special_tokens_map.json. name: "" recognises the folder's template
 * (a folder without one gets "plain"), or one of "chatml", "llama3", "llama2", "mistral", "gemma",
 * "plain" forces that family: with the folder's own details when its template is a known variant of
 * that family, else the family's first published form (ChatML without a default system message;
 * Llama-3 without the date header; Llama-2-chat; Mixtral-8x7B-Instruct-v0.1; Gemma-7b-it).
 * "plain" is ctrain's template for models without one: "### System:\n", "### User:\n" or
 * "### Assistant:\n", the content, "\n" per message, with eos_token after each assistant content,
 * after the ids the tokenizer's post-processor puts before a sequence (BOS, if any).
 * tok: the tokenizer render will be given. Errors ("<file>: <key>: <what>"): an unreadable or
 * malformed file; a template whose markers match no family, or match a family but no variant of it
 * (both say to set data.chat_template to one of the names above); an unknown name; the template's
 * end-of-turn marker (<|im_end|>, <|eot_id|>, <end_of_turn>, eos_token) missing or not one token;
 * bos_token or eos_token missing where the template writes it. */
int ct_chat_template_load(ct_chat_template **out, const char *dir, const char *name, const ct_tokenizer *tok,
                          char *err, size_t errlen);
void ct_chat_template_free(ct_chat_template *t); /* NULL is a no-op */
/* The family: "chatml", "llama3", "llama2", "mistral", "gemma" or "plain". */
const char *ct_chat_template_name(const ct_chat_template *t);
/* One line for logs: the family, the variant and what was read from the template, and its file. */
const char *ct_chat_template_describe(const ct_chat_template *t);
/* The date Llama-3.1+'s system header shows (any text, at most 63 bytes; longer is cut); other
 * families ignore it. Not thread-safe against a concurrent render. */
void ct_chat_template_set_date(ct_chat_template *t, const char *date);
/* Renders m[0..n) into (*ids)[0..count) and (*mask)[0..count), both grown with realloc to the
 * same capacity *cap (all may start as NULL/0; one pair of buffers serves call after call).
 * mask 1 marks a target the model learns: each assistant message's content and what the template
 * writes after it up to and including its end-of-turn token (e.g. "<|im_end|>"; Llama-2's
 * " </s>"), and nothing else. A token that straddles the start of an assistant content (e.g. a
 * SentencePiece "▁Sure" holding the template's space) is a target, as transformers'
 * return_assistant_tokens_mask counts every token overlapping a span. train_on_prompt: every token
 * but the very first is a target. add_generation_prompt appends the assistant header where the
 * template has one (ChatML, Llama-3, Gemma, plain; the [INST] families end a user turn with
 * [/INST] already), for generation. The ids are the tokenizer's encoding of the whole rendered text;
 * the mask comes from encoding it in pieces cut before the template's special tokens (checked to
 * give the same ids; where they do not, the mask is derived from prefixes of the whole text).
 * Returns the count, or -1 with err: "message I (ROLE): <what>" for a role out of place (with the
 * template's own message where it has one) or an unknown role; "message I (ROLE): invalid UTF-8 at
 * byte N"; no messages; out of memory. Thread-safe on one template and tokenizer, which
 * must be the one given at load. */
long ct_chat_render(const ct_chat_template *t, const ct_tokenizer *tok, const ct_chat_message *m, int n,
                    int add_generation_prompt, int train_on_prompt, int32_t **ids, uint8_t **mask, size_t *cap,
                    char *err, size_t errlen);
/* The rendered text itself (malloc'd, NUL-terminated), as apply_chat_template(tokenize=False)
 * gives it, except for "plain", whose leading post-processor ids are not text. Errors as above. */
char *ct_chat_render_text(const ct_chat_template *t, const ct_chat_message *m, int n, int add_generation_prompt,
                          char *err, size_t errlen);
/* The ids that end an assistant turn, for generation to stop at: the end-of-turn token first, then
 * eos_token when it is another single token. Writes at most max; returns how many there are. */
int ct_chat_template_stop_ids(const ct_chat_template *t, int32_t *ids, int max);

/* ---- token datasets */
typedef struct ct_dataset ct_dataset;

/* What a dataset says about itself (its root attributes). */
typedef struct {
    char tokenizer[256]; /* name */
    char digest[24];     /* ct_tokenizer_digest_str */
    int vocab_size;
    char packing[8];     /* plain | masked | none ("" written as plain) */
} ct_dataset_meta;
/* The meta of datasets that t makes, with that packing. */
void ct_dataset_meta_for(ct_dataset_meta *m, const ct_tokenizer *t, const char *packing);

/* Writes a dataset (to "<path>.tmp", renamed when complete; contiguous, uncompressed). loss_mask
 * and doc_offsets may be NULL. Refuses n = 0, a token >= vocab_size, an empty tokenizer name or
 * digest, doc_offsets that are not strictly increasing or not below n, and packing masked without
 * doc_offsets. On any error path is left as it was, and path.tmp is removed. */
int ct_dataset_write(const char *path, const uint32_t *tokens, size_t n, const uint8_t *loss_mask,
                     const uint64_t *doc_offsets, size_t ndocs, const ct_dataset_meta *meta, char *err,
                     size_t errlen);
/* Opens and validates a dataset: /tokens present, 1-D, an integer type (any width or sign,
 * as h5py writes numpy arrays: values are converted to uint32 on read, and one that does not
 * fit is a read error); /loss_mask (if any) 1-D, integer or bool, of the same length;
 * /doc_offsets (if any) 1-D integer, and present and not empty when packing is masked;
 * attributes present and sane (vocab_size in [1, INT_MAX]). */
int ct_dataset_open(ct_dataset **out, const char *path, char *err, size_t errlen);
void ct_dataset_close(ct_dataset *ds);
const char *ct_dataset_path(const ct_dataset *ds);
size_t ct_dataset_len(const ct_dataset *ds);
int ct_dataset_vocab_size(const ct_dataset *ds);
const char *ct_dataset_tokenizer(const ct_dataset *ds);
const ct_dataset_meta *ct_dataset_meta_of(const ct_dataset *ds);
int ct_dataset_has_mask(const ct_dataset *ds);
size_t ct_dataset_ndocs(const ct_dataset *ds); /* entries of /doc_offsets; 0 when it has none */
/* Reads tokens [start, start+n) (when tokens != NULL) and, when mask != NULL, their loss mask
 * (all 1 when the file has none). Reads only that range from the file. */
int ct_dataset_read(ct_dataset *ds, size_t start, size_t n, uint32_t *tokens, uint8_t *mask, char *err,
                    size_t errlen);
/* Reads n entries of /doc_offsets, those at first, first + stride, ... (stride 1: a range), and
 * only those, from the file. */
int ct_dataset_read_docs(ct_dataset *ds, size_t first, size_t n, size_t stride, uint64_t *out, char *err,
                         size_t errlen);

/* ---- prepare: a UTF-8 text file -> train and val datasets with the byte tokenizer. The text
 * is split at the line break nearest to (1 - val_fraction) of its length: before it is train,
 * after it val; each set is one document ending with end-of-text. Refuses an empty text or a
 * val_fraction outside (0, 1). The break itself ends train, and a break at the very end of the
 * text is no candidate; a text without inner line breaks is cut at the nearest UTF-8 character
 * boundary, and one too short for two non-empty parts is refused. */
int ct_data_prepare_text(const char *text_path, const char *train_path, const char *val_path, double val_fraction,
                         char *err, size_t errlen);

/* ---- prepare for supervised fine-tuning: JSON Lines -> packed train and val datasets in the
 * model's tokenizer and chat template, with a loss mask and doc_offsets.
 *
 * Input: one example per line (blank lines and a leading UTF-8 byte order mark are skipped),
 * either {"prompt": "...", "response": "..."} (a user turn and the assistant's answer) or
 * {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}. Other keys are
 * ignored; the two forms do not mix.
 *
 * Rendering: ct_chat_render with the template and tokenizer of opts: mask 1 on each assistant
 * turn's content and its end-of-turn token(s) (train_on_prompt: on every token but each
 * example's first), so the loader's targets (-1 where the mask is 0) teach exactly the answers
 * and where they stop.
 *
 * Packing (opts->packing, stored in the datasets): examples go into one stream per part in file
 * order, one document each (doc_offsets = each example's first token). With T = seq_len, the
 * loader reads window w as tokens [w*T, w*T + T]. "masked" (the default) and "plain": an example
 * that would straddle two windows instead starts at the next window start, the gap filled with
 * the tokenizer's eos (mask 0; it belongs to the preceding document); masked datasets make the
 * trainer keep examples from attending to each other and restart their positions. "none": every
 * example starts a window of its own. The stream's end is padded to a window boundary (length a
 * multiple of T, + 1), so the last window holds the last example. An example longer than T + 1
 * tokens is an error naming its line (never truncated: a cut response would teach the model to
 * stop mid-answer).
 *
 * Split: the last round(val_fraction * n) of the n examples, at least one and at most n - 1,
 * go to val, the rest to train. Both record the tokenizer (ct_dataset_meta_for).
 *
 * Errors ("<file>: line N: <field>: <what>"): a missing or empty file; malformed JSON (with the
 * column cJSON reports); a line that is not an object; neither or both forms; prompt, response,
 * messages[i].role or .content missing or of the wrong type; an unknown role; roles in an order
 * the template refuses; no response or assistant text (nothing to learn); a \u0000 escape or a
 * raw NUL byte; invalid UTF-8 (with a tokenizer.json); an example too long (above); fewer than 2
 * examples; val_fraction outside (0, 1); seq_len < 1; train_path equal to val_path. Nothing is
 * written on a parse error; if writing val fails, the new train file is removed again. */
typedef struct {
    const ct_tokenizer *tok;        /* the model's (ct_tokenizer_bytes() for byte models) */
    const ct_chat_template *chat;   /* ct_chat_template_load's */
    int train_on_prompt;
    const char *packing;            /* masked ("" or NULL) | plain | none */
} ct_sft_opts;
int ct_data_prepare_sft(const char *jsonl_path, const char *train_path, const char *val_path, double val_fraction,
                        int seq_len, const ct_sft_opts *opts, char *err, size_t errlen);

/* ---- loader
 * A dataset of n tokens holds W = (n - 1) / T windows of T+1 tokens (window w starts at w*T).
 * Each epoch visits the windows in a seeded random order (or in order, shuffle = 0). A global
 * batch is the next G = micro_batch * grad_accum * world windows of that order; within it,
 * rank r's micro-batch a (0 <= a < grad_accum) is windows [(a*world + r) * micro_batch, + micro_batch).
 * So the set of windows of a step does not depend on world size, only on G. An epoch ends when
 * fewer than G windows remain (the rest is skipped); the next starts with a new order. */
typedef struct {
    const char *path;
    int seq_len;      /* T */
    int micro_batch;  /* sequences per micro-batch */
    int grad_accum;   /* micro-batches per step on each rank */
    int rank, world;
    uint64_t seed;
    int shuffle;
    int vocab_size;   /* the model's: a token or dataset vocabulary beyond it is an error */
} ct_loader_opts;

typedef struct {
    uint64_t epoch;   /* 0-based */
    uint64_t step;    /* global batches taken in this epoch */
    int micro;        /* micro-batches of the current global batch taken on this rank */
} ct_loader_cursor;

typedef struct ct_loader ct_loader;

/* Errors: a missing or malformed file (packing "masked" without /doc_offsets among them), a
 * dataset vocabulary beyond the model's, a dataset with fewer than one global batch of windows
 * (message gives both counts). With masked packing it reads an index of /doc_offsets: every
 * ceil(ndocs / 65536)-th entry (at most 512 KiB), and then, per window, that many entries and
 * T + 1 more. */
int ct_loader_init(ct_loader **out, const ct_loader_opts *opts, char *err, size_t errlen);
void ct_loader_free(ct_loader *l);
/* The next micro-batch of this rank: tokens[B*T] inputs, targets[B*T] next tokens, -1 where
 * the target's loss mask is 0; pos[B*T] (may be NULL) the tokens' positions, for
 * ct_model_forward. With packing "masked" (ct_loader_masked) the positions restart at 0 at each
 * document start in the window (/doc_offsets; a document begun before the window starts at 0 in
 * it), and a target that begins a document is -1 (its input token belongs to the one before).
 * Otherwise pos is 0..T-1 in every row. A token beyond the model's vocabulary is an error naming
 * the file and position; so are /doc_offsets that are not increasing. On error the cursor does
 * not move. */
int ct_loader_next(ct_loader *l, int32_t *tokens, int32_t *targets, int32_t *pos, char *err, size_t errlen);
/* Whether the dataset's packing is "masked": its rows hold documents that must not see each
 * other, so the caller hands ct_loader_next's positions to the model (otherwise NULL will do). */
int ct_loader_masked(const ct_loader *l);
ct_loader_cursor ct_loader_tell(const ct_loader *l);
/* Continues exactly where a loader of the same dataset, seq_len, seed, shuffle and G stood at
 * tell. A cursor at a step boundary (micro 0) also moves between world sizes with the same G.
 * A micro or step beyond this loader's batch shape carries over into the next step or epoch. */
void ct_loader_seek(ct_loader *l, ct_loader_cursor c);
uint64_t ct_loader_windows(const ct_loader *l);        /* W */
uint64_t ct_loader_steps_per_epoch(const ct_loader *l); /* W / G */

#endif
