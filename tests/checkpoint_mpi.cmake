# Checkpoint tests under mpirun (included from tests/CMakeLists.txt):
#   checkpoint_resume: bit-exact resume, resharding (2->1, 2->3, 4->2), resume in place,
#                      preemption by SIGUSR1 (mpirun) and SIGTERM (one process);
#   checkpoint_faults: kill -9 of a rank mid-save, I/O errors on every rank and on one rank
#                      (ulimit -f), corrupt and truncated checkpoints.
# Both use Open MPI's mpirun (--oversubscribe, MPMD, SIGUSR1 forwarding, OMPI_COMM_WORLD_RANK)
# and set OMPI_ALLOW_RUN_AS_ROOT* and OMP_NUM_THREADS=1 themselves.
if(CTRAIN_HAVE_MPI)
  execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE ct_ckpt_mpiexec_version ERROR_QUIET)
  if(ct_ckpt_mpiexec_version MATCHES "Open MPI|OpenRTE")
    foreach(t checkpoint_resume checkpoint_faults)
      add_test(NAME ${t} COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/${t}.sh $<TARGET_FILE:ctrain> ${MPIEXEC_EXECUTABLE})
      set_tests_properties(${t} PROPERTIES LABELS "unit;mpi" TIMEOUT 300 PROCESSORS 2)
    endforeach()
  else()
    message(STATUS "checkpoint_resume, checkpoint_faults: skipped (they need Open MPI's mpirun)")
  endif()
endif()

# write_faults: a file-size limit or a full disk (a tmpfs in a private mount namespace, where
# mounting is allowed) on metrics.jsonl, ctrain.json, checkpoints and exports; its 2-rank case
# needs Open MPI's mpirun (MPMD) and is skipped without it.
set(ct_write_faults_mpiexec "")
if(CTRAIN_HAVE_MPI AND ct_ckpt_mpiexec_version MATCHES "Open MPI|OpenRTE")
  set(ct_write_faults_mpiexec ${MPIEXEC_EXECUTABLE})
endif()
add_test(NAME write_faults COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/write_faults.sh $<TARGET_FILE:ctrain>
  ${ct_write_faults_mpiexec})
set_tests_properties(write_faults PROPERTIES LABELS "unit;mpi" TIMEOUT 300 PROCESSORS 2)
