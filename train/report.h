/* report.h — `ctrain report`: the metrics.jsonl and ctrain.json of one or more run directories as
 * one self-contained HTML file (inline SVG plots, no script, nothing fetched).
 *
 * Plots (each an <svg class="plot" id="...">): loss and val loss against steps (loss_step) and
 * against tokens (loss_tokens), learning rate (lr), throughput (tokens_per_s), gradient norm
 * (grad_norm) and, when a run logged them, MFU (mfu) and peak memory per rank (memory_gib); every
 * run overlaid in its own colour. Each line is a <polyline data-run="<run dir>" data-series="<key
 * of metrics.jsonl>" points="px,py ...">, the points in the SVG's user units:
 *     px = left + (x - xmin) / (xmax - xmin) * width
 *     py = top + height - (y - ymin) / (ymax - ymin) * height
 * with left, top, width, height, xmin, xmax, ymin, ymax the <svg>'s data-* attributes, printed
 * with two decimals. x is the step (tokens for loss_tokens: a val point takes the tokens of its
 * step's line); a series of more than CT_REPORT_MAX_POINTS points keeps rows 0, k, 2k, ... and the
 * last (k = ceil(n / CT_REPORT_MAX_POINTS)); a value that is null (not finite) ends a polyline
 * and the next finite one starts another. The resolved configs (ctrain.json) stand side by side,
 * the keys whose values differ first and highlighted. */
#ifndef CT_TRAIN_REPORT_H
#define CT_TRAIN_REPORT_H

#include <stddef.h>

#define CT_REPORT_MAX_POINTS 2000

/* Writes the report of dirs[n] to out (through "<out>.tmp", renamed: a failed write leaves no
 * half file). A run directory without metrics.jsonl or ctrain.json, or with a damaged line
 * (malformed JSON, no step, a value that is not a number or null) is an error naming the file
 * and line; a last line without its newline (a run still writing) is left out. -1 with err. */
int ct_report_write(const char *const *dirs, int n, const char *out, char *err, size_t errlen);

/* ctrain report RUN_DIR [RUN_DIR...] [-o FILE] (argv after the verb); the process's exit code. */
int ct_report_main(int argc, char **argv);

#endif
