/* data.h — tokens in, batches out: the byte-level tokenizer, HDF5 token datasets, the
 * `prepare` step, and the loader that gives each rank its part of every global batch.
 *
 * Dataset layout (one HDF5 file): /tokens uint32 [n]; optional /loss_mask uint8 [n] (1: the
 * token counts as a target); optional /doc_offsets uint64 [ndocs] (start of each document);
 * attributes on the root group: "tokenizer" (string: a name, e.g. "bytes" or the tokenizer's
 * folder name), "tokenizer_digest" (string: 16 hex digits of ct_tokenizer_digest, or "bytes";
 * datasets written before it existed lack it: "bytes" is then assumed for tokenizer "bytes"),
 * "vocab_size" (int) and "packing" (string: plain | masked | none; absent: plain). Or an index of
 * shards (see "prepare"): /shards, /shard_tokens, /shard_docs and the same attributes, read as the
 * concatenation of its shards by every ct_dataset function.
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
/* s[n] as valid UTF-8 (malloc'd, NUL-terminated; NULL when out of memory): each invalid sequence
 * replaced by U+FFFD as Rust's from_utf8_lossy does, e.g. bytes a byte-level model wrote. */
char *ct_utf8_lossy(const char *s, size_t n);
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
/* 1 when the post-processor ends every sequence (add_special) with the eos id; the byte tokenizer: 0. */
int ct_tokenizer_ends_with_eos(const ct_tokenizer *t);
/* The tokenizer.json it was read from ("" for the byte tokenizer), for messages. */
const char *ct_tokenizer_file(const ct_tokenizer *t);

/* ---- one text encoded in parts (a document too long to hold whole). part: CT_ENC_BEGIN when the
 * part begins the text (the post-processor's leading tokens with add_special, and the forms that
 * only a text's start gets: Metaspace prepend_scheme "first", a Prepend normalizer, ByteLevel
 * add_prefix_space, Metaspace's prepended replacement); CT_ENC_END when it ends the text (the
 * trailing tokens with add_special); a whole text is both (ct_tokenizer_encode). A part without
 * CT_ENC_BEGIN continues the text before it, which must have been cut where ct_tokenizer_cut_ok
 * allows: then the parts' ids, concatenated, are the ids of the whole text. Writes from
 * (*ids)[0], as ct_tokenizer_encode; the same errors. */
#define CT_ENC_BEGIN 1
#define CT_ENC_END 2
long ct_tokenizer_encode_more(const ct_tokenizer *t, const char *text, size_t len, int add_special, int part,
                              int32_t **ids, size_t *cap, char *err, size_t errlen);
/* 1 when text[0, n) may be encoded as text[0, p) and text[p, n): p follows a line feed that
 * follows a character other than white space, text[p] is a letter or digit (any script), no token
 * of the vocabulary or added token joins a line feed to what follows it, and no added token with
 * rstrip ends just before the line feed nor one with lstrip begins at p (text must hold the
 * longest such token's length around p, else 0). The pre-tokenizers'
 * patterns are assumed not to join a line feed to the letter after it (true of GPT-2's, Llama-3's,
 * Qwen2's; a Split pattern is run with the line feed in front to see whether it cuts there), and a
 * Replace normalizer's pattern not to match across it. The byte tokenizer: any 0 < p < n. With
 * text NULL: 0 when the tokenizer allows no cut in any text, else 1. */
int ct_tokenizer_cut_ok(const ct_tokenizer *t, const char *text, size_t n, size_t p);

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
 * digest, a loss_mask of zeros only, doc_offsets that are not strictly increasing or not below n,
 * and packing masked without doc_offsets. On any error path is left as it was, and path.tmp is removed. */
int ct_dataset_write(const char *path, const uint32_t *tokens, size_t n, const uint8_t *loss_mask,
                     const uint64_t *doc_offsets, size_t ndocs, const ct_dataset_meta *meta, char *err,
                     size_t errlen);
