/* report.c — `ctrain report`: runs' metrics.jsonl and ctrain.json as one HTML file of inline SVG
 * plots and config tables (report.h gives the plots' scaling). */
#include "report.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fail.h"
#include "json_check.h"
#include "json_file.h"
#include "write_file.h"

/* ---------------------------------------------------------------- a run's files */

typedef struct {
    double step, tokens, loss, lr, grad_norm, tokens_per_s, mfu, memory_gib; /* NaN: null or absent */
} train_row;

typedef struct {
    double step, tokens, val_loss;
} val_row;

typedef struct {
    char name[CT_PATH_MAX];
    train_row *t;
    size_t nt;
    val_row *v;
    size_t nv;
    cJSON *config; /* ctrain.json */
} run;

static void run_free(run *r)
{
    free(r->t);
    free(r->v);
    cJSON_Delete(r->config);
}

/* o[key]: a number, or NaN for null or (unless required) absent; -1 with err otherwise */
static int number(const cJSON *o, const char *key, int required, double *out, const char *where, char *err,
                  size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NAN;
    if (!v && required) return ct_fail(err, errlen, "%s: no \"%s\"", where, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) return ct_fail(err, errlen, "%s: \"%s\": expected a number or null", where, key);
    *out = v->valuedouble;
    return 0;
}

/* Grows *p (of *cap elements of size) to hold n; -1 when out of memory. */
static int grow(void **p, size_t *cap, size_t n, size_t size)
{
    if (n <= *cap) return 0;
    size_t c = *cap ? *cap * 2 : 256;
    void *q = realloc(*p, c * size);
    if (!q) return -1;
    *p = q, *cap = c;
    return 0;
}

/* One line of metrics.jsonl (text[len], its newline removed) into r. */
static int parse_line(run *r, char *text, size_t len, const char *where, size_t *capt, size_t *capv, char *err,
                      size_t errlen)
{
    cJSON *o = cJSON_ParseWithOpts(text, NULL, 1);
    if (!o) return ct_fail(err, errlen, "%s: malformed JSON", where);
    int rc = ct_json_check(text, len, o, where, err, errlen);
    double step;
    if (!rc && !cJSON_IsObject(o)) rc = ct_fail(err, errlen, "%s: not a JSON object", where);
    if (!rc) rc = number(o, "step", 1, &step, where, err, errlen);
    if (!rc && !(step >= 0 && step == floor(step)))
        rc = ct_fail(err, errlen, "%s: \"step\": expected a whole number >= 0", where);
    if (rc) {
    } else if (cJSON_GetObjectItemCaseSensitive(o, "loss")) {
        train_row w = {.step = step};
        rc = number(o, "loss", 1, &w.loss, where, err, errlen) || number(o, "tokens", 0, &w.tokens, where, err, errlen) ||
             number(o, "lr", 0, &w.lr, where, err, errlen) || number(o, "grad_norm", 0, &w.grad_norm, where, err, errlen) ||
             number(o, "tokens_per_s", 0, &w.tokens_per_s, where, err, errlen) ||
             number(o, "mfu", 0, &w.mfu, where, err, errlen) || number(o, "memory_gib", 0, &w.memory_gib, where, err, errlen)
                 ? -1 : 0;
        if (!rc && grow((void **)&r->t, capt, r->nt + 1, sizeof *r->t)) rc = ct_fail(err, errlen, "%s: out of memory", where);
        if (!rc) r->t[r->nt++] = w;
    } else if (cJSON_GetObjectItemCaseSensitive(o, "val_loss")) {
        val_row w = {.step = step, .tokens = NAN};
        rc = number(o, "val_loss", 1, &w.val_loss, where, err, errlen);
        if (!rc && grow((void **)&r->v, capv, r->nv + 1, sizeof *r->v)) rc = ct_fail(err, errlen, "%s: out of memory", where);
        if (!rc) r->v[r->nv++] = w;
    } else {
        rc = ct_fail(err, errlen, "%s: neither \"loss\" nor \"val_loss\"", where);
    }
    cJSON_Delete(o);
    return rc;
}

