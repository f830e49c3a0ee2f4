# comm tests, included from tests/CMakeLists.txt: include(${CMAKE_CURRENT_SOURCE_DIR}/comm.cmake)
# test_comm runs plainly (the size-1 transport) and, with MPI, under mpiexec -n 1, 2, 3 and 4;
# comm_abort_np2 checks that one rank's ct_comm_abort ends the whole job quickly.
# They link ct_comm alone: comm must not need the rest of ctrain.
add_executable(test_comm ${CMAKE_CURRENT_LIST_DIR}/test_comm.c)
target_link_libraries(test_comm PRIVATE ct_comm)
target_include_directories(test_comm PRIVATE ${CMAKE_CURRENT_LIST_DIR})
# what attaching a device must do in this build (test_comm checks the refusals)
target_compile_definitions(test_comm PRIVATE CTRAIN_HAVE_CUDA=$<BOOL:${CTRAIN_HAVE_CUDA}>
  CTRAIN_HAVE_NCCL=$<BOOL:${CTRAIN_HAVE_NCCL}>)
add_test(NAME test_comm COMMAND test_comm)
set_tests_properties(test_comm PROPERTIES LABELS unit TIMEOUT 60)

add_executable(test_comm_abort ${CMAKE_CURRENT_LIST_DIR}/test_comm_abort.c)
target_link_libraries(test_comm_abort PRIVATE ct_comm)

if(CTRAIN_HAVE_MPI)
  # Open MPI refuses more ranks than cores without --oversubscribe (MPICH allows it anyway),
  # and refuses root without these two variables (set in the environment, not as a flag, so
  # the same tests run as any user).
  set(ct_comm_mpiexec ${MPIEXEC_EXECUTABLE})
  execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE ct_comm_mpiexec_version
    ERROR_QUIET)
  set(ct_comm_oversubscribe "")
  if(ct_comm_mpiexec_version MATCHES "Open MPI|OpenRTE")
    set(ct_comm_oversubscribe --oversubscribe)
  endif()
  set(ct_comm_env "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1")
  foreach(np 1 2 3 4)
    add_test(NAME test_comm_np${np}
      COMMAND ${ct_comm_mpiexec} ${MPIEXEC_NUMPROC_FLAG} ${np} ${ct_comm_oversubscribe}
              ${MPIEXEC_PREFLAGS} $<TARGET_FILE:test_comm> ${MPIEXEC_POSTFLAGS})
    set_tests_properties(test_comm_np${np} PROPERTIES LABELS "unit;mpi" TIMEOUT 120
      PROCESSORS ${np} ENVIRONMENT "${ct_comm_env}")
  endforeach()
  # Passes when the job exits non-zero within 30 s with no rank past its barrier; TIMEOUT
  # is the backstop should the wrapper itself hang.
  add_test(NAME comm_abort_np2
    COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/comm_abort.sh 30
            ${ct_comm_mpiexec} ${MPIEXEC_NUMPROC_FLAG} 2 ${ct_comm_oversubscribe}
            ${MPIEXEC_PREFLAGS} $<TARGET_FILE:test_comm_abort> ${MPIEXEC_POSTFLAGS})
  set_tests_properties(comm_abort_np2 PROPERTIES LABELS "unit;mpi" TIMEOUT 90 PROCESSORS 2
    ENVIRONMENT "${ct_comm_env}")
endif()
