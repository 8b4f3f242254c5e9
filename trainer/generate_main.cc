// latam-generate: continues a prompt with a checkpointed model.
//
//   latam-generate --checkpoint DIR --prompt TEXT [--max-new-tokens N]
//                  [--min-new-tokens N] [--temperature T] [--top-p P]
//                  [--seed S] [--tokenizer FILE] [--device cpu|cuda]
//
// One process, any saved layout: the checkpoint's tensors are read whole
// into the single-process layout (checkpoint/convert.h) and the text is
// produced with a key/value cache (model/generate.h) through the model's
// own ops: fp32 on the CPU (the default), or on the first GPU with --device
// cuda (bf16 weights, activations and cache, fp32 accumulation and logits),
// which is bad input (exit 2) when the build has no CUDA or no GPU is
// visible. The tokenizer is the
// one saved with the checkpoint unless --tokenizer is given. Temperature 0
// is greedy. Prints the continuation (not the prompt) on stdout; generation
// stops early at the tokenizer's end-of-text token, but not before
// --min-new-tokens tokens (default 0).
// Numbers are parsed whole and range-checked: --max-new-tokens and
// --min-new-tokens are integers >= 0 (min <= max), and the prompt plus
// --max-new-tokens may not exceed the model's max_seq_len; --temperature is
// finite and >= 0, --top-p in (0, 1], --seed an integer in [0, 2^64).
// Exit codes: 0 ok, 2 bad input (checkpoint, tokenizer, arguments), 1 other.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "core/escape.h"
#include "trainer/compute_device.h"
#include "trainer/load_model.h"
#ifdef LATAM_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif
#include "data/tokenizer.h"
#include "core/threads.h"
#include "model/generate.h"

namespace {

using latam::Result;
using latam::Status;

constexpr const char* kUsage =
    "usage: latam-generate --checkpoint DIR --prompt TEXT [--max-new-tokens N] [--min-new-tokens N]\n"
    "                      [--temperature T] [--top-p P] [--seed S] [--tokenizer FILE]\n"
    "                      [--device cpu|cuda]\n";

struct Args {
  std::string checkpoint, prompt, tokenizer;
  bool has_prompt = false;
  bool cuda = false;
  latam::GenerateOptions options;
};

// Flag values are parsed whole (no trailing text, no leading space), and
// out-of-range or non-finite values are bad input naming the flag.
Result<int64_t> Integer(const std::string& flag, const std::string& text, int64_t min, int64_t max) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0])) || *end != '\0') {
    return Status::InvalidInput(flag + " " + text + ": not an integer");
  }
  if (errno == ERANGE || v < min || v > max) {
    return Status::InvalidInput(flag + " " + text + ": must be in [" + std::to_string(min) + ", " +
                                std::to_string(max) + "]");
  }
  return static_cast<int64_t>(v);
}

Result<uint64_t> Unsigned(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0])) || *end != '\0') {
    return Status::InvalidInput(flag + " " + text + ": not an unsigned integer");
  }
  if (errno == ERANGE) return Status::InvalidInput(flag + " " + text + ": must be below 2^64");
  return static_cast<uint64_t>(v);
}

Result<double> FiniteNumber(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0])) || *end != '\0') {
    return Status::InvalidInput(flag + " " + text + ": not a number");
  }
  if (!std::isfinite(v)) return Status::InvalidInput(flag + " " + text + ": must be a finite number");
  return v;
}

Result<Args> ParseArgs(int argc, char** argv) {
  Args a;
  a.options.max_new_tokens = 64;
  a.options.temperature = 0.8;
  a.options.top_p = 0.95;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return Status::InvalidInput(kUsage);
    if (i + 1 >= argc) return Status::InvalidInput("unknown or incomplete argument '" + arg + "'\n" + kUsage);
    const std::string value = argv[++i];
    if (arg == "--checkpoint") {
      a.checkpoint = value;
    } else if (arg == "--prompt") {
      a.prompt = value;
      a.has_prompt = true;
    } else if (arg == "--tokenizer") {
      a.tokenizer = value;
    } else if (arg == "--device") {
      if (value != "cpu" && value != "cuda") {
        return Status::InvalidInput("--device " + value + ": expected cpu or cuda\n" + kUsage);
      }
      a.cuda = value == "cuda";
    } else if (arg == "--max-new-tokens") {
      // The model's max_seq_len bounds it further, once the checkpoint is read.
      LATAM_ASSIGN_OR_RETURN(a.options.max_new_tokens, Integer(arg, value, 0, std::numeric_limits<int32_t>::max()));
    } else if (arg == "--min-new-tokens") {
      LATAM_ASSIGN_OR_RETURN(a.options.min_new_tokens, Integer(arg, value, 0, std::numeric_limits<int32_t>::max()));
    } else if (arg == "--temperature") {
      LATAM_ASSIGN_OR_RETURN(a.options.temperature, FiniteNumber(arg, value));
      if (a.options.temperature < 0) return Status::InvalidInput(arg + " " + value + ": must be >= 0 (0 is greedy)");
    } else if (arg == "--top-p") {
      LATAM_ASSIGN_OR_RETURN(a.options.top_p, FiniteNumber(arg, value));
      if (!(a.options.top_p > 0 && a.options.top_p <= 1)) {
        return Status::InvalidInput(arg + " " + value + ": must be in (0, 1]");
      }
    } else if (arg == "--seed") {
      LATAM_ASSIGN_OR_RETURN(a.options.seed, Unsigned(arg, value));
    } else {
      return Status::InvalidInput("unknown argument '" + arg + "'\n" + kUsage);
    }
  }
  if (a.checkpoint.empty()) return Status::InvalidInput(std::string("--checkpoint is required\n") + kUsage);
  if (!a.has_prompt) return Status::InvalidInput(std::string("--prompt is required\n") + kUsage);
  if (a.options.min_new_tokens > a.options.max_new_tokens) {
    return Status::InvalidInput("--min-new-tokens " + std::to_string(a.options.min_new_tokens) +
                                ": more than --max-new-tokens " + std::to_string(a.options.max_new_tokens));
  }
  return a;
}

