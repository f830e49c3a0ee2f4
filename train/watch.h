/* watch.h — what a run reports besides its loss: model FLOPs utilisation against the device's
 * peak, each rank's peak memory, and progress lines for long checkpoint saves and loads. */
#ifndef CT_TRAIN_WATCH_H
#define CT_TRAIN_WATCH_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "kernels.h"

/* Peak dense bf16 tensor TFLOP/s of a GPU by its CUDA name (cudaDeviceProp.name, e.g. "NVIDIA
 * H100 80GB HBM3"), from its datasheet (the table in watch.c names each); 0 when not in the table.
 * *source (may be NULL) gets the datasheet's name. */
double ct_watch_peak_tflops(const char *device_name, const char **source);

/* The peak MFU is measured against, per rank: log.peak_tflops when set; else, on the CUDA backend,
 * the table's for the device; else 0 (no MFU). what[n] gets a line saying where it came from. */
double ct_watch_peak(const ct_config *cfg, const ct_backend *be, int device, char *what, size_t n);

/* This rank's memory in GiB: on the CPU the process's peak resident set (getrusage's ru_maxrss,
 * the kernel's VmHWM); on CUDA the device memory in use (cudaMemGetInfo's total - free: every
 * process on the GPU, the CUDA context included; the backend keeps no peak of its own). */
double ct_watch_memory_gib(const ct_backend *be, int device);

/* MFU of a step: flops (the model FLOPs one rank does in it) over seconds and peak_tflops; NaN
 * when the peak is unknown (0) or the step took no time. */
double ct_watch_mfu(double flops, double seconds, double peak_tflops);

/* Progress of a checkpoint save or load (a ct_ckpt_progress_fn, checkpoint.h): from 2 s after it
 * began (and 1% of it done), a line on stdout at most every 2 s and one at the end, with this
 * rank's bytes done, the time so far and MB/s since the first bytes. user is a ct_watch_progress. */
typedef struct {
    double t0, last, t1; /* when the save or load began; the last line; the first bytes */
    uint64_t d1;         /* bytes done at t1 */
} ct_watch_progress;
void ct_watch_ckpt_progress(void *user, const char *path, int saving, uint64_t done, uint64_t total);

#endif
