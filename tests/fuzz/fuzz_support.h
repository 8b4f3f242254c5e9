// What the fuzz targets of tests/fuzz share: a scratch directory for the
// parsers that read files, and the check that a parser's error is an input
// error.
//
// Each target defines LLVMFuzzerTestOneInput(data, size). Built with clang's
// -fsanitize=fuzzer it is driven by libFuzzer (tests/fuzz/run.sh); built with
// the project's compiler it is linked with replay_main.cc, which feeds it the
// corpus and the regression inputs (the FuzzReplay* tests).
//
// The scratch directory is made once per process under $TMPDIR (else /tmp),
// holds only what the targets write there, and is removed at exit. Failing
// to write it is an environment failure, not an input one: it aborts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace latam::fuzz {

// The process's scratch directory (created on first use).
const std::string& ScratchDir();

// Writes `bytes` to ScratchDir()/`relative_path` (its parent directory must
// exist), replacing the file. Aborts on failure.
void WriteScratchFile(const std::string& relative_path, std::string_view bytes);

// Creates ScratchDir()/`relative_dir` if missing and returns its path.
std::string ScratchSubdir(const std::string& relative_dir);

// A parser may reject any input, but only with kInvalidInput (exit code 2):
// aborts, printing the status, for any other non-ok code.
void RequireOkOrInputError(const Status& status, const char* what);

}  // namespace latam::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
