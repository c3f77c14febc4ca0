# psync-train --transport mpi --shards K (tools/psync_train/mpi_launch.cpp):
#  1. mpiexec -n 4 ... --shards 2 --policy ssp:2: ranks 0 and 1 each serve one shard and
#     each receives all 200 updates (both workers' 100 steps), none lost; both workers,
#     holding the model reassembled from both shards, reach test accuracy 0.9.
#  2. BSP with an MLP (a random initial model, so a shard rank serving another shard's
#     slice shows), sharded (-n 4 --shards 2) against unsharded (-n 3), plain, with
#     --codec topk:0.05 and with --server-optimizer adam: the same final
#     test accuracy and loss. Two workers' round sums are exact in either arrival order and
#     each shard runs the unsharded server's arithmetic on its slice, so the model after
#     the last round is the same bit for bit: the workers' reports of it (sharded) must
#     equal the server's (unsharded).
#  3. Usage errors (exit 2, naming the flag): too few ranks for the shards, --shards 0,
#     --shards over TCP, --shards with --series-ms/--target.
# Run by CTest as: cmake -DMPIEXEC=... -DNP_FLAG=... -DTRAIN=... -P psync_train_shards.cmake
set(common --transport mpi --data synthetic --steps 100 --lr 0.05 --timeout-ms 20000)

function(run_job np)
  execute_process(COMMAND ${MPIEXEC} ${NP_FLAG} ${np} ${TRAIN} ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 100)
  message("mpiexec -n ${np} psync-train ${ARGN}: '${rc}'\n--- stdout\n${out}\n--- stderr\n${err}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "mpiexec -n ${np} psync-train ${ARGN} failed: '${rc}'")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()

function(expect_usage_error what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  message("${ARGN}: '${rc}'\n${out}${err}")
  if(NOT rc EQUAL 2 AND NOT "${out}${err}" MATCHES "Exit code: +2")  # or mpiexec's report of a rank's 2
    message(FATAL_ERROR "expected a usage error (exit 2), got '${rc}'")
  endif()
  if(NOT "${out}${err}" MATCHES "${what}")
    message(FATAL_ERROR "the usage error does not say '${what}'")
  endif()
endfunction()

# 1.
run_job(4 ${common} --shards 2 --policy ssp:2)
foreach(i 0 1)
  if(NOT out MATCHES "shard ${i}/2 done in [0-9.]+ s: version [0-9]+, 200 updates covering 200 steps from 2 worker\\(s\\) \\(0 lost\\)")
    message(FATAL_ERROR "shard ${i}/2 did not receive both workers' 200 updates with none lost")
  endif()
  if(NOT out MATCHES "worker ${i}: final test accuracy 0\\.9[0-9]+")
    message(FATAL_ERROR "worker ${i} does not report a final test accuracy of 0.9 or more")
  endif()
endforeach()

# 2. Also with the workers' top-k codec (each push cut into per-shard payloads that
#    decode to exactly their slices) and with Adam on the server (element by element, so
#    each shard's Adam on its slice is the unsharded server's): bit for bit as well.
foreach(extra "" "--codec;topk:0.05" "--server-optimizer;adam")
  run_job(3 ${common} --policy bsp --model mlp:8 ${extra})
  if(NOT out MATCHES "final test accuracy ([0-9.]+), loss ([0-9.]+) on")
    message(FATAL_ERROR "the unsharded server (${extra}) reports no final test accuracy")
  endif()
  set(unsharded "accuracy ${CMAKE_MATCH_1}, loss ${CMAKE_MATCH_2}")
  run_job(4 ${common} --policy bsp --model mlp:8 --shards 2 ${extra})
  foreach(i 0 1)
    if(NOT out MATCHES "worker ${i}: final test accuracy ([0-9.]+), loss ([0-9.]+) on")
      message(FATAL_ERROR "sharded BSP (${extra}): worker ${i} reports no final test accuracy")
    endif()
    set(sharded "accuracy ${CMAKE_MATCH_1}, loss ${CMAKE_MATCH_2}")
    if(NOT sharded STREQUAL unsharded)
      message(FATAL_ERROR "sharded BSP (${extra}): worker ${i} ends with ${sharded}, the unsharded server with ${unsharded}")
    endif()
    message("sharded BSP (${extra}) worker ${i}: ${sharded}; unsharded server: ${unsharded}")
  endforeach()
endforeach()

# 3.
expect_usage_error("--shards 2 needs more than 2 ranks" ${MPIEXEC} ${NP_FLAG} 2 ${TRAIN} ${common} --shards 2)
expect_usage_error("--shards '0': expected an integer from 1" ${TRAIN} ${common} --shards 0)
expect_usage_error("--shards applies to --transport mpi only"
                   ${TRAIN} --role server --server 127.0.0.1:0 --shards 2)
expect_usage_error("--series-ms does not apply to sharded servers"
                   ${TRAIN} ${common} --shards 2 --series-ms 100 --target 0.8)
