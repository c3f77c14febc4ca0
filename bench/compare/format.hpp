// compare_policies: how numbers, times and summaries read in tables and sentences.
#pragma once

#include <psync/core/metrics.hpp>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <string>

namespace compare {

inline std::string fmt(double v, int prec = 3) {
  if (std::isnan(v)) return "-";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

inline std::string pct(double v) { return fmt(100 * v, 1); }

inline std::string tta_str(double t) { return t < 0 ? "not reached" : fmt(t, 2); }

// "12.34 s" or "not reached", for sentences.
inline std::string tta_s(double t) { return t < 0 ? "not reached" : fmt(t, 2) + " s"; }

// "mean<sep>max" of a summary, e.g. "1.25 / 3".
inline std::string summary_str(const psync::Summary& v, const char* sep) {
  return fmt(v.mean(), 2) + sep + std::to_string(v.max);
}

inline std::string now_utc() {
  std::time_t t = std::time(nullptr);
  char b[64];
  std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&t));
  return b;
}

}  // namespace compare
