/* model_test.h — the loss helpers the model tests share (test_model_grad, test_lora). */
#ifndef CT_TESTS_MODEL_TEST_H
#define CT_TESTS_MODEL_TEST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model.h"

/* The mean loss over the counted targets (pos: the forward's positions, or NULL); the logits
 * keep the gradient of dloss * the summed loss for a backward. Exits on a forward error (a
 * broken test, not a result). */
static inline double ct_test_mean_loss(ct_model *m, const int32_t *tokens, const int32_t *targets,
                                       const int32_t *pos, int B, int T, float dloss)
{
    double sum;
    long ntok;
    char err[256];
    if (ct_model_forward(m, tokens, targets, pos, B, T, dloss, &sum, &ntok, err, sizeof err)) {
        fprintf(stderr, "forward: %s\n", err);
        exit(2);
    }
    return sum / (double)ntok;
}

/* A tiny model of cfg for B x T on be, its init scaled by `scale` plus U(-noise, noise): norms
 * and biases off 1 and 0, weights larger than the 0.02 init, so every path carries a gradient
 * well above finite-difference noise (3 and 0.3 suit GPT-2). The same weights on every call.
 * Exits on an init error. */
static inline ct_model *ct_test_tiny_model(const ct_model_config *cfg, const ct_backend *be, ct_kctx *ctx, int B,
                                           int T, float scale, float noise_amp)
{
    ct_model *m = NULL;
    char err[512];
    if (ct_model_init(&m, cfg, be, ctx, B, T, 1, err, sizeof err)) {
        fprintf(stderr, "init: %s\n", err);
        exit(2);
    }
    ct_model_init_weights(m, 1);
    uint64_t rng = 99;
    float *p = ct_model_params(m);
    for (int i = 0; i < ct_model_num_tensors(m); i++) {
        const ct_param *t = ct_model_tensor(m, i);
        float *noise = ct_test_alloc(t->numel);
        ct_test_fill(noise, t->numel, &rng, -noise_amp, noise_amp);
        for (size_t k = 0; k < t->numel; k++) p[t->offset + k] = p[t->offset + k] * scale + noise[k];
        free(noise);
    }
    return m;
}

/* The mean loss's derivative along d (n elements of w, whose values are in saved): central
 * differences at steps h and h/2 combined by Richardson extrapolation, which cancels the h^2
 * term (smaller steps would drown in the fp32 loss's rounding). w is restored. */
static inline double ct_test_fd(ct_model *m, const int32_t *tokens, const int32_t *targets, const int32_t *pos, int B,
                                int T, float *w, const float *saved, const float *d, size_t n, double h)
{
    double D[2];
    for (int s = 0; s < 2; s++, h /= 2) {
        for (size_t k = 0; k < n; k++) w[k] = (float)(saved[k] + h * d[k]);
        double lp = ct_test_mean_loss(m, tokens, targets, pos, B, T, 0.0f);
        for (size_t k = 0; k < n; k++) w[k] = (float)(saved[k] - h * d[k]);
        double lm = ct_test_mean_loss(m, tokens, targets, pos, B, T, 0.0f);
        D[s] = (lp - lm) / (2 * h);
    }
    memcpy(w, saved, n * sizeof(float));
    return (4 * D[1] - D[0]) / 3;
}

static inline long ct_test_count_targets(const int32_t *targets, int n)
{
    long k = 0;
    for (int i = 0; i < n; i++) k += targets[i] >= 0;
    return k;
}

#endif
