#pragma once
/// @file
/// @brief The bodies of psync's non-template functions, for separate compilation:
/// with `PSYNC_SEPARATE_COMPILATION` defined for the whole program, compile this
/// header in exactly one of its source files (psync/detail/config.hpp).

#include "psync/detail/config.hpp"

#if PSYNC_HEADER_ONLY
#error "psync/src.hpp is for separate compilation: define PSYNC_SEPARATE_COMPILATION for the whole program, or do not compile psync/src.hpp (header-only mode needs nothing compiled)"
#endif

#include "psync/impl/checkpoint.ipp"
#include "psync/impl/clock_table.ipp"
#include "psync/impl/codec.ipp"
#include "psync/impl/emulated.ipp"
#include "psync/impl/in_process.ipp"
#include "psync/impl/log.ipp"
#include "psync/impl/metrics.ipp"
#include "psync/impl/optim_any.ipp"
#include "psync/impl/optim_parse.ipp"
#include "psync/impl/optimizer.ipp"
#include "psync/impl/policy_parse.ipp"
#include "psync/impl/schedule.ipp"
#include "psync/impl/sharding.ipp"
#include "psync/impl/trace.ipp"
#include "psync/impl/wire.ipp"