/* The tokens at step s: those of its line, else of the last line before it scaled to s. */
static double tokens_at(const run *r, double s)
{
    size_t lo = 0, hi = r->nt; /* the first row with step > s */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r->t[mid].step <= s) lo = mid + 1;
        else hi = mid;
    }
    if (!lo) return NAN;
    const train_row *w = &r->t[lo - 1];
    return w->step == s ? w->tokens : w->step > 0 ? w->tokens / w->step * s : NAN;
}

static int load_run(run *r, const char *dir, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", dir);
    for (size_t n = strlen(r->name); n > 1 && r->name[n - 1] == '/'; n--) r->name[n - 1] = 0;
    char path[CT_PATH_MAX + 32], where[CT_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/ctrain.json", r->name);
    if (!(r->config = ct_json_load(path, 1 << 20, err, errlen))) return -1;
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->name);
    FILE *f = fopen(path, "r");
    if (!f) return ct_fail(err, errlen, "%s: cannot open: %s (not a ctrain run directory?)", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, capt = 0, capv = 0;
    ssize_t n;
    int rc = 0;
    for (long no = 1; !rc && (n = getline(&line, &cap, f)) > 0; no++) {
        if (line[n - 1] != '\n') break; /* cut short: a run still writing, or a full disk */
        line[--n] = 0;
        snprintf(where, sizeof where, "%s: line %ld", path, no);
        rc = parse_line(r, line, (size_t)n, where, &capt, &capv, err, errlen);
    }
    if (!rc && ferror(f)) rc = ct_fail(err, errlen, "%s: read failed: %s", path, strerror(errno));
    free(line);
    fclose(f);
    for (size_t i = 0; i < r->nv; i++) r->v[i].tokens = tokens_at(r, r->v[i].step);
    return rc;
}

/* ---------------------------------------------------------------- output text */

typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} text;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void put(text *b, const char *fmt, ...)
{
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t c = b->cap ? b->cap : 1 << 16;
        while (c <= b->len + (size_t)n) c *= 2;
        char *q = realloc(b->s, c);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->s = q, b->cap = c;
    }
}

/* s with &, <, >, " escaped, for text and attribute values */
static void put_esc(text *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': put(b, "&amp;"); break;
        case '<': put(b, "&lt;"); break;
        case '>': put(b, "&gt;"); break;
        case '"': put(b, "&quot;"); break;
        default: put(b, "%c", *s);
        }
    }
}

