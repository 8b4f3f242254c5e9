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

Result<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Create(const std::string& dir) {
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  const std::string path = dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(WallTime())) + "." +
                           host + "." + std::to_string(getpid());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return Status::IoError("cannot create " + path + ": " + std::strerror(errno));
  std::unique_ptr<TensorBoardWriter> w(new TensorBoardWriter(path, f));
  tensorboard::Event header;
  header.set_wall_time(WallTime());
  header.set_file_version("brain.Event:2");
  w->WriteRecord(header.SerializeAsString());
  return w;
}

TensorBoardWriter::~TensorBoardWriter() { std::fclose(file_); }

void TensorBoardWriter::WriteRecord(const std::string& payload) {
  // TFRecord: uint64 length, uint32 masked crc(length), data, uint32 masked crc(data).
  const uint64_t length = payload.size();
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(length >> (8 * i));
  const uint32_t len_crc = MaskCrc32c(Crc32c(len_bytes, 8));
  const uint32_t data_crc = MaskCrc32c(Crc32c(payload.data(), payload.size()));
  unsigned char crc_bytes[4];
  std::fwrite(len_bytes, 1, 8, file_);
  for (int i = 0; i < 4; ++i) crc_bytes[i] = static_cast<unsigned char>(len_crc >> (8 * i));
  std::fwrite(crc_bytes, 1, 4, file_);
  std::fwrite(payload.data(), 1, payload.size(), file_);
  for (int i = 0; i < 4; ++i) crc_bytes[i] = static_cast<unsigned char>(data_crc >> (8 * i));
  std::fwrite(crc_bytes, 1, 4, file_);
  std::fflush(file_);
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

Result<std::unique_ptr<MetricsWriter>> MetricsWriter::Create(const std::string& run_dir) {
  const std::string path = run_dir + "/metrics.jsonl";
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) return Status::IoError("cannot open " + path + ": " + std::strerror(errno));
  auto tb = TensorBoardWriter::Create(run_dir);
  if (!tb.ok()) {
    std::fclose(f);
    return tb.status();
  }
  return std::unique_ptr<MetricsWriter>(new MetricsWriter(f, std::move(tb).value()));
}

MetricsWriter::~MetricsWriter() { std::fclose(jsonl_); }

void MetricsWriter::Write(int64_t step, const std::map<std::string, double>& values) {
  nlohmann::ordered_json j;
  j["step"] = step;
  for (const auto& [name, value] : values) j[name] = value;
  const std::string line = j.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), jsonl_);
  std::fflush(jsonl_);
  tensorboard_->AddScalars(step, values);
}

}  // namespace latam
