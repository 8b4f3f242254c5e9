// latam-train: the trainer's command line.
//
//   latam-train --config FILE.textproto [--set key=value ...]
//               [--resume auto|none|DIR]
//               [--plan [--gpu h100|h200] [--gpus-per-node N] [--network ib|efa]
//                       [--attention-fraction F]]
//
// --plan prints the JSON plan (trainer/plan.h) and exits without MPI or
// allocation. With data.document_mask it reads the first 512 samples of the
// run's data, when the shards exist, for the share of causal attention's
// work that block-causal attention does (--attention-fraction F sets it
// instead); --gpu adds whether the rank fits that GPU and the predicted
// step time (trainer/step_time.h) with N GPUs per node (default 8) joined
// by NDR InfiniBand (ib, default) or AWS EFA. Otherwise the process joins
// the MPI job and trains.
// --resume auto (default) continues from run_dir/checkpoints/latest when it
// exists; none refuses a run_dir that has checkpoints; DIR loads that
// checkpoint (a step directory or a checkpoints/ directory) under the
// config's layout.
// Exit codes: 0 ok, 2 bad input (config, data, world size, checkpoint),
// 3 preempted by SIGTERM/SIGUSR1 after saving (or before the first step,
// with nothing new to save), 1 other failures.
// This is latam-train-main; build/bin/latam-train is the launcher that
// starts it with the pre-emption signals blocked (trainer/train_launcher.cc).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/escape.h"
#include "core/threads.h"
#include "parallel/mpi_env.h"
#include "trainer/config.h"
#include "trainer/plan.h"
#include "trainer/signals.h"
#include "trainer/trainer.h"

namespace {

constexpr const char* kUsage =
    "usage: latam-train --config FILE.textproto [--set key=value ...] [--resume auto|none|DIR]\n"
    "                   [--plan [--gpu h100|h200] [--gpus-per-node N] [--network ib|efa]\n"
    "                           [--attention-fraction F]]\n";

struct Args {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string resume = "auto";
  bool plan = false;
  latam::PlanOptions plan_options;
  bool plan_machine_flags = false;  // --gpus-per-node or --network given
  bool attention_fraction_set = false;
};

latam::Result<Args> ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag) -> latam::Result<std::string> {
      if (i + 1 >= argc) return latam::Status::InvalidInput(std::string(flag) + " needs a value\n" + kUsage);
      return std::string(argv[++i]);
    };
    if (arg == "--config") {
      LATAM_ASSIGN_OR_RETURN(a.config_path, value("--config"));
    } else if (arg == "--set") {
      LATAM_ASSIGN_OR_RETURN(std::string v, value("--set"));
      a.overrides.push_back(v);
    } else if (arg == "--resume") {
      LATAM_ASSIGN_OR_RETURN(a.resume, value("--resume"));
    } else if (arg == "--plan") {
      a.plan = true;
    } else if (arg == "--attention-fraction") {
      LATAM_ASSIGN_OR_RETURN(std::string v, value("--attention-fraction"));
      char* end = nullptr;
      const double f = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(f > 0.0 && f <= 1.0)) {
        return latam::Status::InvalidInput("--attention-fraction must be a number in (0, 1] (got '" + v + "')");
      }
      a.plan_options.attention_fraction = f;
      a.attention_fraction_set = true;
    } else if (arg == "--gpu") {
      LATAM_ASSIGN_OR_RETURN(a.plan_options.gpu, value("--gpu"));
      if (a.plan_options.gpu != "h100" && a.plan_options.gpu != "h200") {
        return latam::Status::InvalidInput("--gpu must be h100 or h200 (got '" + a.plan_options.gpu + "')");
      }
    } else if (arg == "--gpus-per-node") {
      LATAM_ASSIGN_OR_RETURN(std::string v, value("--gpus-per-node"));
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || n < 1 || n > 1024) {
        return latam::Status::InvalidInput("--gpus-per-node must be a positive integer (got '" + v + "')");
      }
      a.plan_options.gpus_per_node = static_cast<int>(n);
      a.plan_machine_flags = true;
    } else if (arg == "--network") {
      LATAM_ASSIGN_OR_RETURN(a.plan_options.network, value("--network"));
      if (a.plan_options.network != "ib" && a.plan_options.network != "efa") {
        return latam::Status::InvalidInput("--network must be ib or efa (got '" + a.plan_options.network + "')");
      }
      a.plan_machine_flags = true;
    } else if (arg == "--help" || arg == "-h") {
      return latam::Status::InvalidInput(kUsage);
    } else {
      return latam::Status::InvalidInput("unknown argument '" + arg + "'\n" + kUsage);
    }
  }
  if (!a.plan && a.attention_fraction_set) {
    return latam::Status::InvalidInput(std::string("--attention-fraction goes with --plan\n") + kUsage);
  }
  if (!a.plan && (!a.plan_options.gpu.empty() || a.plan_machine_flags)) {
    return latam::Status::InvalidInput(std::string("--gpu, --gpus-per-node and --network go with --plan\n") + kUsage);
  }
  if (a.plan_machine_flags && a.plan_options.gpu.empty()) {
    return latam::Status::InvalidInput(std::string("--gpus-per-node and --network need --gpu\n") + kUsage);
  }
  if (a.config_path.empty()) return latam::Status::InvalidInput(std::string("--config is required\n") + kUsage);
  return a;
}

