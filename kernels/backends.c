/* backends.c — which backends this build has. */
#include "kernels.h"

#ifdef CTRAIN_HAVE_CUDA
const ct_backend *ct_cuda_backend_table(void); /* kernels/cuda */
#endif

const ct_backend *ct_backend_cuda(void)
{
#ifdef CTRAIN_HAVE_CUDA
    return ct_cuda_backend_table();
#else
    return NULL;
#endif
}
