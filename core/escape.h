// Text from files and users, made safe to print in a message.
//
// A file name, a `latest` file or a manifest string can hold any bytes: a NUL
// cuts a C string short, a terminal escape garbles the screen. Both
// functions return a copy in which such bytes appear as \xNN.
#pragma once

#include <string>
#include <string_view>

namespace latam {

// Printable ASCII kept, every other byte (control bytes, DEL, bytes >= 0x80)
// and the backslash escaped, so the result reads back unambiguously: for
// names read from files, which may not be valid UTF-8.
std::string EscapeBytes(std::string_view text);

// Control bytes (below 0x20, except newline and tab) and DEL escaped, all
// else kept, so UTF-8 text and multi-line messages print as they are: for
// whole error messages.
std::string EscapeControlBytes(std::string_view text);

}  // namespace latam