latam::Result<latam::Config> LoadConfig(const Args& args) {
  LATAM_ASSIGN_OR_RETURN(latam::Config config, latam::LoadConfigFile(args.config_path));
  for (const std::string& o : args.overrides) LATAM_RETURN_IF_ERROR(latam::ApplyOverride(&config, o));
  return config;
}

int Fail(const latam::Status& s, int rank) {
  const char* kind = s.code() == latam::StatusCode::kPreempted ? "preempted" : "error";
  if (rank == 0) std::fprintf(stderr, "latam-train: %s: %s\n", kind, latam::EscapeControlBytes(s.message()).c_str());
  return s.exit_code();
}

// The signal any rank has received (the largest number), 0 if none: every
// rank learns the same answer. Collective over MPI_COMM_WORLD.
int SignalOnAnyRank() {
  int local = latam::PreemptionSignal();
  int any = 0;
  MPI_CHECK(MPI_Allreduce(&local, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  return any;
}

// A pre-emption signal that came before the first step stops the job
// without training or saving: the run's state is still what it started
// from (its latest checkpoint, or nothing yet), so there is nothing new to
// save. Exit code 3 all the same, so that a launcher resumes the job.
latam::Status StoppedBeforeTraining(int signal, int64_t step) {
  return latam::Status::Preempted("stopped by signal " + std::to_string(signal) + " before step " +
                                  std::to_string(step + 1) +
                                  " (nothing new to save); resume with --resume auto");
}

// Trains on this rank; returns latam-train's exit code.
int Train(const Args& args, const latam::Config& config, const latam::MpiSession& mpi) {
  // Every rank is past MPI_Init with the signals blocked once this returns.
  if (const int signal = SignalOnAnyRank(); signal != 0) {
    return Fail(StoppedBeforeTraining(signal, 0), mpi.world_rank());
  }
  if (mpi.world_rank() == 0) latam::WriteLauncherStatus("running", config.train().run_dir(), -1);
  const int threads = latam::ConfigureCpuThreads(mpi.local_size());
  auto trainer = latam::Trainer::Create(config, mpi, args.resume);
  if (!trainer.ok()) return Fail(trainer.status(), mpi.world_rank());
  // Building or loading the model can take minutes: a signal that came
  // meanwhile stops the job before it trains.
  if (const int signal = SignalOnAnyRank(); signal != 0) {
    return Fail(StoppedBeforeTraining(signal, (*trainer)->start_step()), mpi.world_rank());
  }
  if (mpi.world_rank() == 0) {
    const auto& p = config.parallel();
    std::string context;  // shown when the layout has it
    if (p.context() > 1) context.append(" x context ").append(std::to_string(p.context()));
    std::printf(
        "latam-train: %lld parameters, %d ranks (tensor %d%s x pipeline %d x data %d, %d virtual stages, "
        "ZeRO-%d), %d CPU threads per rank, %d micro-batches per step, run_dir %s\n",
        static_cast<long long>(latam::ModelShape::FromConfig(config.model()).ParameterCount()), mpi.world_size(),
        p.tensor(), context.c_str(), p.pipeline(), latam::DataParallelSize(config, mpi.world_size()),
        p.virtual_stages(), p.zero_stage(), threads, (*trainer)->engine().micro_batches(),
        config.train().run_dir().c_str());
  }
  const latam::Status status = (*trainer)->Run();
  if (!status.ok()) return Fail(status, mpi.world_rank());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto args = ParseArgs(argc, argv);
  if (!args.ok()) return Fail(args.status(), 0);
  auto config = LoadConfig(*args);
  if (!config.ok()) return Fail(config.status(), 0);

  if (args->plan) {
    latam::PlanOptions options = args->plan_options;
    // Block-causal attention costs what the documents give: measured on
    // the run's own first samples when its data is there.
    if (config->data().document_mask() && !args->attention_fraction_set) {
      bool have_data = config->data().train_size() > 0;
      std::error_code ec;
      for (const auto& t : config->data().train()) have_data = have_data && std::filesystem::exists(t.path(), ec);
      if (have_data) {
        auto fraction = latam::EstimateAttentionFraction(*config, 512);
        if (!fraction.ok()) return Fail(fraction.status(), 0);
        options.attention_fraction = *fraction;
      }
    }
    auto plan = latam::PlanJson(*config, options);
    if (!plan.ok()) return Fail(plan.status(), 0);
    std::printf("%s\n", plan->c_str());
    return 0;
  }

  // From here on a pre-emption signal is a request to save and stop (checked
  // after each step), also while MPI starts and the model is built or loaded.
  // (The latam-train launcher has blocked the signals since the process
  // started; this starts the thread that collects them.)
  latam::WatchPreemptionSignals();
  latam::MpiSession mpi(&argc, &argv);
  const int code = Train(*args, *config, mpi);
  if (mpi.world_rank() == 0) latam::WriteLauncherStatus("exited", config->train().run_dir(), code);
  return code;
}
