#pragma once
// Catch2 v2 (Debian 12) and v3 spell their headers differently; tests include this.
#include <string>
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
namespace psync_test {
/// Substring matcher under its v3 name.
inline auto Contains(const std::string& s) { return Catch::Matchers::ContainsSubstring(s); }
}  // namespace psync_test
#else
#include <catch2/catch.hpp>
namespace psync_test {
using Catch::Matchers::Contains;
}  // namespace psync_test
#endif
