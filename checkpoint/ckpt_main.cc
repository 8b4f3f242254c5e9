// latam-ckpt: inspect, verify and convert checkpoints.
//
//   latam-ckpt info DIR                 one JSON object: step, consumed_samples,
//                                       layout, model, optimizer, tensors
//   latam-ckpt verify DIR               checks the manifest's checksum and
//                                       structure, the model's tensor set,
//                                       every file record and every shard
//   latam-ckpt export-hf DIR OUT [--dtype float32|bfloat16] [--max-shard-bytes N]
//   latam-ckpt import-hf HFDIR OUT
//
// DIR is a step directory, a run's checkpoints/ directory (its `latest` is
// followed) or a run directory. Exit codes: 0 ok, 2 bad input (a missing,
// corrupt or foreign checkpoint, a bad Hugging Face directory, an output
// directory that is not empty), 1 other failures.
#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/escape.h"
#include "checkpoint/convert.h"
#include "checkpoint/store.h"

namespace {

using latam::Result;
using latam::Status;
namespace ckpt = latam::ckpt;

constexpr const char* kUsage =
    "usage: latam-ckpt info DIR\n"
    "       latam-ckpt verify DIR\n"
    "       latam-ckpt export-hf DIR OUT [--dtype float32|bfloat16] [--max-shard-bytes N]\n"
    "       latam-ckpt import-hf HFDIR OUT\n";

nlohmann::json ProtoToJson(const google::protobuf::Message& m) {
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &text, options);
  // Never throws: what protobuf cannot print is null.
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? nlohmann::json() : j;
}

Status Info(const std::string& dir) {
  LATAM_ASSIGN_OR_RETURN(auto reader, ckpt::CheckpointReader::Open(dir));
  const ckpt::Checkpoint& m = reader->manifest();
  nlohmann::json j;
  j["dir"] = reader->dir();
  j["format_version"] = m.format_version();
  j["step"] = m.step();
  j["consumed_samples"] = m.consumed_samples();
  j["layout"] = ProtoToJson(m.layout());
  j["model"] = ProtoToJson(m.model());
  j["optimizer"] = {{"step", m.optimizer().step()}, {"has_moments", m.optimizer().has_moments()}};
  j["tokenizer"] = m.tokenizer_file();
  if (m.adapter().kind() != latam::config::AdapterConfig::NONE) j["adapter"] = ProtoToJson(m.adapter());
  uint64_t bytes = 0;
  int64_t parameters = 0;
  nlohmann::json tensors = nlohmann::json::array();
  for (const ckpt::TensorRecord& t : m.tensors()) {
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    for (const ckpt::Shard& s : t.shards()) bytes += s.length();
    if (t.name().find(".exp_avg") == std::string::npos) parameters += latam::WholeBlock(shape).numel();
    tensors.push_back({{"name", t.name()},
                       {"dtype", t.dtype() == ckpt::DType::BF16 ? "bf16" : "f32"},
                       {"shape", shape},
                       {"shards", t.shards_size()}});
  }
  j["parameters"] = parameters;
  j["bytes"] = bytes;
  j["tensors"] = tensors;
  // Strings are bytes from disk and the command line: invalid UTF-8 is
  // printed as U+FFFD instead of throwing.
  std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return Status::Ok();
}

// Open (the manifest's checksum, its structure, the model's tensor set, the
// tokenizer), then VerifyAll (every file record, every shard in full): all a
// load checks, and the shard bytes a load would not read.
Status Verify(const std::string& dir) {
  LATAM_ASSIGN_OR_RETURN(auto reader, ckpt::CheckpointReader::Open(dir));
  LATAM_RETURN_IF_ERROR(reader->VerifyAll());
  int shards = 0;
  for (const ckpt::TensorRecord& t : reader->manifest().tensors()) shards += t.shards_size();
  const bool v1 = reader->manifest().format_version() == ckpt::kFormatVersionWithoutChecksums;
  std::printf("ok: %s: %d tensors, %d shards, %llu bytes, %d other files, every checksum matches%s\n",
              reader->dir().c_str(), reader->manifest().tensors_size(), shards,
              static_cast<unsigned long long>(reader->bytes_read()), reader->manifest().files_size(),
              v1 ? " (format 1: the manifest itself has no checksum)" : " (the manifest's too)");
  return Status::Ok();
}

Status ExportHf(const std::vector<std::string>& args) {
  if (args.size() < 2) return Status::InvalidInput(std::string("export-hf needs DIR and OUT\n") + kUsage);
  ckpt::ExportOptions options;
  for (size_t i = 2; i < args.size(); ++i) {
    const bool has_value = i + 1 < args.size();
    if (args[i] == "--dtype" && has_value) {
      const std::string v = args[++i];
      if (v == "float32" || v == "f32") {
        options.dtype = ckpt::StDType::kF32;
      } else if (v == "bfloat16" || v == "bf16") {
        options.dtype = ckpt::StDType::kBF16;
      } else {
        return Status::InvalidInput("--dtype " + v + ": expected float32 or bfloat16");
      }
    } else if (args[i] == "--max-shard-bytes" && has_value) {
      const std::string v = args[++i];
      char* end = nullptr;
      options.max_shard_bytes = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || options.max_shard_bytes == 0) {
        return Status::InvalidInput("--max-shard-bytes " + v + ": expected a positive integer");
      }
    } else {
      return Status::InvalidInput("unknown or incomplete argument '" + args[i] + "'\n" + kUsage);
    }
  }
  LATAM_RETURN_IF_ERROR(ckpt::ExportHf(args[0], args[1], options));
  std::printf("exported %s to %s\n", args[0].c_str(), args[1].c_str());
  return Status::Ok();
}

Status ImportHf(const std::vector<std::string>& args) {
  if (args.size() != 2) return Status::InvalidInput(std::string("import-hf needs HFDIR and OUT\n") + kUsage);
  LATAM_RETURN_IF_ERROR(ckpt::ImportHf(args[0], args[1]));
  std::printf("imported %s to %s\n", args[0].c_str(), args[1].c_str());
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "%s", kUsage);
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  Status status;
  if (command == "info" && args.size() == 1) {
    status = Info(args[0]);
  } else if (command == "verify" && args.size() == 1) {
    status = Verify(args[0]);
  } else if (command == "export-hf") {
    status = ExportHf(args);
  } else if (command == "import-hf") {
    status = ImportHf(args);
  } else {
    status = Status::InvalidInput("unknown command or wrong arguments: '" + command + "'\n" + kUsage);
  }
  if (status.ok()) return 0;
  std::fprintf(stderr, "latam-ckpt: error: %s\n", latam::EscapeControlBytes(status.message()).c_str());
  return status.exit_code();
}
