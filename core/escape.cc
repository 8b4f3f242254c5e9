#include "core/escape.h"

#include <cstdio>

namespace latam {

namespace {

void AppendEscaped(unsigned char byte, std::string* out) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "\\x%02x", byte);
  out->append(buf);
}

}  // namespace

std::string EscapeBytes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\\') {
      out.push_back(c);
    } else {
      AppendEscaped(u, &out);
    }
  }
  return out;
}

std::string EscapeControlBytes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\n' && c != '\t') || u == 0x7f) {
      AppendEscaped(u, &out);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace latam