/* Opens and validates a dataset: a regular file (a FIFO would block); /tokens present, 1-D, an
 * integer type (any width or sign, as h5py writes numpy arrays: values are converted to uint32 on
 * read, and one that does not fit is a read error); /loss_mask (if any) 1-D, integer or bool, of
 * the same length, with at least one non-zero value (an index: in some shard); /doc_offsets (if
 * any) 1-D integer, and present and not empty when packing is masked; every one of them written
 * (HDF5 reads a dataset it allocated no storage for, a chunk never stored, a virtual dataset's
 * missing source or unmapped positions as zeros: each is refused; virtual datasets must map
 * contiguous ranges of existing, written, non-virtual sources over every position); attributes
 * present and sane (vocab_size in [1, INT_MAX]). */
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
 * (all 1 when the file has none). Reads only that range from the file (from an index: from the
 * shards that hold it). */
int ct_dataset_read(ct_dataset *ds, size_t start, size_t n, uint32_t *tokens, uint8_t *mask, char *err,
                    size_t errlen);
/* Reads n entries of /doc_offsets, those at first, first + stride, ... (stride 1: a range), and
 * only those, from the file. */
int ct_dataset_read_docs(ct_dataset *ds, size_t first, size_t n, size_t stride, uint64_t *out, char *err,
                         size_t errlen);
/* The shards of an index; 0 for a dataset of one file. */
size_t ct_dataset_shards(const ct_dataset *ds);
/* Writes an index (path.tmp, renamed when complete): shards[i] names a dataset file relative to
 * path's folder (or absolute) holding tokens[i] tokens and docs[i] /doc_offsets entries; meta is
 * what every shard says. The shards are not opened here (ct_dataset_open checks them). */
int ct_dataset_write_index(const char *path, const char *const *shards, const uint64_t *tokens,
                           const uint64_t *docs, size_t nshards, const ct_dataset_meta *meta, char *err,
                           size_t errlen);

/* ---- prepare: text in, train and val token datasets out, streaming and in parallel.
 *
 * Input (text): a text file, a .jsonl file, a folder (its .txt and .jsonl files, recursively, names
 * starting with '.' skipped) or a glob(3) pattern; the files in sorted path order, empty ones
 * skipped. A .txt file (any file not named .jsonl) is one document; each non-blank line of a
 * .jsonl file is one, the JSON object's string field text_field (a line that is not an object,
 * lacks the field, holds another type, \u0000 or a raw NUL byte, or is malformed is an error
 * "<file>: line N: ..."). A leading UTF-8 byte order mark of a .jsonl file is skipped.
 *
 * Documents: each is encoded with add_special (the post-processor's BOS/EOS) and, unless the
 * post-processor ends it with the tokenizer's eos (ct_tokenizer_ends_with_eos), eos appended, so
 * documents are always separated; a tokenizer without eos is an error naming its file. Invalid
 * UTF-8 is an error naming file and byte (line and byte within the text for .jsonl).
 *
 * Split, by documents: of N documents, nval = round(N * val_fraction) clamped to [1, N - 1] go to
 * val, evenly spread: document g (0-based, in input order) is val when
 * floor((g + 1) * nval / N) > floor(g * nval / N). A corpus of one document (one text file) is cut
 * instead at the line break nearest to (1 - val_fraction) of its bytes (the earlier on a tie; no
 * inner line break: the nearest character start), train before, val after, each then a document;
 * too short for two non-empty parts is an error, as is one .jsonl document.
 *
 * Streaming: the inputs, as one concatenated stream, are cut into chunks of chunk_bytes. A chunk
 * begins at the first document boundary at or after k * chunk_bytes: a file's start, a .jsonl
 * line's start, or inside a text file a place ct_tokenizer_cut_ok allows (there the parts are
 * encoded with ct_tokenizer_encode_more, so the ids are those of the whole document). A text is
 * also encoded in pieces of about 64 KiB cut the same way. Memory: each worker holds one chunk's
 * text, its tokens (4 bytes each, in buffers grown by a quarter at a time) and document offsets
 * (8 bytes each), so about threads x (chunk_bytes + 5 x tokens per chunk) + the tokenizer and a
 * cache of 3 MB per thread: with 16 MiB chunks about threads x 40 MB with a BPE tokenizer of about
 * 4 bytes per token, threads x 100 MB with the byte tokenizer, whatever the corpus size. Only two
 * things are held whole: a .jsonl line, and a stretch of a text file without a place to cut (no
 * line break between a non-space character and a letter or digit; CRLF text; a tokenizer whose
 * vocabulary joins a line feed to a letter).
 *
 * Parallel: chunk k is done by rank k mod world, on one of its `threads` worker threads. Every
 * chunk writes its train and val tokens (when it has any) as a dataset of its own, a shard:
 * "<train_path>-shards-<run_id>/<k>.h5" (and likewise for val). When a set has one shard, the shard
 * is renamed to its path (an ordinary dataset file); else the path becomes an index (below) of
 * the shards in chunk order. Shard folders of earlier runs beside the path are removed once the
 * new one is in place. So the result, as ct_dataset_open reads it (tokens, masks, doc_offsets), is
 * the same for any number of threads and ranks. All ranks must see the same file system.
 *
 * Index file: an HDF5 file without /tokens, holding /shards (1-D variable-length UTF-8 strings:
 * shard file names relative to the index's folder), /shard_tokens and /shard_docs (uint64 [nshards]:
 * each shard's tokens and /doc_offsets entries) and the dataset root attributes (tokenizer,
 * tokenizer_digest, vocab_size, packing) that every shard carries too.
 *
 * Failures: nothing is written to train_path or val_path unless everything succeeded; on any
 * failure the shards written so far are removed (by every rank, then the folders by rank 0). */
