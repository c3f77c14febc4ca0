# A worker rank that dies mid-run (std::_Exit, no MPI_Finalize; test_mpi's hidden
# "[dead-rank]" case) must not hang anyone. Open MPI only (its mpirun's flag and output).
#  1. By default Open MPI's mpirun kills the other ranks when one exits without
#     finalising and names it: the job must end within 30 s, non-zero, naming rank 2.
#  2. With --enable-recovery the others live on: the server must drop the dead worker
#     (peer timeout, 2 s) and finish with the survivor, who trains all its steps; the
#     test case's assertions on ranks 0 and 1 check that within 12 s. The job itself
#     then sometimes does not end (about 1 run in 4 here, Open MPI 4.1.4: after both
#     survivors have passed, i.e. in MPI_Finalize or mpirun, not in psync's waits), so
#     there a timeout after both passed is reported, not failed.
# Run by CTest as: cmake -DMPIEXEC=... -DNP_FLAG=... -DTEST=... -P dead_rank.cmake
function(run_job timeout)
  string(TIMESTAMP start "%s")
  execute_process(COMMAND ${MPIEXEC} ${ARGN} ${NP_FLAG} 3 ${TEST} "[dead-rank]" --use-colour no
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT ${timeout})
  string(TIMESTAMP end "%s")
  math(EXPR seconds "${end} - ${start}")
  message("mpiexec ${ARGN} ended in ${seconds} s with '${rc}'\n--- stdout\n${out}\n--- stderr\n${err}")
  set(rc "${rc}" PARENT_SCOPE)
  set(out "${out}" PARENT_SCOPE)
  set(err "${err}" PARENT_SCOPE)
endfunction()

run_job(30)
if(rc MATCHES "timeout")
  message(FATAL_ERROR "mpiexec: the job did not end within 30 s of a rank's death")
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "the job exited 0 though rank 2 died")
endif()
# Open MPI 4.1 names the process as [[job,1],rank] and gives its exit code (_Exit(3)).
if(NOT "${out}${err}" MATCHES "Process name: \\[\\[[0-9]+,[0-9]+\\],2\\]" OR NOT "${out}${err}" MATCHES "Exit code: +3")
  message(FATAL_ERROR "mpiexec's output does not name rank 2 (the one that died) and its exit code 3")
endif()

run_job(12 --enable-recovery)
string(REGEX MATCHALL "All tests passed \\(([0-9]+) assertions? in 1 test case\\)" passed "${out}")
list(LENGTH passed survivors)
if(NOT survivors EQUAL 2 OR NOT "${out}" MATCHES "All tests passed \\(3 assertions")
  message(FATAL_ERROR "--enable-recovery: the server (3 assertions: the dead worker timed out, the other "
                      "finished) and the surviving worker must both pass")
endif()
if(rc MATCHES "timeout")
  message("note: with --enable-recovery both survivors passed, then the job did not end within 12 s "
          "(Open MPI's finalisation after a rank's death); it was killed")
endif()
