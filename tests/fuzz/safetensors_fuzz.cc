// Fuzz target: a safetensors file (checkpoint/safetensors.h,
// SafetensorsFile::Open), header and data section as the input gives them.
// A file that opens must also read every tensor as float: Open's checks
// promise every tensor lies inside the data section, so these reads are
// bounded by the input's size.
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  latam::fuzz::WriteScratchFile("model.safetensors", std::string_view(reinterpret_cast<const char*>(data), size));
  auto file = latam::ckpt::SafetensorsFile::Open(latam::fuzz::ScratchDir() + "/model.safetensors");
  latam::fuzz::RequireOkOrInputError(file.status(), "SafetensorsFile::Open");
  if (!file.ok()) return 0;
  std::vector<float> values;
  for (const latam::ckpt::StEntry& e : (*file)->entries()) {
    values.resize(static_cast<size_t>(e.numel()));
    latam::fuzz::RequireOkOrInputError((*file)->ReadF32(e.name, values.data()), "SafetensorsFile::ReadF32");
  }
  return 0;
}
