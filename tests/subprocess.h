// Running commands from tests (exit code, stdout and stderr) and reading
// what a training run wrote.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <cstdint>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace latam::testing {

struct CommandResult {
  int exit_code = -1;  // -1 when the command did not exit normally
  std::string out, err;
};

inline std::string ReadFileBytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs `command` with /bin/sh in `cwd`, capturing its output through files
// in `scratch_dir`.
inline CommandResult RunCommand(const std::string& command, const std::filesystem::path& cwd,
                                const std::filesystem::path& scratch_dir) {
  const auto out = scratch_dir / "stdout.txt", err = scratch_dir / "stderr.txt";
  const std::string cmd =
      "cd '" + cwd.string() + "' && " + command + " >'" + out.string() + "' 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadFileBytes(out);
  r.err = ReadFileBytes(err);
  return r;
}

// step -> loss of the training lines of a run's metrics.jsonl.
inline std::map<int64_t, double> TrainingLosses(const std::filesystem::path& metrics_jsonl) {
  std::map<int64_t, double> out;
  std::ifstream in(metrics_jsonl);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

// Whether `program` is on PATH.
inline bool HaveProgram(const std::string& program) {
  return std::system(("command -v " + program + " >/dev/null 2>&1").c_str()) == 0;
}

}  // namespace latam::testing
