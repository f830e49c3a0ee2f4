/* eval.c — mean loss over a val set, shared across ranks. */
#include "eval.h"

#include <stdio.h>
#include <stdlib.h>

int ct_eval_loss(ct_model *m, ct_loader *val, int nbatches, int B, int T, ct_comm *comm, double *loss, char *err,
                 size_t errlen)
{
    uint64_t steps = ct_loader_steps_per_epoch(val);
    if (nbatches > 0 && (uint64_t)nbatches < steps) steps = (uint64_t)nbatches;
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)B * T), *targets = malloc(sizeof(int32_t) * (size_t)B * T);
    /* packed documents that must not see each other: their positions go to the model */
    int32_t *pos = ct_loader_masked(val) ? malloc(sizeof(int32_t) * (size_t)B * T) : NULL;
    int rc = -1;
    if (!tokens || !targets || (ct_loader_masked(val) && !pos)) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    ct_loader_seek(val, (ct_loader_cursor){0, 0, 0}); /* every evaluation sees the same windows */
    double acc[2] = {0, 0};                           /* loss sum, tokens */
    for (uint64_t s = 0; s < steps; s++) {
        double sum;
        long ntok;
        if (ct_loader_next(val, tokens, targets, pos, err, errlen)) goto done;
        if (ct_model_forward(m, tokens, targets, pos, B, T, 0.0f, &sum, &ntok, err, errlen)) goto done;
        acc[0] += sum;
        acc[1] += (double)ntok;
    }
    if (ct_comm_allreduce_sum_f64(comm, acc, 2)) {
        snprintf(err, errlen, "communication failed during evaluation");
        goto done;
    }
    *loss = acc[1] > 0 ? acc[0] / acc[1] : 0.0;
    rc = 0;
done:
    free(tokens);
    free(targets);
    free(pos);
    return rc;
}
