#pragma once
// Replaces the global allocation functions of the test program that includes it
// (include it from exactly one file per program) and counts every allocation, so
// "no allocation on the hot path" is checked beyond Eigen's own EIGEN_RUNTIME_NO_MALLOC.
#include <atomic>
#include <cstdlib>
#include <new>

// Counts every operator new so allocations outside Eigen are caught too.
namespace {
std::atomic<long> g_allocations{0};
}  // namespace

// Every replaceable form, so nothing mixes these with the runtime's (sanitizers check the
// pairing). Not inlined: GCC 12 would pair the malloc/free inside with new/delete and warn.
namespace {
[[gnu::noinline]] void* counted_malloc(std::size_t n) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
[[gnu::noinline]] void* counted_malloc_or_throw(std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
}  // namespace
void* operator new(std::size_t n) { return counted_malloc_or_throw(n); }
void* operator new[](std::size_t n) { return counted_malloc_or_throw(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { operator delete(p); }
void operator delete(void* p, std::size_t) noexcept { operator delete(p); }
void operator delete[](void* p, std::size_t) noexcept { operator delete(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { operator delete(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { operator delete(p); }
