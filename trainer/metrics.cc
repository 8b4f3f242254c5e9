#include "trainer/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/crc32c.h"
#include "trainer/tensorboard.pb.h"

namespace latam {

namespace {

double WallTime() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

}  // namespace

Result<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Create(const std::string& dir, Env* env) {
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  const std::string path = dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(WallTime())) + "." +
                           host + "." + std::to_string(getpid());
  LATAM_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, env->NewWritableFile(path));
  std::unique_ptr<TensorBoardWriter> w(new TensorBoardWriter(std::move(file)));
  tensorboard::Event header;
  header.set_wall_time(WallTime());
  header.set_file_version("brain.Event:2");
  w->WriteRecord(header.SerializeAsString());
  return w;
}

// Metrics are best effort: a full disk must not stop training, so write
// errors are dropped here (the checkpoint writes report theirs).
void TensorBoardWriter::WriteRecord(const std::string& payload) {
  // TFRecord: uint64 length, uint32 masked crc(length), data, uint32 masked crc(data).
  const uint64_t length = payload.size();
  char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>(length >> (8 * i));
  const uint32_t len_crc = MaskCrc32c(Crc32c(len_bytes, 8));
  const uint32_t data_crc = MaskCrc32c(Crc32c(payload.data(), payload.size()));
  std::string record(len_bytes, 8);
  for (int i = 0; i < 4; ++i) record.push_back(static_cast<char>(len_crc >> (8 * i)));
  record += payload;
  for (int i = 0; i < 4; ++i) record.push_back(static_cast<char>(data_crc >> (8 * i)));
  (void)file_->Append(record);
  (void)file_->Flush();
}

void TensorBoardWriter::AddScalars(int64_t step, const std::map<std::string, double>& scalars) {
  tensorboard::Event event;
  event.set_wall_time(WallTime());
  event.set_step(step);
  for (const auto& [tag, value] : scalars) {
    tensorboard::SummaryValue* v = event.mutable_summary()->add_value();
    v->set_tag(tag);
    v->set_simple_value(static_cast<float>(value));
  }
  WriteRecord(event.SerializeAsString());
}

Result<std::unique_ptr<MetricsWriter>> MetricsWriter::Create(const std::string& run_dir, Env* env) {
  LATAM_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> jsonl, env->NewAppendableFile(run_dir + "/metrics.jsonl"));
  LATAM_ASSIGN_OR_RETURN(std::unique_ptr<TensorBoardWriter> tb, TensorBoardWriter::Create(run_dir, env));
  return std::unique_ptr<MetricsWriter>(new MetricsWriter(std::move(jsonl), std::move(tb)));
}

void MetricsWriter::Write(int64_t step, const std::map<std::string, double>& values,
                          const std::map<std::string, std::string>& labels) {
  nlohmann::ordered_json j;
  j["step"] = step;
  for (const auto& [name, value] : values) j[name] = value;
  for (const auto& [name, text] : labels) j[name] = text;
  const std::string line = j.dump() + "\n";
  (void)jsonl_->Append(line);  // best effort, as in WriteRecord
  (void)jsonl_->Flush();
  tensorboard_->AddScalars(step, values);
}

}  // namespace latam
