#pragma once
/// @file
/// @brief The few JSON spellings psync writes by hand (traces, metrics, bench
/// reports): one escaping rule and one number format for all of them.

#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>

namespace psync::detail {

/// @brief Appends `text` to `out` escaped for the inside of a JSON string.
inline void append_json_escaped(std::string& out, std::string_view text) {
  constexpr char hex[] = "0123456789abcdef";
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += "\\u00";
          out += hex[(c >> 4) & 0xf];
          out += hex[c & 0xf];
        } else {
          out += c;
        }
    }
  }
}

/// @brief `text` as a quoted JSON string.
inline std::string json_string(std::string_view text) {
  std::string out = "\"";
  append_json_escaped(out, text);
  return out + "\"";
}

/// @brief `v` as a JSON number (9 significant digits); `null` when not finite.
inline std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

}  // namespace psync::detail
