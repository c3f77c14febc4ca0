# Installs psync from BUILD_DIR into a fresh prefix, then configures, builds and
# runs the consumer project against it. Any failing step fails the test.
set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "package test: '${ARGN}' failed (${rc}):\n${out}\n${err}")
  endif()
  message("${out}")
endfunction()
step(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
# -O0: the consumers check that each target builds, links and runs; their speed is not measured.
# With the system's default compiler, as a user's project would have, whatever CXX chose
# for psync's own build (scripts/test.sh builds with clang; this keeps GCC in the loop).
unset(ENV{CXX})
step(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release
     -DCMAKE_CXX_FLAGS_RELEASE=-O0 -DPSYNC_EXPECT_MPI=${EXPECT_MPI})
step(${CMAKE_COMMAND} --build ${WORK_DIR}/build --parallel 2)
step(${WORK_DIR}/build/consumer)
step(${WORK_DIR}/build/consumer_separate)
step(${WORK_DIR}/build/consumer_policies)
step(${WORK_DIR}/build/consumer_tcp)
step(${WORK_DIR}/build/consumer_data)
# With the mpi component: the consumer's MPI program, as two ranks.
if(EXPECT_MPI)
  set(ENV{OMPI_ALLOW_RUN_AS_ROOT} 1)
  set(ENV{OMPI_ALLOW_RUN_AS_ROOT_CONFIRM} 1)
  set(ENV{OMPI_MCA_rmaps_base_oversubscribe} 1)
  step(${MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} 2 ${WORK_DIR}/build/consumer_mpi)
endif()
