// Run metrics: metrics.jsonl (one JSON object per line) and a TensorBoard
// event file (events.out.tfevents.<unix time>.<host>) with the same scalars.
//
// Only rank 0 creates a MetricsWriter. Lines are appended and flushed after
// every record, so a crash loses at most the record being written, and an
// existing metrics.jsonl in the run directory is never truncated.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "core/status.h"

namespace latam {

// TFRecord writer for TensorBoard scalars.
class TensorBoardWriter {
 public:
  static Result<std::unique_ptr<TensorBoardWriter>> Create(const std::string& dir);
  ~TensorBoardWriter();
  void AddScalars(int64_t step, const std::map<std::string, double>& scalars);
  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(std::string path, std::FILE* f) : path_(std::move(path)), file_(f) {}
  void WriteRecord(const std::string& payload);
  std::string path_;
  std::FILE* file_;
};

class MetricsWriter {
 public:
  static Result<std::unique_ptr<MetricsWriter>> Create(const std::string& run_dir);
  ~MetricsWriter();

  // Writes {"step": step, <name>: <value>...} to metrics.jsonl and the same
  // scalars to TensorBoard.
  void Write(int64_t step, const std::map<std::string, double>& values);

 private:
  MetricsWriter(std::FILE* jsonl, std::unique_ptr<TensorBoardWriter> tb) : jsonl_(jsonl), tensorboard_(std::move(tb)) {}
  std::FILE* jsonl_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

}  // namespace latam
