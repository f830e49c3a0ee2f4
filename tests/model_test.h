/* model_test.h — the loss helpers the model tests share (test_model_grad, test_lora). */
#ifndef CT_TESTS_MODEL_TEST_H
#define CT_TESTS_MODEL_TEST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

/* The mean loss over the counted targets; the logits keep the gradient of dloss * the summed
 * loss for a backward. Exits on a forward error (a broken test, not a result). */
static inline double ct_test_mean_loss(ct_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                                       float dloss)
{
    double sum;
    long ntok;
    char err[256];
    if (ct_model_forward(m, tokens, targets, B, T, dloss, &sum, &ntok, err, sizeof err)) {
        fprintf(stderr, "forward: %s\n", err);
        exit(2);
    }
    return sum / (double)ntok;
}

static inline long ct_test_count_targets(const int32_t *targets, int n)
{
    long k = 0;
    for (int i = 0; i < n; i++) k += targets[i] >= 0;
    return k;
}

#endif