/* Tableau 10: distinct, and readable on white */
static const char *const colours[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                      "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
#define COLOUR(i) colours[(i) % (int)(sizeof colours / sizeof colours[0])]

/* ---------------------------------------------------------------- plots */

enum { SVG_W = 600, SVG_H = 330, LEFT = 70, TOP = 14, WIDTH = 510, HEIGHT = 260 };

typedef struct {
    int run;
    const char *series; /* metrics.jsonl's key */
    int dashed;
    double *x, *y; /* decimated */
    size_t n;
} series;

/* a step of 1, 2 or 5 times a power of ten, near span / 5 */
static double nice_step(double span)
{
    double raw = span / 5, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

/* [*lo, *hi] widened to whole ticks; *step the tick spacing */
static void axis(double *lo, double *hi, double *step)
{
    if (!(*hi > *lo)) {
        double d = *lo ? fabs(*lo) * 0.1 : 1;
        *lo -= d, *hi += d;
    }
    *step = nice_step(*hi - *lo);
    *lo = floor(*lo / *step + 1e-9) * *step;
    *hi = ceil(*hi / *step - 1e-9) * *step;
}

/* a tick's label: k, M, G when the axis reaches big values (top: its largest magnitude, so every
 * tick has the same unit), as many decimals as the step needs, or a percentage */
static void tick_label(char *out, size_t n, double v, double step, double top, int percent)
{
    if (percent) v *= 100, step *= 100, top *= 100;
    double a = top, scale = 1;
    const char *unit = "";
    if (a >= 1e9) scale = 1e9, unit = "G";
    else if (a >= 1e6) scale = 1e6, unit = "M";
    else if (a >= 1e4) scale = 1e3, unit = "k";
    int dec = step / scale < 1 ? (int)ceil(-log10(step / scale) - 1e-9) : 0;
    if (fabs(v) < step * 1e-9) {
        snprintf(out, n, "0%s", percent ? "%" : "");
        return;
    }
    snprintf(out, n, "%.*f%s%s", dec > 12 ? 12 : dec, v / scale, unit, percent ? "%" : "");
}

static double px(double x, double lo, double hi) { return LEFT + (x - lo) / (hi - lo) * WIDTH; }
static double py(double y, double lo, double hi) { return TOP + HEIGHT - (y - lo) / (hi - lo) * HEIGHT; }

/* One series' polylines (a non-finite point ends one) and, for a dashed (val) series of at most
 * 100 points, a dot at each. */
static void put_series(text *b, const series *s, const run *runs, double x0, double x1, double y0, double y1)
{
    int open = 0;
    for (size_t i = 0; i <= s->n; i++) {
        int ok = i < s->n && isfinite(s->x[i]) && isfinite(s->y[i]);
        if (ok && !open) {
            put(b, "<polyline data-run=\"");
            put_esc(b, runs[s->run].name);
            put(b, "\" data-series=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.6\"%s points=\"", s->series,
                COLOUR(s->run), s->dashed ? " stroke-dasharray=\"6 3\"" : "");
            open = 1;
        } else if (!ok && open) {
            put(b, "\"/>\n");
            open = 0;
        }
        if (ok) put(b, "%s%.2f,%.2f", open == 2 ? " " : "", px(s->x[i], x0, x1), py(s->y[i], y0, y1)), open = 2;
    }
    for (size_t i = 0; s->dashed && s->n <= 100 && i < s->n; i++)
        if (isfinite(s->x[i]) && isfinite(s->y[i]))
            put(b, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"2.5\" fill=\"%s\"/>\n", px(s->x[i], x0, x1),
                py(s->y[i], y0, y1), COLOUR(s->run));
}

static void put_plot(text *b, const char *id, const char *title, const char *xlabel, const char *ylabel, int percent,
                     const series *ss, int ns, const run *runs)
{
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY, xs, ys;
    for (int k = 0; k < ns; k++)
        for (size_t i = 0; i < ss[k].n; i++)
            if (isfinite(ss[k].x[i]) && isfinite(ss[k].y[i])) {
                x0 = fmin(x0, ss[k].x[i]), x1 = fmax(x1, ss[k].x[i]);
                y0 = fmin(y0, ss[k].y[i]), y1 = fmax(y1, ss[k].y[i]);
            }
    if (!isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1; /* nothing to draw */
    axis(&x0, &x1, &xs);
    axis(&y0, &y1, &ys);
    put(b, "<figure><figcaption>%s</figcaption>\n<svg class=\"plot\" id=\"%s\" xmlns=\"http://www.w3.org/2000/svg\" "
        "viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" data-left=\"%d\" data-top=\"%d\" data-width=\"%d\" "
        "data-height=\"%d\" data-xmin=\"%.17g\" data-xmax=\"%.17g\" data-ymin=\"%.17g\" data-ymax=\"%.17g\">\n",
        title, id, SVG_W, SVG_H, SVG_W, SVG_H, LEFT, TOP, WIDTH, HEIGHT, x0, x1, y0, y1);
    put(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#fbfbfb\" stroke=\"#999\"/>\n", LEFT, TOP, WIDTH,
        HEIGHT);
    char l[64];
    for (double v = x0; v <= x1 + xs * 1e-6; v += xs) {
        double p = px(v, x0, x1);
        tick_label(l, sizeof l, v, xs, fmax(fabs(x0), fabs(x1)), 0);
        put(b, "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%d\" stroke=\"#e4e4e4\"/><text x=\"%.2f\" y=\"%d\" "
            "class=\"tick\" text-anchor=\"middle\">%s</text>\n", p, TOP, p, TOP + HEIGHT, p, TOP + HEIGHT + 16, l);
    }
    for (double v = y0; v <= y1 + ys * 1e-6; v += ys) {
        double p = py(v, y0, y1);
        tick_label(l, sizeof l, v, ys, fmax(fabs(y0), fabs(y1)), percent);
        put(b, "<line x1=\"%d\" y1=\"%.2f\" x2=\"%d\" y2=\"%.2f\" stroke=\"#e4e4e4\"/><text x=\"%d\" y=\"%.2f\" "
            "class=\"tick\" text-anchor=\"end\">%s</text>\n", LEFT, p, LEFT + WIDTH, p, LEFT - 6, p + 4, l);
    }
    put(b, "<text x=\"%d\" y=\"%d\" class=\"label\" text-anchor=\"middle\">%s</text>\n", LEFT + WIDTH / 2, SVG_H - 8,
        xlabel);
    put(b, "<text x=\"14\" y=\"%d\" class=\"label\" text-anchor=\"middle\" transform=\"rotate(-90 14 %d)\">%s</text>\n",
        TOP + HEIGHT / 2, TOP + HEIGHT / 2, ylabel);
    for (int k = 0; k < ns; k++) put_series(b, &ss[k], runs, x0, x1, y0, y1);
    put(b, "</svg></figure>\n");
}

/* Row field offsets of train_row, by metrics.jsonl key. */
static const struct {
    const char *key;
    size_t offset;
} fields[] = {
    {"loss", offsetof(train_row, loss)},
    {"lr", offsetof(train_row, lr)},
    {"grad_norm", offsetof(train_row, grad_norm)},
    {"tokens_per_s", offsetof(train_row, tokens_per_s)},
    {"mfu", offsetof(train_row, mfu)},
    {"memory_gib", offsetof(train_row, memory_gib)},
};

static size_t field(const char *key)
{
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!strcmp(fields[i].key, key)) return fields[i].offset;
    return 0;
}

/* rows base[n] of size stride, decimated (report.h); x and y at the given byte offsets */
static int decimate(series *s, const void *base, size_t n, size_t stride, size_t xoff, size_t yoff)
{
    size_t k = n > CT_REPORT_MAX_POINTS ? (n + CT_REPORT_MAX_POINTS - 1) / CT_REPORT_MAX_POINTS : 1;
    size_t m = n ? (n - 1) / k + 1 + ((n - 1) % k != 0) : 0;
    s->x = malloc((m ? m : 1) * sizeof(double));
    s->y = malloc((m ? m : 1) * sizeof(double));
    if (!s->x || !s->y) return -1;
    s->n = 0;
    for (size_t i = 0; i < n; i++) {
        if (i % k && i != n - 1) continue;
        const char *row = (const char *)base + i * stride;
        memcpy(&s->x[s->n], row + xoff, sizeof(double));
        memcpy(&s->y[s->n], row + yoff, sizeof(double));
        s->n++;
    }
    return 0;
}

/* A plot of key against steps (or tokens) for every run; loss adds the val loss, dashed. */
static int plot(text *b, const char *id, const char *title, const char *key, int by_tokens, const char *ylabel,
                int percent, const run *runs, int nr)
{
    series *ss = calloc(2 * (size_t)nr, sizeof *ss);
    int ns = 0, rc = ss ? 0 : -1;
    size_t x_t = by_tokens ? offsetof(train_row, tokens) : offsetof(train_row, step);
    size_t x_v = by_tokens ? offsetof(val_row, tokens) : offsetof(val_row, step);
    for (int r = 0; r < nr && !rc; r++) {
        ss[ns] = (series){.run = r, .series = key};
        rc = decimate(&ss[ns++], runs[r].t, runs[r].nt, sizeof(train_row), x_t, field(key));
        if (!rc && !strcmp(key, "loss")) {
            ss[ns] = (series){.run = r, .series = "val_loss", .dashed = 1};
            rc = decimate(&ss[ns++], runs[r].v, runs[r].nv, sizeof(val_row), x_v, offsetof(val_row, val_loss));
        }
    }
    if (!rc) put_plot(b, id, title, by_tokens ? "tokens" : "step", ylabel, percent, ss, ns, runs);
    for (int k = 0; k < ns; k++) free(ss[k].x), free(ss[k].y);
    free(ss);
    return rc;
}

/* whether any run logged a finite value of key */
static int logged(const run *runs, int nr, const char *key)
{
    size_t off = field(key);
    for (int r = 0; r < nr; r++)
        for (size_t i = 0; i < runs[r].nt; i++) {
            double v;
            memcpy(&v, (const char *)&runs[r].t[i] + off, sizeof v);
            if (isfinite(v)) return 1;
        }
    return 0;
}

/* ---------------------------------------------------------------- tables */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* median (or, with max, the largest) of the finite values of key; NaN when none */
static double summary_of(const run *r, const char *key, int max)
{
    size_t off = field(key), n = 0;
    double *v = malloc((r->nt ? r->nt : 1) * sizeof *v), out = NAN;
    for (size_t i = 0; v && i < r->nt; i++) {
        memcpy(&v[n], (const char *)&r->t[i] + off, sizeof *v);
        if (isfinite(v[n])) n++;
    }
    if (v && n) {
        qsort(v, n, sizeof *v, cmp_double);
        out = max ? v[n - 1] : v[n / 2];
    }
    free(v);
    return out;
}

static void put_cell(text *b, double v, const char *fmt, double scale)
{
    if (isfinite(v)) put(b, "<td>"), put(b, fmt, v * scale), put(b, "</td>");
    else put(b, "<td>&mdash;</td>");
}

static void put_legend(text *b, const run *runs, int nr)
{
    put(b, "<table class=\"runs\"><tr><th>run</th><th>last step</th><th>tokens</th><th>loss</th><th>val loss</th>"
        "<th>tokens/s (median)</th><th>MFU (median)</th><th>memory, GiB (max)</th></tr>\n");
    for (int r = 0; r < nr; r++) {
        const run *u = &runs[r];
        const train_row *last = u->nt ? &u->t[u->nt - 1] : NULL;
        put(b, "<tr><td class=\"run\"><svg width=\"28\" height=\"10\"><line x1=\"0\" y1=\"5\" x2=\"28\" y2=\"5\" "
            "stroke=\"%s\" stroke-width=\"3\"/></svg> ", COLOUR(r));
        put_esc(b, u->name);
        put(b, "</td>");
        put_cell(b, last ? last->step : NAN, "%.0f", 1);
        put_cell(b, last ? last->tokens : NAN, "%.0f", 1);
        put_cell(b, last ? last->loss : NAN, "%.4f", 1);
        put_cell(b, u->nv ? u->v[u->nv - 1].val_loss : NAN, "%.4f", 1);
        put_cell(b, summary_of(u, "tokens_per_s", 0), "%.0f", 1);
        put_cell(b, summary_of(u, "mfu", 0), "%.1f%%", 100);
        put_cell(b, summary_of(u, "memory_gib", 1), "%.3f", 1);
        put(b, "</tr>\n");
    }
    put(b, "</table>\n<p class=\"note\">Solid lines: training steps; dashed with dots: val loss. Each run keeps its "
        "colour in every plot.</p>\n");
}

/* The keys of every run's ctrain.json, flattened to "section.key" in first-seen order. */
typedef struct {
    char **keys;
    size_t n, cap;
} keyset;

static int add_keys(keyset *k, const cJSON *o, const char *prefix)
{
    for (const cJSON *c = o ? o->child : NULL; c; c = c->next) {
        char name[512];
        snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", c->string ? c->string : "?");
        if (cJSON_IsObject(c)) {
            if (add_keys(k, c, name)) return -1;
            continue;
        }
        size_t i = 0;
        while (i < k->n && strcmp(k->keys[i], name)) i++;
        if (i < k->n) continue;
        if (grow((void **)&k->keys, &k->cap, k->n + 1, sizeof *k->keys) || !(k->keys[k->n] = strdup(name))) return -1;
        k->n++;
    }
    return 0;
}

/* the value of a dotted key in o as text (malloc'd; strings without quotes but ""), NULL when absent */
static char *value_of(const cJSON *o, const char *key)
{
    char part[512];
    const char *p = key;
    while (o) {
        size_t n = strcspn(p, ".");
        snprintf(part, sizeof part, "%.*s", (int)n, p);
        o = cJSON_GetObjectItemCaseSensitive(o, part);
        if (!p[n]) break;
        p += n + 1;
    }
    if (!o || cJSON_IsObject(o)) return NULL;
    if (cJSON_IsString(o)) return strdup(*o->valuestring ? o->valuestring : "\"\""); /* "" shown, not blank */
    return cJSON_PrintUnformatted(o);
}

static void put_config_rows(text *b, const keyset *k, const run *runs, int nr, int differing)
{
    for (size_t i = 0; i < k->n; i++) {
        char *v0 = value_of(runs[0].config, k->keys[i]);
        int differs = 0;
        for (int r = 1; r < nr && !differs; r++) {
            char *v = value_of(runs[r].config, k->keys[i]);
            differs = !v0 != !v || (v && strcmp(v, v0));
            free(v);
        }
        free(v0);
        if (differs != differing) continue;
        put(b, "<tr%s><th>", differs ? " class=\"diff\"" : "");
        put_esc(b, k->keys[i]);
        put(b, "</th>");
        for (int r = 0; r < nr; r++) {
            char *v = value_of(runs[r].config, k->keys[i]);
            put(b, "<td>");
            if (v) put_esc(b, v);
            else put(b, "&mdash;");
            put(b, "</td>");
            free(v);
        }
        put(b, "</tr>\n");
    }
}

static int put_configs(text *b, const run *runs, int nr)
{
    keyset k = {0};
    int rc = 0;
    for (int r = 0; r < nr && !rc; r++) rc = add_keys(&k, runs[r].config, "");
    if (!rc) {
        put(b, "<h2>Configs (ctrain.json)</h2>\n<p class=\"note\">Keys whose values differ between the runs come "
            "first, highlighted; a dash: the run's config has no such key.</p>\n<table class=\"config\"><tr><th>key</th>");
        for (int r = 0; r < nr; r++) {
            put(b, "<th><span class=\"swatch\" style=\"background:%s\"></span>", COLOUR(r));
            put_esc(b, runs[r].name);
            put(b, "</th>");
        }
        put(b, "</tr>\n");
        put_config_rows(b, &k, runs, nr, 1);
        put_config_rows(b, &k, runs, nr, 0);
        put(b, "</table>\n");
    }
    for (size_t i = 0; i < k.n; i++) free(k.keys[i]);
    free(k.keys);
    return rc;
}

static const char style[] =
    "body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1260px}"
    "h1{font-size:20px;margin:0 0 12px}h2{font-size:16px;margin:28px 0 8px}"
    ".plots{display:flex;flex-wrap:wrap;gap:8px 20px}figure{margin:0}"
    "figcaption{font-weight:600;margin:6px 0 2px 70px}"
    "svg .tick{font-size:11px;fill:#555}svg .label{font-size:12px;fill:#333}"
    "table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;"
    "vertical-align:top}th{background:#f3f3f3}table.config th:first-child{font-family:monospace;font-weight:400}"
    "table.config td{font-family:monospace;max-width:360px;word-break:break-all}"
    "tr.diff td,tr.diff th{background:#fff1a8}.note{color:#666;font-size:12px}"
    ".swatch{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:-1px}";

int ct_report_write(const char *const *dirs, int n, const char *out, char *err, size_t errlen)
{
    run *runs = calloc((size_t)n, sizeof *runs);
    if (!runs) return ct_fail(err, errlen, "out of memory");
    int rc = 0;
    for (int r = 0; r < n && !rc; r++) rc = load_run(&runs[r], dirs[r], err, errlen);
    text b = {0};
    if (!rc) {
        put(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ctrain report</title>"
            "<style>%s</style></head><body>\n<h1>ctrain report: %d run%s</h1>\n", style, n, n > 1 ? "s" : "");
        put_legend(&b, runs, n);
        put(&b, "<div class=\"plots\">\n");
        rc = plot(&b, "loss_step", "Loss against steps", "loss", 0, "loss", 0, runs, n) ||
             plot(&b, "loss_tokens", "Loss against tokens", "loss", 1, "loss", 0, runs, n) ||
             plot(&b, "lr", "Learning rate", "lr", 0, "learning rate", 0, runs, n) ||
             plot(&b, "tokens_per_s", "Throughput", "tokens_per_s", 0, "tokens/s (all ranks)", 0, runs, n) ||
             plot(&b, "grad_norm", "Gradient norm (before clipping)", "grad_norm", 0, "global gradient norm", 0, runs, n) ||
             (logged(runs, n, "mfu") && plot(&b, "mfu", "Model FLOPs utilisation", "mfu", 0, "MFU", 1, runs, n)) ||
             (logged(runs, n, "memory_gib") &&
              plot(&b, "memory_gib", "Peak memory per rank (max over ranks)", "memory_gib", 0, "GiB", 0, runs, n))
                 ? -1 : 0;
        put(&b, "</div>\n");
        if (!rc) rc = put_configs(&b, runs, n);
        put(&b, "<p class=\"note\">Written by ctrain report from each run's metrics.jsonl and ctrain.json. Series of "
            "more than %d points show every k-th step and the last.</p>\n</body></html>\n", CT_REPORT_MAX_POINTS);
        if (rc || b.oom) rc = ct_fail(err, errlen, "%s: out of memory", out);
    }
    if (!rc) rc = ct_file_replace(out, b.s, b.len, err, errlen);
    free(b.s);
    for (int r = 0; r < n; r++) run_free(&runs[r]);
    free(runs);
    return rc;
}

int ct_report_main(int argc, char **argv)
{
    const char *out = "report.html";
    const char **dirs = calloc((size_t)argc + 1, sizeof *dirs);
    int n = 0;
    if (!dirs) return fprintf(stderr, "ctrain: error: out of memory\n"), 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (i + 1 == argc) {
                fprintf(stderr, "ctrain: error: report: %s needs a file name\n", a);
                free(dirs);
                return 1;
            }
            out = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "ctrain: error: report: unknown option '%s' (see ctrain report --help)\n", a);
            free(dirs);
            return 1;
        } else {
            dirs[n++] = a;
        }
    }
    if (!n) {
        fprintf(stderr, "ctrain: error: report: missing RUN_DIR (usage: ctrain report RUN_DIR [RUN_DIR...] [-o FILE])\n");
        free(dirs);
        return 1;
    }
    char err[CT_PATH_MAX + 512];
    int rc = ct_report_write(dirs, n, out, err, sizeof err);
    if (rc) fprintf(stderr, "ctrain: error: %s\n", err);
    else printf("ctrain: wrote %s (%d run%s)\n", out, n, n > 1 ? "s" : "");
    if (!rc && (fflush(stdout) != 0 || ferror(stdout)))
        rc = -1, fprintf(stderr, "ctrain: error: standard output: write failed: %s\n", strerror(errno ? errno : EIO));
    free(dirs);
    return rc ? 1 : 0;
}