typedef struct {
    const char *text;         /* a file, folder or glob */
    const char *text_field;   /* NULL or "": "text" */
    const char *train_path, *val_path;
    double val_fraction;      /* in (0, 1) */
    const ct_tokenizer *tok;
    size_t chunk_bytes;       /* 0: CT_PREPARE_CHUNK */
    int threads;              /* worker threads of this rank; 0: the online cores */
    int rank, world;          /* world 0 is taken as 1 */
    const char *run_id;       /* names the shard folders, the same on every rank ([0-9a-z], at most 32
                               * characters); NULL: one is made (only with world 1) */
    int progress;             /* a progress line on stderr, at most once a second */
    /* world > 1: sums buf[n] over the ranks in place (every rank calls it equally often, from the
     * calling thread); returns 0, or -1 (then the job cannot go on) */
    int (*allreduce)(void *user, uint64_t *buf, size_t n);
    void *user;
} ct_prepare_opts;
#define CT_PREPARE_CHUNK ((size_t)16 << 20)

/* What was written ([0] train, [1] val). */
typedef struct {
    uint64_t docs[2], tokens[2], shards[2];
    uint64_t bytes;           /* of text read */
    double seconds;
} ct_prepare_stats;

/* Collective over the ranks when world > 1. Returns 0; -1 with err when this rank failed; -2 when
 * only another rank did (err says so; the failing rank has the message). stats may be NULL. */
int ct_data_prepare(const ct_prepare_opts *o, ct_prepare_stats *stats, char *err, size_t errlen);

/* 1 when text names one .jsonl file whose first non-blank line is an object with "messages" or
 * "prompt" and no text_field: supervised examples, for ct_data_prepare_sft. */
int ct_data_text_is_sft(const char *text, const char *text_field);

/* The byte tokenizer's prepare of one text file, one thread (ct_data_prepare): the file is cut at
 * the line break nearest to (1 - val_fraction) of its length; before it is train, after it val;
 * each set is one document ending with end-of-text. Refuses an empty text or a val_fraction
 * outside (0, 1). The break itself ends train, and a break at the very end of the text is no
 * candidate; a text without inner line breaks is cut at the nearest UTF-8 character boundary, and
 * one too short for two non-empty parts is refused. */
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
