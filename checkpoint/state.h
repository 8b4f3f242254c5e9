// Saving and restoring one rank's training state: parameters and AdamW
// moments as blocks of global tensors (checkpoint/store.h), written
// asynchronously, and loaded into any layout.
//
// Which blocks a rank holds. A parameter's block is its ParamSpec's place in
// the global tensor (a row or column range under tensor parallelism, the
// whole tensor otherwise). Its moments are the same block under ZeRO-0; under
// ZeRO-1 a rank keeps the moments of a flat slice of its parameter arena, so
// each piece of a tensor inside the slice is a flat element range of the
// local block, split into at most three rectangles (a partial first row,
// whole rows, a partial last row) placed in global coordinates.
//
// Which copy is written. Every element is stored once: only the copy that
// counts in the gradient norm (ParamSpec::counted: tensor-parallel rank 0
// for the norm gains, the first replica of a replicated KV head, the first
// stage's tied embedding), and among data-parallel replicas only replica 0
// (parameters; ZeRO-0 moments) or the slice's owner (ZeRO-1 moments).
// Loading fills every copy a rank holds, replicas included.
//
// Saving protocol (CheckpointSaver; all ranks, main thread):
//   1. Start(): rank 0 creates checkpoints/step_XXXXXXXX/ (removing a stale
//      incomplete one) and copies the tokenizer; all ranks agree; each rank
//      copies its blocks to host memory (a buffer kept for the next save:
//      one more copy of the rank's state) and a background thread writes
//      rank_NNNNN.bin and rank_NNNNN.index.pb and fsyncs them. Training goes on.
//   2. Poll() between steps: when every rank has finished writing (agreed by
//      an all-reduce, so MPI is only called from the main thread), rank 0
//      merges the indexes into manifest.pb (fsync, rename), then replaces
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
#include "kernels/status.h"
#include "parallel/communicator.h"
#include "trainer/optimizer.h"
#include "trainer/parameters.h"

namespace latam::ckpt {

inline constexpr const char* kExpAvgSuffix = ".exp_avg";
inline constexpr const char* kExpAvgSqSuffix = ".exp_avg_sq";

// One block of the training state held by this rank.
struct StatePiece {
  std::string name;  // tensor name, with a moment suffix for moments
  std::vector<int64_t> global_shape;
  Block block;
  float* data = nullptr;  // the block's elements, row-major, in live memory
  bool saved_here = false;
  bool moment = false;
  Device device = Device::kCPU;  // where `data` lives (a CUDA run's state is on its GPU)
};

// Splits flat elements [begin, end) of a block `origin` (1-D or 2-D, its
// elements row-major) into at most three rectangles in the tensor's
// coordinates: a partial first row, whole rows, a partial last row. Each
// comes with the flat index (within origin) of its first element.
std::vector<std::pair<Block, int64_t>> FlatRangeBlocks(const Block& origin, int64_t begin, int64_t end);

// This rank's blocks of the parameters and (when `optimizer` is given) of
// the Adam moments; dp_rank is its data-parallel index.
std::vector<StatePiece> EngineState(const ParameterSet& params, const AdamWOptimizer* optimizer, int dp_rank);

// What a checkpoint contributes to a run that starts from it.
enum class LoadWhat {
  kWeights,               // parameters only: fresh optimizer, step 0, data from sample 0
  kWeightsAndOptimizer,   // + Adam moments and step counter; schedule and data from 0
  kAll,                   // everything: a resume
};
Result<LoadWhat> ParseLoadWhat(const std::string& text);

struct LoadResult {
  int64_t step = 0;               // optimizer steps already taken
  uint64_t consumed_samples = 0;  // where the sampler continues
  bool moments_loaded = false;
};

// Fails (naming the field) unless the checkpoint holds the same architecture.
Status CheckSameModel(const Checkpoint& manifest, const config::ModelConfig& model, const std::string& where);

// Loads this rank's blocks from `reader` (every rank of a job calls it with
// its own pieces).
Result<LoadResult> LoadState(CheckpointReader& reader, const config::ModelConfig& model,
                             const std::vector<StatePiece>& pieces, AdamWOptimizer* optimizer, LoadWhat what);

// The two halves of a save, for one process (CheckpointSaver runs them on
// every rank and on rank 0; tools and tests call them directly).
// Writes the saved_here pieces to step_dir/rank_NNNNN.bin and its index,
// durably; *bytes gets the shard bytes written.
Status WriteRankShards(const std::string& step_dir, int rank, const std::vector<StatePiece>& pieces,
                       uint64_t* bytes = nullptr);
// Merges the indexes of ranks [0, ranks) into `header`'s tensors and writes
// step_dir/manifest.pb durably; the rank indexes are then removed.
Status WriteManifest(const std::string& step_dir, int ranks, const Checkpoint& header);
// Points checkpoints_dir/latest at `step_dir_name`, atomically.
Status WriteLatest(const std::string& checkpoints_dir, const std::string& step_dir_name);

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
  CheckpointSaver(std::string checkpoints_dir, Communicator* world, int keep, std::string tokenizer);
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
