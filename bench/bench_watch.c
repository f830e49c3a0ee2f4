/* bench_watch.c — what watching a run costs a step: one step's TensorBoard event (six scalars)
 * written and flushed, one sample of the peak memory (getrusage), the bytes a step adds to the
 * event file, and a resume's rewrite of a long run's file to its first half.
 *
 * usage: bench_watch DIR [STEPS]   (DIR: an empty or missing folder it may fill; default 100000) */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

#include "tfevents.h"
#include "watch.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_watch DIR [STEPS]\n");
        return 2;
    }
    const char *dir = argv[1];
    int n = argc > 2 ? atoi(argv[2]) : 100000;
    char err[1024];
    ct_tfevents *w;
    mkdir(dir, 0777);
    if (n < 2 || ct_tfevents_open(&w, dir, 0, err, sizeof err)) return fprintf(stderr, "bench_watch: %s\n", err), 1;
    double a = now();
    for (int s = 1; s <= n; s++) {
        ct_tb_scalar v[] = {{"train/loss", 3.0 + 1.0 / s}, {"train/lr", 1e-3},          {"train/grad_norm", 1.5},
                            {"train/tokens_per_s", 123456.7}, {"train/mfu", 0.41}, {"train/memory_gib", 12.3}};
        if (ct_tfevents_write(w, s, v, 6)) return perror(ct_tfevents_path(w)), 1;
    }
    double b = now(), sink = 0;
    for (int s = 0; s < n; s++) sink += ct_watch_memory_gib(ct_backend_cpu(), 0);
    double c = now();
    struct stat sb;
    if (stat(ct_tfevents_path(w), &sb) || ct_tfevents_close(w, err, sizeof err)) return fprintf(stderr, "bench_watch: %s\n", err), 1;
    double d = now();
    if (ct_tfevents_open(&w, dir, n / 2, err, sizeof err) || ct_tfevents_close(w, err, sizeof err))
        return fprintf(stderr, "bench_watch: %s\n", err), 1;
    double e = now();
    printf("%d steps: event written and flushed %.2f us a step, memory sampled %.2f us (%.2f GiB), %.1f bytes a "
           "step; a resume rewriting the %lld-byte file to its first half: %.3f s\n",
           n, (b - a) / n * 1e6, (c - b) / n * 1e6, sink / n, (double)sb.st_size / n, (long long)sb.st_size, e - d);
    return 0;
}