Status Main(int argc, char** argv) {
  LATAM_ASSIGN_OR_RETURN(const Args args, ParseArgs(argc, argv));
  // The GPU first: no point reading a checkpoint for a device that is not there.
  std::unique_ptr<latam::ComputeDevice> gpu;
  if (args.cuda) {
#ifdef LATAM_HAVE_CUDA
    if (latam::cuda::DeviceCount() == 0) {
      return Status::InvalidInput("--device cuda: no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)");
    }
#else
    return Status::InvalidInput("--device cuda: this build has no CUDA (configure with LATAM_CUDA=ON where nvcc "
                                "exists)");
#endif
    auto opened = latam::ComputeDevice::Open(0, 1, 0, latam::AttentionChoice::kAuto);
    if (!opened.ok()) return Status::InvalidInput("--device cuda: " + opened.status().message());
    gpu = std::move(opened).value();
  }
  LATAM_ASSIGN_OR_RETURN(const latam::LoadedModel model, latam::LoadModel(args.checkpoint));
  const std::string tokenizer_path = args.tokenizer.empty() ? model.tokenizer_path : args.tokenizer;
  if (tokenizer_path.empty()) {
    return Status::InvalidInput("checkpoint " + args.checkpoint + " has no tokenizer.json; pass --tokenizer FILE");
  }
  LATAM_ASSIGN_OR_RETURN(auto tokenizer, latam::data::Tokenizer::Load(tokenizer_path));
  if (tokenizer->vocab_size() > static_cast<uint32_t>(model.shape.vocab)) {
    return Status::InvalidInput("tokenizer " + tokenizer_path + " has " + std::to_string(tokenizer->vocab_size()) +
                                " tokens, more than the model's vocabulary of " + std::to_string(model.shape.vocab));
  }
  std::vector<int32_t> prompt;
  for (uint32_t id : tokenizer->Encode(args.prompt)) prompt.push_back(static_cast<int32_t>(id));
  if (prompt.empty()) {
    // An empty prompt starts from the beginning-of-text token when there is one.
    if (auto bos = tokenizer->TokenId("<|begin_of_text|>")) prompt.push_back(static_cast<int32_t>(*bos));
  }
  if (prompt.empty()) return Status::InvalidInput("--prompt: empty, and the tokenizer has no <|begin_of_text|>");
  // Every prompt and generated token takes one position of the model's
  // context (and of the key/value cache sized for it).
  const int64_t max_seq_len = model.shape.max_seq_len;
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  if (prompt_len >= max_seq_len) {
    return Status::InvalidInput("--prompt: " + std::to_string(prompt_len) + " tokens, but the model's max_seq_len is " +
                                std::to_string(max_seq_len) + " (the prompt must leave room for new tokens)");
  }
  if (prompt_len + args.options.max_new_tokens > max_seq_len) {
    return Status::InvalidInput("--max-new-tokens " + std::to_string(args.options.max_new_tokens) +
                                ": the prompt's " + std::to_string(prompt_len) + " tokens plus the new ones exceed "
                                "the model's max_seq_len of " + std::to_string(max_seq_len) + "; at most " +
                                std::to_string(max_seq_len - prompt_len) + " new tokens");
  }
  latam::GenerateOptions options = args.options;
  for (const char* stop : {"<|end_of_text|>", "<|eot_id|>"}) {
    if (auto id = tokenizer->TokenId(stop)) options.stop_ids.push_back(static_cast<int32_t>(*id));
  }
  const int64_t context = static_cast<int64_t>(prompt.size()) + std::max<int64_t>(options.max_new_tokens, 1);
  std::unique_ptr<latam::ParameterSet> gpu_params;
  if (gpu != nullptr) {
    gpu_params = latam::PlaceParameters(
        *model.params, latam::ParameterPlacement{latam::Device::kCUDA, latam::DType::kBF16, gpu->stream()});
  }
  latam::Generator generator(model.shape, gpu_params != nullptr ? *gpu_params : *model.params, context);
  LATAM_ASSIGN_OR_RETURN(std::vector<int32_t> out, generator.Generate(prompt, options));
  std::vector<uint32_t> ids;
  for (int32_t id : out) {
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), id) != options.stop_ids.end()) break;
    // The model's vocabulary may be padded beyond the tokenizer's.
    if (tokenizer->IsValidId(static_cast<uint32_t>(id))) ids.push_back(static_cast<uint32_t>(id));
  }
  std::printf("%s\n", tokenizer->Decode(ids).c_str());
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  latam::ConfigureCpuThreads(1);
  const Status s = Main(argc, argv);
  if (s.ok()) return 0;
  std::fprintf(stderr, "latam-generate: error: %s\n", latam::EscapeControlBytes(s.message()).c_str());
  return s.exit_code();
}
