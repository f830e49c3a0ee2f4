/* prepare.c — the `prepare` verb across ranks: checks and the tokenizer on every rank, one run id
 * (rank 0's, broadcast) naming the shard folders, the ranks' sums through comm, one report. */
#include "prepare.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "data.h"
#include "run.h"

static int allreduce_u64(void *user, uint64_t *buf, size_t n) { return ct_comm_allreduce_sum_u64(user, buf, n); }

/* Worker threads per rank: the config's, else the node's cores shared among its ranks. */
static int threads_per_rank(const ct_config *cfg, ct_comm *comm)
{
    if (cfg->data.prepare_threads > 0) return cfg->data.prepare_threads;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int t = (int)(cores / ct_comm_local_size(comm));
    return t > 0 ? t : 1;
}

/* Supervised JSON Lines in the model's tokenizer and chat template. */
static int prepare_supervised(const ct_config *cfg, char *err, size_t errlen)
{
    ct_tokenizer *tok = NULL;
    ct_chat_template *tpl = NULL;
    int rc = ct_run_tokenizer(cfg, NULL, &tok, err, errlen);
    if (rc == 0) rc = ct_run_chat_template(cfg, NULL, tok, &tpl, err, errlen);
    if (rc == 0) {
        ct_sft_opts o = {tok, tpl, cfg->data.train_on_prompt, cfg->data.packing};
        rc = ct_data_prepare_sft(cfg->data.text, cfg->data.train, cfg->data.val, cfg->data.val_fraction,
                                 cfg->data.seq_len, &o, err, errlen);
        if (rc == 0)
            printf("ctrain: %s: tokenizer %s, chat template %s (%s), packing %s\n", cfg->data.text,
                   ct_tokenizer_name(tok), ct_chat_template_name(tpl), ct_chat_template_describe(tpl),
                   o.packing && o.packing[0] ? o.packing : "masked");
    }
    ct_chat_template_free(tpl);
    ct_tokenizer_free(tok);
    return rc;
}

int ct_run_prepare(const ct_config *cfg, ct_comm *comm)
{
    char err[2048] = "";
    const int rank = ct_comm_rank(comm);
    int rc = -1;
    if (!cfg->data.text[0]) snprintf(err, sizeof err, "data.text: empty: name the text file, folder or glob to prepare");
    else if (!cfg->data.train[0]) snprintf(err, sizeof err, "data.train: empty: name the dataset to write");
    else if (!cfg->data.val[0]) snprintf(err, sizeof err, "data.val: empty: name the dataset to write");
    else rc = 0;
    if (ct_run_agree(comm, rc, err)) return -1;

    if (ct_data_text_is_sft(cfg->data.text, cfg->data.text_field)) {
        if (rank == 0) {
            rc = prepare_supervised(cfg, err, sizeof err);
            if (rc == 0) printf("ctrain: wrote %s and %s from %s\n", cfg->data.train, cfg->data.val, cfg->data.text);
        }
        return ct_run_agree(comm, rc, err);
    }

    if (cfg->data.packing[0] && strcmp(cfg->data.packing, "plain")) {
        snprintf(err, sizeof err, "data.packing: \"%s\" applies to supervised examples (prompt/response or messages); "
                 "%s holds text documents, which are packed plain", cfg->data.packing, cfg->data.text);
        return ct_run_agree(comm, -1, err);
    }
    ct_tokenizer *tok = NULL;
    rc = ct_run_tokenizer(cfg, NULL, &tok, err, sizeof err);
    if (ct_run_agree(comm, rc, err)) {
        ct_tokenizer_free(tok);
        return -1;
    }
    char id[40] = "";
    if (rank == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(id, sizeof id, "%llx%04x", (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec,
                 (unsigned)getpid() & 0xffff);
    }
    if (ct_comm_broadcast(comm, id, sizeof id, 0)) ct_run_die(comm, "prepare: the run id could not be broadcast");
    ct_prepare_opts o = {.text = cfg->data.text, .text_field = cfg->data.text_field, .train_path = cfg->data.train,
                         .val_path = cfg->data.val, .val_fraction = cfg->data.val_fraction, .tok = tok,
                         .chunk_bytes = (size_t)cfg->data.prepare_chunk_kb << 10,
                         .threads = threads_per_rank(cfg, comm), .rank = rank, .world = ct_comm_size(comm),
                         .run_id = id, .progress = rank == 0, .allreduce = allreduce_u64, .user = comm};
    ct_prepare_stats st;
    rc = ct_data_prepare(&o, &st, err, sizeof err);
    if (rc == 0 && rank == 0) {
        const char *names[2] = {cfg->data.train, cfg->data.val};
        for (int i = 0; i < 2; i++)
            printf("ctrain: wrote %s: %llu document%s, %llu tokens%s\n", names[i], (unsigned long long)st.docs[i],
                   st.docs[i] == 1 ? "" : "s", (unsigned long long)st.tokens[i],
                   st.shards[i] > 1 ? ", an index of shards" : "");
        printf("ctrain: from %s: %.1f MB of text in %.2f s (%.1f MB/s), tokenizer %s, %d rank%s x %d threads\n",
               cfg->data.text, (double)st.bytes / 1e6, st.seconds, st.seconds > 0 ? (double)st.bytes / 1e6 / st.seconds : 0,
               ct_tokenizer_name(tok), o.world, o.world > 1 ? "s" : "", o.threads);
    }
    ct_tokenizer_free(tok);
    return ct_run_agree(comm, rc, err);
}
