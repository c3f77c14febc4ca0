// consumer_separate: main.cpp again, with psync compiled separately
// (PSYNC_SEPARATE_COMPILATION for the whole program, psync/src.hpp compiled here once).
#include <psync/src.hpp>
