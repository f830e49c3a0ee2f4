# GPU tests (ctest -L gpu), included from tests/CMakeLists.txt:
#   include(${CMAKE_CURRENT_SOURCE_DIR}/gpu/gpu.cmake)
# test_cuda_ops compares every CUDA op with the CPU backend. It is built in every configuration
# and exits 77 — reported by ctest as skipped, never as passed — where the build has no CUDA
# backend or the machine no device. CTRAIN_CUDA_SYNC=1 makes the backend synchronise after
# every launch, so an asynchronous fault is reported at the kernel that caused it.
# ctrain_gpu_test(NAME LIBS... [SYNC]): a C test in tests/gpu, labelled gpu, 77 meaning skipped.
function(ctrain_gpu_test name)
  cmake_parse_arguments(T "SYNC" "TIMEOUT" "LIBS" ${ARGN})
  add_executable(${name} ${CMAKE_CURRENT_LIST_DIR}/${name}.c)
  target_link_libraries(${name} PRIVATE ${T_LIBS})
  target_include_directories(${name} PRIVATE ${CMAKE_CURRENT_LIST_DIR}/..)
  add_test(NAME ${name} COMMAND ${name})
  set(env "OMP_NUM_THREADS=2")
  if(T_SYNC)
    set(env "CTRAIN_CUDA_SYNC=1;OMP_NUM_THREADS=2")
  endif()
  set_tests_properties(${name} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT ${T_TIMEOUT} ENVIRONMENT "${env}")
endfunction()

ctrain_gpu_test(test_cuda_ops LIBS ct_kernels SYNC TIMEOUT 300)
# test_cuda_model: a full training step and a LoRA step of a tiny GPT-2 (forward, backward, the
# ready-callback contract, two optimizer steps over NCCL) against the CPU backend.
ctrain_gpu_test(test_cuda_model LIBS ct_train SYNC TIMEOUT 300)
# test_nccl: comm.h's buffer collectives on device memory (world 1), on the copy device side a
# one-rank job gets (no NCCL started) and, in builds with NCCL, on NCCL itself; stream order
# included, so without CTRAIN_CUDA_SYNC (synchronising every launch would hide an ordering bug).
ctrain_gpu_test(test_nccl LIBS ct_comm ct_kernels TIMEOUT 120)
target_compile_definitions(test_nccl PRIVATE CTRAIN_HAVE_NCCL=$<BOOL:${CTRAIN_HAVE_NCCL}>)

# cuda_train_resume: ctrain end to end on the GPU: train, resume in place exactly, against the
# CPU backend, eval and sample. Exits 77 where nvidia-smi lists no GPU or ctrain cannot use one.
add_test(NAME cuda_train_resume COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/cuda_train_resume.sh $<TARGET_FILE:ctrain>)
set_tests_properties(cuda_train_resume PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 600)
# the same with a Llama (grouped-query heads, RoPE, SwiGLU, an untied head)
add_test(NAME cuda_train_resume_llama COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/cuda_train_resume.sh $<TARGET_FILE:ctrain>
  --set model.arch=llama --set model.n_kv_head=1 --set model.n_inner=64 --set model.tie_embeddings=false)
set_tests_properties(cuda_train_resume_llama PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 600)
# cuda_zero_stages: ZeRO stages 1-3 on one GPU (unit gathers and reductions through the device
# side), stages 2 and 3 bit-identical, a stage-3 checkpoint resumed under stage 1
add_test(NAME cuda_zero_stages COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/cuda_zero_stages.sh $<TARGET_FILE:ctrain>)
set_tests_properties(cuda_zero_stages PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 600)
