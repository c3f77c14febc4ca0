// The bodies of psync's non-template functions, compiled once for all of
// psync-train's translation units (PSYNC_SEPARATE_COMPILATION, set for the whole
// target in tools/CMakeLists.txt; psync/detail/config.hpp).
#include <psync/src.hpp>
