# GPU tests (ctest -L gpu), included from tests/CMakeLists.txt:
#   include(${CMAKE_CURRENT_SOURCE_DIR}/gpu/gpu.cmake)
# test_cuda_ops compares every CUDA op with the CPU backend. It is built in every configuration
# and exits 77 — reported by ctest as skipped, never as passed — where the build has no CUDA
# backend or the machine no device. CTRAIN_CUDA_SYNC=1 makes the backend synchronise after
# every launch, so an asynchronous fault is reported at the kernel that caused it.
add_executable(test_cuda_ops ${CMAKE_CURRENT_LIST_DIR}/test_cuda_ops.c)
target_link_libraries(test_cuda_ops PRIVATE ct_kernels)
target_include_directories(test_cuda_ops PRIVATE ${CMAKE_CURRENT_LIST_DIR}/..)
add_test(NAME test_cuda_ops COMMAND test_cuda_ops)
set_tests_properties(test_cuda_ops PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 300
  ENVIRONMENT "CTRAIN_CUDA_SYNC=1;OMP_NUM_THREADS=2")
