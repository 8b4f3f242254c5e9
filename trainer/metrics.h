// Run metrics: metrics.jsonl (one JSON object per line) and a TensorBoard
// event file (events.out.tfevents.<unix time>.<host>) with the same scalars.
//
// Only rank 0 creates a MetricsWriter. Lines are appended and flushed after
// every record, so a crash loses at most the record being written, and an
// existing metrics.jsonl in the run directory is never truncated.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "core/env.h"
#include "core/status.h"

namespace latam {

// TFRecord writer for TensorBoard scalars.
class TensorBoardWriter {
 public:
  static Result<std::unique_ptr<TensorBoardWriter>> Create(const std::string& dir, Env* env = Env::Default());
  void AddScalars(int64_t step, const std::map<std::string, double>& scalars);
  const std::string& path() const { return file_->path(); }

 private:
  explicit TensorBoardWriter(std::unique_ptr<WritableFile> file) : file_(std::move(file)) {}
  void WriteRecord(const std::string& payload);
  std::unique_ptr<WritableFile> file_;
};

class MetricsWriter {
 public:
  static Result<std::unique_ptr<MetricsWriter>> Create(const std::string& run_dir, Env* env = Env::Default());

  // Writes {"step": step, <name>: <value>..., <label>: "<text>"...} to
  // metrics.jsonl (values, then labels, each in name order) and the values
  // to TensorBoard (which has no place for text).
  void Write(int64_t step, const std::map<std::string, double>& values,
             const std::map<std::string, std::string>& labels = {});

 private:
  MetricsWriter(std::unique_ptr<WritableFile> jsonl, std::unique_ptr<TensorBoardWriter> tb)
      : jsonl_(std::move(jsonl)), tensorboard_(std::move(tb)) {}
  std::unique_ptr<WritableFile> jsonl_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

}  // namespace latam
