// UTF-8 helpers and the byte-level alphabet of GPT-2-style BPE.
//
// Byte-level BPE never sees raw bytes: each byte b is mapped to one Unicode
// character ByteToChar(b), chosen so that every character is printable and
// none is whitespace (bytes that are printable Latin-1 map to themselves; the
// other 68 map to U+0100 upwards, in byte order). Vocabulary and merge
// strings are UTF-8 encodings of such characters.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace latam::data {

// The character (code point) standing for byte b.
uint32_t ByteToChar(uint8_t b);
// UTF-8 of ByteToChar(b) for all 256 bytes.
const std::array<std::string, 256>& ByteLevelStrings();
// Inverse of ByteToChar: the byte a code point stands for, if any.
std::optional<uint8_t> CharToByte(uint32_t code_point);

// Appends the UTF-8 encoding of a code point.
void AppendUtf8(uint32_t code_point, std::string* out);

// Decodes the code point at text[*pos] and advances *pos. Returns nullopt
// (and advances by the length of the maximal invalid subpart) on invalid
// UTF-8.
std::optional<uint32_t> NextCodePoint(std::string_view text, size_t* pos);

bool IsValidUtf8(std::string_view text);

// Replaces every maximal invalid subsequence with U+FFFD (the Unicode
// "substitution of maximal subparts" practice, which Python's
// errors="replace" and the WHATWG TextDecoder also follow).
std::string SanitizeUtf8(std::string_view text);

}  // namespace latam::data
