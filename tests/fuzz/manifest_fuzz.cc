// Fuzz target: a checkpoint manifest (checkpoint/store.h,
// CheckpointReader::Open on a step directory holding manifest.pb).
//
// Each input is tried twice: as manifest.pb byte for byte, and with a valid
// CRC-32C trailer appended (checkpoint/checkpoint.proto, manifest_crc32c:
// tag 0x7d, then the little-endian CRC-32C of every byte before it), so
// that a reader that verifies the checksum before parsing still hands the
// input to the parser and the validation. Both step directories hold a
// fixed shard file rank_00000.bin (kShardBytes zero bytes), which manifests
// may name; a manifest that opens is then verified in full and every small
// tensor is read whole.
#include <string>
#include <vector>

#include "checkpoint/store.h"
#include "core/crc32c.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

constexpr size_t kShardBytes = 256 * 1024;
// Reads past this many elements are skipped: the shard file bounds what a
// valid manifest can hold, but a manifest may describe empty tensors of
// any shape.
constexpr int64_t kMaxReadElements = kShardBytes / 4;

std::string WithCrcTrailer(std::string bytes) {
  const uint32_t crc = latam::Crc32c(bytes.data(), bytes.size());
  bytes.push_back('\x7d');
  for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>((crc >> (8 * i)) & 0xff));
  return bytes;
}

// A step directory with the fixed shard file, made on first use.
std::string StepDir(const std::string& name) {
  const std::string dir = latam::fuzz::ScratchSubdir(name);
  latam::fuzz::WriteScratchFile(name + "/rank_00000.bin", std::string(kShardBytes, '\0'));
  return dir;
}

void OpenAndRead(const std::string& dir, const std::string& manifest_name, const std::string& manifest) {
  latam::fuzz::WriteScratchFile(manifest_name + "/" + latam::ckpt::kManifestFile, manifest);
  auto reader = latam::ckpt::CheckpointReader::Open(dir);
  latam::fuzz::RequireOkOrInputError(reader.status(), "CheckpointReader::Open");
  if (!reader.ok()) return;
  latam::fuzz::RequireOkOrInputError((*reader)->VerifyAll(), "CheckpointReader::VerifyAll");
  std::vector<float> values;
  for (const latam::ckpt::TensorRecord& t : (*reader)->manifest().tensors()) {
    const latam::Block whole = latam::WholeBlock({t.shape().begin(), t.shape().end()});
    if (whole.numel() > kMaxReadElements) continue;
    values.resize(static_cast<size_t>(whole.numel()));
    latam::fuzz::RequireOkOrInputError((*reader)->Read(t.name(), whole, values.data()), "CheckpointReader::Read");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string raw_dir = StepDir("raw");
  static const std::string trailer_dir = StepDir("trailer");
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  OpenAndRead(raw_dir, "raw", bytes);
  OpenAndRead(trailer_dir, "trailer", WithCrcTrailer(bytes));
  return 0;
}
