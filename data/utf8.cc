#include "data/utf8.h"

namespace latam::data {

namespace {

// The 68 remapped bytes take U+0100 .. U+0143.
constexpr uint32_t kLastByteChar = 256 + 68;

struct ByteLevelTables {
  std::array<uint32_t, 256> byte_to_char{};
  std::array<int, kLastByteChar> char_to_byte{};
  std::array<std::string, 256> strings;
  ByteLevelTables() {
    char_to_byte.fill(-1);
    auto kept = [](int b) { return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff); };
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      byte_to_char[static_cast<size_t>(b)] = kept(b) ? static_cast<uint32_t>(b) : next++;
      char_to_byte[byte_to_char[static_cast<size_t>(b)]] = b;
      AppendUtf8(byte_to_char[static_cast<size_t>(b)], &strings[static_cast<size_t>(b)]);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables tables;
  return tables;
}

}  // namespace

uint32_t ByteToChar(uint8_t b) { return Tables().byte_to_char[b]; }

const std::array<std::string, 256>& ByteLevelStrings() { return Tables().strings; }

std::optional<uint8_t> CharToByte(uint32_t cp) {
  if (cp >= kLastByteChar || Tables().char_to_byte[cp] < 0) return std::nullopt;
  return static_cast<uint8_t>(Tables().char_to_byte[cp]);
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

std::optional<uint32_t> NextCodePoint(std::string_view s, size_t* pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const size_t i = *pos;
  const uint8_t b0 = byte(i);
  if (b0 < 0x80) {
    *pos = i + 1;
    return b0;
  }
  // Lead byte: sequence length and the valid range of the second byte
  // (which excludes overlongs, surrogates and code points above U+10FFFF).
  int len = 0;
  uint8_t lo = 0x80, hi = 0xbf;
  uint32_t cp = 0;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    len = 2;
    cp = b0 & 0x1f;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    len = 3;
    cp = b0 & 0x0f;
    if (b0 == 0xe0) lo = 0xa0;
    if (b0 == 0xed) hi = 0x9f;
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    len = 4;
    cp = b0 & 0x07;
    if (b0 == 0xf0) lo = 0x90;
    if (b0 == 0xf4) hi = 0x8f;
  } else {
    *pos = i + 1;  // a stray continuation byte or an invalid lead byte
    return std::nullopt;
  }
  for (int k = 1; k < len; ++k) {
    const size_t j = i + static_cast<size_t>(k);
    const uint8_t lower = k == 1 ? lo : 0x80, upper = k == 1 ? hi : 0xbf;
    if (j >= s.size() || byte(j) < lower || byte(j) > upper) {
      *pos = j;  // the maximal subpart ends before the offending byte
      return std::nullopt;
    }
    cp = (cp << 6) | (byte(j) & 0x3f);
  }
  *pos = i + static_cast<size_t>(len);
  return cp;
}

bool IsValidUtf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    if (!NextCodePoint(s, &pos)) return false;
  }
  return true;
}

std::string SanitizeUtf8(std::string_view s) {
  if (IsValidUtf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    if (NextCodePoint(s, &pos)) {
      out.append(s.substr(start, pos - start));
    } else {
      AppendUtf8(0xfffd, &out);
    }
  }
  return out;
}

}  // namespace latam::data
