/* watch.c — MFU against a device's peak, peak memory per rank, checkpoint progress (watch.h). */
#include "watch.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#ifdef CTRAIN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

/* Dense (no structured sparsity) bf16 tensor-core TFLOP/s. Datasheets give the sparse figure
 * with an asterisk; the dense one is half of it. More specific names come first. */
static const struct {
    const char *name;   /* a whole word (or words) of the CUDA device name */
    double tflops;
    const char *source;
} peaks[] = {
    {"H100 PCIe", 756.5, "NVIDIA H100 Tensor Core GPU datasheet: H100 PCIe, BF16 1,513 TFLOPS with sparsity"},
    {"H100 NVL", 835.5, "NVIDIA H100 Tensor Core GPU datasheet: H100 NVL, BF16 1,671 TFLOPS with sparsity"},
    {"H100", 989.4, "NVIDIA H100 Tensor Core GPU datasheet: H100 SXM, BF16 1,979 TFLOPS with sparsity"},
    {"H200 NVL", 835.5, "NVIDIA H200 Tensor Core GPU datasheet: H200 NVL, BF16 1,671 TFLOPS with sparsity"},
    {"H200", 989.4, "NVIDIA H200 Tensor Core GPU datasheet: H200 SXM, BF16 1,979 TFLOPS with sparsity"},
    {"A100", 312.0, "NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS (624 with sparsity)"},
    {"A10", 125.0, "NVIDIA A10 Tensor Core GPU datasheet: BF16 125 TFLOPS (250 with sparsity)"},
    {"L40S", 362.05, "NVIDIA L40S GPU datasheet: BF16 362.05 TFLOPS (733 with sparsity)"},
    {"L40", 181.05, "NVIDIA L40 GPU datasheet: BF16 181.05 TFLOPS (362.1 with sparsity)"},
    {"L4", 121.0, "NVIDIA L4 Tensor Core GPU datasheet: BF16 242 TFLOPS with sparsity"},
};

/* needle in s as whole words: not preceded or followed by a letter or digit */
static int has_words(const char *s, const char *needle)
{
    size_t k = strlen(needle);
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle)) {
        int before = p > s && ((p[-1] >= 'A' && p[-1] <= 'Z') || (p[-1] >= 'a' && p[-1] <= 'z') ||
                               (p[-1] >= '0' && p[-1] <= '9'));
        char c = p[k];
        int after = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!before && !after) return 1;
    }
    return 0;
}

double ct_watch_peak_tflops(const char *device_name, const char **source)
{
    for (size_t i = 0; i < sizeof peaks / sizeof peaks[0]; i++) {
        if (has_words(device_name, peaks[i].name)) {
            if (source) *source = peaks[i].source;
            return peaks[i].tflops;
        }
    }
    if (source) *source = NULL;
    return 0;
}

static int is_cuda(const ct_backend *be) { return !strcmp(be->name, "cuda"); }

double ct_watch_peak(const ct_config *cfg, const ct_backend *be, int device, char *what, size_t n)
{
    if (cfg->log.peak_tflops > 0) {
        snprintf(what, n, "MFU against %g TFLOP/s per rank (log.peak_tflops)", cfg->log.peak_tflops);
        return cfg->log.peak_tflops;
    }
    if (!is_cuda(be)) {
        snprintf(what, n, "MFU not computed: the %s backend has no known peak (set log.peak_tflops)", be->name);
        return 0;
    }
    char name[256] = "?";
#ifdef CTRAIN_HAVE_CUDA
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) snprintf(name, sizeof name, "%s", prop.name);
#else
    (void)device;
#endif
    const char *source;
    double peak = ct_watch_peak_tflops(name, &source);
    if (peak > 0) snprintf(what, n, "MFU against %g TFLOP/s per GPU (%s, dense bf16; %s)", peak, name, source);
    else snprintf(what, n, "MFU not computed: no peak known for %s (set log.peak_tflops)", name);
    return peak;
}

double ct_watch_memory_gib(const ct_backend *be, int device)
{
    (void)device;
#ifdef CTRAIN_HAVE_CUDA
    size_t free_b, total_b;
    if (is_cuda(be)) return cudaMemGetInfo(&free_b, &total_b) == cudaSuccess ? (double)(total_b - free_b) / 1073741824.0 : NAN;
#else
    (void)be;
#endif
    /* the kernel's VmHWM as ct_plan_rss_peak reads it, but a system call (0.3 us) instead of parsing
     * /proc/self/status: this runs every step */
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? NAN : (double)ru.ru_maxrss / 1048576.0; /* KiB on Linux */
}

double ct_watch_mfu(double flops, double seconds, double peak_tflops)
{
    return peak_tflops > 0 && seconds > 0 && flops > 0 ? flops / seconds / (peak_tflops * 1e12) : NAN;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ct_watch_ckpt_progress(void *user, const char *path, int saving, uint64_t done, uint64_t total)
{
    ct_watch_progress *p = user;
    double now = mono_s();
    if (done == 0) {
        p->t0 = p->last = now, p->t1 = 0, p->d1 = 0;
        return;
    }
    if (p->t1 == 0) p->t1 = now, p->d1 = done; /* the bytes begin: the rate is counted from here */
    double spent = now - p->t0;
    /* from 2 s on (and 1% done: a save first copies and checksums), every 2 s, and at the end */
    if (spent < 2 || (done < total && (now - p->last < 2 || done < total / 100))) return;
    p->last = now;
    char rate[48] = "";
    if (now > p->t1 && done > p->d1) snprintf(rate, sizeof rate, ", %.0f MB/s", (done - p->d1) / 1e6 / (now - p->t1));
    printf("ctrain: %s %s: %.2f of %.2f GB (%.0f%%) of this rank's part after %.1f s%s\n", saving ? "saving" : "loading",
           path, done / 1e9, total / 1e9, total ? 100.0 * done / total : 100.0, spent, rate);
    fflush(stdout); /* a failure stays in stdout's error flag, which the trainer's next log line checks */
}
