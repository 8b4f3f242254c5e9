// latam-eval: scores a checkpointed model on benchmark tasks.
//
//   latam-eval --checkpoint DIR --tasks FILE.jsonl [--tokenizer FILE] [--device cpu]
//   mpirun -np N latam-eval ...            (data parallel over the items)
//
// The task file and the scoring are described in trainer/eval.h. Every rank
// loads the whole model (any saved layout, as latam-generate does: one full
// fp32 copy per process, on the CPU) and the tokenizer saved with the
// checkpoint unless --tokenizer is given, reads and tokenizes the whole task
// file (so every rank finds the same bad input and exits 2 with it), then
// scores the items
// i = rank, rank + N, rank + 2N, ... of the file (whole items: a text's
// windows and an item's choices stay on one rank). Each item's values go
// into a vector indexed by item that is zero elsewhere, and MPI sums those
// vectors onto rank 0: every entry has one non-zero contributor, so the sum
// is exact, and rank 0 reduces per task in file order. The output is thus
// bitwise the same for any number of ranks, as long as each rank's kernels
// compute a sequence the same way: a span's padded length depends on the
// span alone (PaddedRows), and the ranks run the same thread count
// (OMP_NUM_THREADS pins it; by default it is the node's cores over its
// ranks, and a different team size may change the last bits of a GEMM).
// Without mpirun it runs as one process.
//
// Rank 0 prints one JSON line per task, in order of first appearance:
//   {"task":"es/perplexity","n":40,"perplexity":35.2,"tokens":10432}
//   {"task":"es/continuation","n":40,"accuracy":0.55,"accuracy_norm":0.6}
// Only --device cpu is supported for now (the flag exists so that scripts can
// name it); cuda is bad input.
// Exit codes: 0 ok, 2 bad input (checkpoint, tokenizer, task file,
// arguments), 1 other.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "core/escape.h"
#include "core/threads.h"
#include "parallel/mpi_env.h"
#include "trainer/eval.h"

namespace {

using latam::Result;
using latam::Status;

constexpr const char* kUsage =
    "usage: latam-eval --checkpoint DIR --tasks FILE.jsonl [--tokenizer FILE] [--device cpu]\n"
    "       (under mpirun the items are split over the ranks)\n";

struct Args {
  latam::EvalModelOptions model;
  std::string tasks;
};

Result<Args> ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return Status::InvalidInput(kUsage);
    if (i + 1 >= argc) return Status::InvalidInput("unknown or incomplete argument '" + arg + "'\n" + kUsage);
    const std::string value = argv[++i];
    if (arg == "--checkpoint") {
      a.model.checkpoint = value;
    } else if (arg == "--tasks") {
      a.tasks = value;
    } else if (arg == "--tokenizer") {
      a.model.tokenizer = value;
    } else if (arg == "--device") {
      if (value == "cuda") {
        return Status::InvalidInput("--device cuda: latam-eval runs on the CPU only (use --device cpu)");
      }
      if (value != "cpu") return Status::InvalidInput("--device " + value + ": expected cpu\n" + kUsage);
    } else {
      return Status::InvalidInput("unknown argument '" + arg + "'\n" + kUsage);
    }
  }
  if (a.model.checkpoint.empty()) return Status::InvalidInput(std::string("--checkpoint is required\n") + kUsage);
  if (a.tasks.empty()) return Status::InvalidInput(std::string("--tasks is required\n") + kUsage);
  return a;
}

Status Main(int argc, char** argv, const latam::MpiSession& mpi) {
  LATAM_ASSIGN_OR_RETURN(const Args args, ParseArgs(argc, argv));
  // The task file first: its errors need no checkpoint.
  LATAM_ASSIGN_OR_RETURN(const latam::EvalTasks tasks, latam::ReadEvalTasks(args.tasks));
  LATAM_ASSIGN_OR_RETURN(latam::EvalModel model, latam::LoadEvalModel(args.model));
  const int64_t max_seq_len = model.model.shape.max_seq_len;
  LATAM_ASSIGN_OR_RETURN(
      const std::vector<latam::ItemSpans> spans,
      latam::BuildItemSpans(tasks, *model.tokenizer, latam::EvalPrefixToken(*model.tokenizer), max_seq_len));

  // Item i's values start at offset[i] of the exchanged vector.
  const size_t n_items = tasks.items.size();
  std::vector<size_t> offset(n_items + 1, 0);
  for (size_t i = 0; i < n_items; ++i) {
    const latam::EvalItem& item = tasks.items[i];
    offset[i + 1] = offset[i] + latam::ItemValueCount(item, tasks.tasks[item.task].kind);
  }
  // This rank's items, and all their spans scored in one go (grouped by
  // padded length inside ScoreSpans).
  const size_t rank = static_cast<size_t>(mpi.world_rank()), world = static_cast<size_t>(mpi.world_size());
  std::vector<const latam::ScoredSpan*> mine;
  for (size_t i = rank; i < n_items; i += world) {
    for (const latam::ScoredSpan& span : spans[i].spans) mine.push_back(&span);
  }
  const std::vector<double> nll = latam::ScoreSpans(model.model.shape, *model.model.params, mine);
  model.model.params.reset();
  std::vector<double> local(offset.back(), 0.0);
  size_t next = 0;
  for (size_t i = rank; i < n_items; i += world) {
    const latam::EvalItem& item = tasks.items[i];
    const size_t count = spans[i].spans.size();
    const std::vector<double> span_nll(nll.begin() + static_cast<std::ptrdiff_t>(next),
                                       nll.begin() + static_cast<std::ptrdiff_t>(next + count));
    next += count;
    const std::vector<double> v = latam::ItemValues(item, tasks.tasks[item.task].kind, spans[i], span_nll);
    std::copy(v.begin(), v.end(), local.begin() + static_cast<std::ptrdiff_t>(offset[i]));
  }
  std::vector<double> total(local.size(), 0.0);
  MPI_CHECK(MPI_Reduce(local.data(), total.data(), static_cast<int>(local.size()), MPI_DOUBLE, MPI_SUM, 0,
                       MPI_COMM_WORLD));
  if (rank != 0) return Status::Ok();
  std::vector<std::vector<double>> values(n_items);
  for (size_t i = 0; i < n_items; ++i) {
    values[i].assign(total.begin() + static_cast<std::ptrdiff_t>(offset[i]),
                     total.begin() + static_cast<std::ptrdiff_t>(offset[i + 1]));
  }
  for (const latam::TaskResult& r : latam::SummarizeTasks(tasks, values)) {
    std::printf("%s\n", latam::TaskResultJson(r).c_str());
  }
  std::fflush(stdout);
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  latam::MpiSession mpi(&argc, &argv);
  latam::ConfigureCpuThreads(mpi.local_size());
  const Status s = Main(argc, argv, mpi);
  if (s.ok()) return 0;
  // Every rank reads the same inputs and meets the same error; one prints it.
  if (mpi.world_rank() == 0) {
    std::fprintf(stderr, "latam-eval: error: %s\n", latam::EscapeControlBytes(s.message()).c_str());
  }
  return s.exit_code();
}
