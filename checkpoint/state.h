// Saving and restoring one rank's training state: parameters and AdamW
// moments as blocks of global tensors (checkpoint/store.h), written
// asynchronously, and loaded into any layout.
//
// The pieces are plain blocks of named tensors (core/block.h); which pieces
// a rank holds and which of its copies is written is the model's business
// (model/state.h). Only pieces marked saved_here are written.
//
// Saving protocol (CheckpointSaver; all ranks, main thread):
//   1. Start(): rank 0 creates checkpoints/step_XXXXXXXX/ (removing a stale
//      incomplete one; the new name is made durable at once) and copies the
//      tokenizer (durably); all ranks agree; each rank
//      copies its blocks to host memory (a buffer kept for the next save:
//      one more copy of the rank's state) and a background thread writes
//      rank_NNNNN.bin and rank_NNNNN.index.pb and fsyncs them. Training goes on.
//   2. Poll() between steps: when every rank has finished writing (agreed by
//      an all-reduce, so MPI is only called from the main thread), rank 0
//      merges the indexes into manifest.pb, recording the checksum of every
//      index file and of the tokenizer, closes it with its own checksum
//      (checkpoint/store.h) and makes it durable (fsync, rename), then replaces
//      checkpoints/latest atomically, then applies retention. A crash at any
//      point before the rename of latest leaves latest on the previous
//      complete checkpoint; a directory without manifest.pb is never loaded.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/checkpoint.pb.h"
#include "checkpoint/store.h"
#include "core/block.h"
#include "core/env.h"
#include "core/status.h"
#include "model/config.pb.h"
#include "parallel/communicator.h"

namespace latam::ckpt {

// What a checkpoint contributes to a run that starts from it.
enum class LoadWhat {
  kWeights,               // parameters only: fresh optimizer, step 0, data from sample 0
  kWeightsAndOptimizer,   // + Adam moments and step counter; schedule and data from 0
  kAll,                   // everything: a resume
};
Result<LoadWhat> ParseLoadWhat(const std::string& text);

struct LoadResult {
  int64_t step = 0;               // optimizer steps already taken (kAll)
  uint64_t consumed_samples = 0;  // where the sampler continues (kAll)
  // Whether the moment pieces were filled; the optimizer then continues from
  // optimizer_step, otherwise its moments must be reset.
  bool moments_loaded = false;
  int64_t optimizer_step = 0;
};

// Fails (naming the field) unless the checkpoint holds the same architecture.
Status CheckSameModel(const Checkpoint& manifest, const config::ModelConfig& model, const std::string& where);

// Loads this rank's blocks from `reader` (every rank of a job calls it with
// its own pieces), after CheckSameModel and reader.VerifyFiles(). Moment
// pieces are loaded when `what` asks for them and the checkpoint has them.
Result<LoadResult> LoadState(CheckpointReader& reader, const config::ModelConfig& model,
                             const std::vector<StatePiece>& pieces, LoadWhat what);

// The two halves of a save, for one process (CheckpointSaver runs them on
// every rank and on rank 0; tools and tests call them directly). Every file
// goes through `env` (core/env.h).
// Writes the saved_here pieces to step_dir/rank_NNNNN.bin and its index,
// durably; *bytes gets the shard bytes written.
Status WriteRankShards(const std::string& step_dir, int rank, const std::vector<StatePiece>& pieces,
                       uint64_t* bytes = nullptr, Env* env = Env::Default());
// Merges the indexes of ranks [0, ranks) into `header`'s tensors, records
// the index files and header.tokenizer_file() (already in step_dir) in its
// files, and writes step_dir/manifest.pb (format kFormatVersion, with its
// checksum trailer) durably. The rank indexes stay, checksummed.
Status WriteManifest(const std::string& step_dir, int ranks, const Checkpoint& header, Env* env = Env::Default());
// Points checkpoints_dir/latest at `step_dir_name`, atomically and durably.
Status WriteLatest(const std::string& checkpoints_dir, const std::string& step_dir_name, Env* env = Env::Default());

struct SaveStats {
  int64_t step = 0;
  uint64_t bytes = 0;         // all ranks' shard bytes
  double write_s = 0.0;       // slowest rank's background write time
  double snapshot_ms = 0.0;   // the training stall: copying blocks to host memory
  double total_s = 0.0;       // Start() to the manifest and latest written
  std::string dir;
};

class CheckpointSaver {
 public:
  // `checkpoints_dir` is the run's checkpoints/ directory; keep <= 0 keeps
  // every checkpoint. `tokenizer` ("" for none) is copied into each one.
  // Every file goes through `env`, which must outlive the saver.
  CheckpointSaver(std::string checkpoints_dir, Communicator* world, int keep, std::string tokenizer,
                  Env* env = Env::Default());
  ~CheckpointSaver();

  // Collective. Completes a save in flight, then starts saving `pieces` (the
  // saved_here ones) under `header` (every field but the tensors).
  Status Start(const Checkpoint& header, const std::vector<StatePiece>& pieces);
  // Collective. Completes the save in flight when every rank has finished
  // writing, or, with wait, after waiting for them; returns its stats then.
  Result<std::optional<SaveStats>> Poll(bool wait);
  bool in_flight() const { return in_flight_; }

 private:
  Status PrepareDirectory(const std::string& dir);
  Status Finalize();
  void ApplyRetention();

  std::string checkpoints_dir_;
  Communicator* world_;
  int keep_;
  std::string tokenizer_;
  Env* env_;

  bool in_flight_ = false;
  Checkpoint header_;
  std::string step_dir_;
  std::vector<float> snapshot_;
  std::vector<StatePiece> snapshot_pieces_;
  std::thread writer_;
  std::atomic<bool> written_{false};
  Status write_status_;
  double write_s_ = 0.0;
  uint64_t bytes_ = 0;
  double snapshot_ms_ = 0.0;
  double start_time_ = 0.0;
};

}  // namespace latam::ckpt
