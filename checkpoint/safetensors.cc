#include "checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <utility>

#include "core/check.h"
#include "core/tensor.h"

namespace latam::ckpt {
namespace {

namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is read in place; big-endian hosts are not supported");

// The reference implementation refuses headers above 100 MB; so do we, which
// also bounds the allocation a corrupt length could ask for.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Staging buffer for converting BF16/F16 tensors while reading.
constexpr size_t kConvertChunkElems = size_t{4} << 20;

std::string Errno() { return std::strerror(errno); }

std::string Quote(const std::string& s) { return "'" + s + "'"; }

// numel of `shape` times `elem_size`, false on a negative dimension or overflow.
bool ByteSize(const std::vector<int64_t>& shape, size_t elem_size, uint64_t* numel, uint64_t* bytes) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  uint64_t b = 0;
  if (__builtin_mul_overflow(n, static_cast<uint64_t>(elem_size), &b)) return false;
  *numel = n;
  *bytes = b;
  return true;
}

std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A non-negative JSON integer, false for anything else (floats included).
bool GetU64(const nlohmann::ordered_json& j, uint64_t* out) {
  if (!j.is_number_unsigned()) return false;
  *out = j.get<uint64_t>();
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------
// dtypes and conversions

const char* StDTypeName(StDType dtype) {
  switch (dtype) {
    case StDType::kF32:
      return "F32";
    case StDType::kBF16:
      return "BF16";
    case StDType::kF16:
      return "F16";
  }
  return "?";
}

bool ParseStDType(const std::string& name, StDType* dtype) {
  if (name == "F32") {
    *dtype = StDType::kF32;
  } else if (name == "BF16") {
    *dtype = StDType::kBF16;
  } else if (name == "F16") {
    *dtype = StDType::kF16;
  } else {
    return false;
  }
  return true;
}

size_t StDTypeSize(StDType dtype) { return dtype == StDType::kF32 ? 4 : 2; }

uint16_t F32ToBF16Bits(float f) { return BF16::FromFloat(f).bits; }

float BF16BitsToF32(uint16_t bits) {
  BF16 b;
  b.bits = bits;
  return b.ToFloat();
}

float F16BitsToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h >> 15) << 31;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exactly representable as a float.
    const float mag = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -mag : mag;
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);  // inf, or NaN keeping its payload
  } else {
    u = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(u);
}

void ConvertToF32(StDType dtype, const void* in, size_t n, float* out) {
  if (dtype == StDType::kF32) {
    std::memcpy(out, in, n * sizeof(float));
    return;
  }
  const auto* src = static_cast<const uint16_t*>(in);
  if (dtype == StDType::kBF16) {
    for (size_t i = 0; i < n; ++i) out[i] = BF16BitsToF32(src[i]);
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = F16BitsToF32(src[i]);
  }
}

void ConvertFromF32(StDType dtype, const float* in, size_t n, void* out) {
  LATAM_CHECK(dtype != StDType::kF16, "conversion of float to F16 is not supported");
  if (dtype == StDType::kF32) {
    std::memcpy(out, in, n * sizeof(float));
    return;
  }
  auto* dst = static_cast<uint16_t*>(out);
  for (size_t i = 0; i < n; ++i) dst[i] = F32ToBF16Bits(in[i]);
}

int64_t StEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------
// SafetensorsWriter

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<StEntry> entries, StMetadata metadata)
    : path_(std::move(path)), entries_(std::move(entries)), metadata_(std::move(metadata)) {}

SafetensorsWriter::~SafetensorsWriter() {
  if (!finished_) Abandon();
}

void SafetensorsWriter::Abandon() { file_.reset(); }

Status SafetensorsWriter::Begin() {
  if (file_ != nullptr || finished_) return Status::Internal(path_ + ": SafetensorsWriter::Begin called twice");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (StEntry& e : entries_) {
    if (e.name.empty() || e.name == "__metadata__") {
      return Status::InvalidInput(path_ + ": invalid tensor name " + Quote(e.name));
    }
    if (!seen.insert(e.name).second) return Status::InvalidInput(path_ + ": duplicate tensor " + Quote(e.name));
    uint64_t numel = 0, bytes = 0;
    if (!ByteSize(e.shape, StDTypeSize(e.dtype), &numel, &bytes) || __builtin_add_overflow(offset, bytes, &e.end)) {
      return Status::InvalidInput(path_ + ": tensor " + Quote(e.name) + " has an invalid shape " + ShapeStr(e.shape));
    }
    e.begin = offset;
    offset = e.end;
    nlohmann::ordered_json info;
    info["dtype"] = StDTypeName(e.dtype);
    info["shape"] = e.shape;
    info["data_offsets"] = {e.begin, e.end};
    header[e.name] = std::move(info);
  }
  data_bytes_ = offset;
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& ex) {  // a name or metadata string that is not UTF-8
    return Status::InvalidInput(path_ + ": cannot encode the header: " + ex.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned
  data_start_ = 8 + text.size();

  LATAM_ASSIGN_OR_RETURN(file_, AtomicFile::Create(Env::Default(), path_));
  char len[8];
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>(n >> (8 * i));
  Status s = file_->file().Append(std::string_view(len, 8));
  if (s.ok()) s = file_->file().Append(text);
  if (!s.ok()) Abandon();
  return s;
}

Status SafetensorsWriter::Append(const std::string& name, const void* bytes, size_t size) {
  if (file_ == nullptr) {
    return Status::Internal(path_ + ": SafetensorsWriter::Append of " + Quote(name) + " outside Begin/Finish");
  }
  if (next_ >= entries_.size()) {
    return Status::InvalidInput(path_ + ": tensor " + Quote(name) + " appended after all " +
                                std::to_string(entries_.size()) + " declared tensors");
  }
  const StEntry& e = entries_[next_];
  if (name != e.name) {
    return Status::InvalidInput(path_ + ": tensor " + Quote(name) + " appended out of order; expected " +
                                Quote(e.name));
  }
  if (size != e.bytes()) {
    return Status::InvalidInput(path_ + ": tensor " + Quote(name) + " (" + StDTypeName(e.dtype) + " " +
                                ShapeStr(e.shape) + ") needs " + std::to_string(e.bytes()) + " bytes, got " +
                                std::to_string(size));
  }
  if (size > 0) {
    const Status s = file_->file().Append(std::string_view(static_cast<const char*>(bytes), size));
    if (!s.ok()) {
      Abandon();
      return s.WithContext("writing tensor " + Quote(name));
    }
  }
  ++next_;
  return Status::Ok();
}

Status SafetensorsWriter::Finish() {
  if (file_ == nullptr) return Status::Internal(path_ + ": SafetensorsWriter::Finish without Begin");
  if (next_ != entries_.size()) {
    return Status::InvalidInput(path_ + ": Finish after " + std::to_string(next_) + " of " +
                                std::to_string(entries_.size()) + " tensors; next missing tensor is " +
                                Quote(entries_[next_].name));
  }
  const Status s = file_->Commit();
  file_.reset();
  if (!s.ok()) return s;
  finished_ = true;
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) return Status::InvalidInput("cannot open safetensors file " + path + ": " + Errno());
  struct stat st {};
  if (fstat(f->fd_, &st) != 0) return Status::IoError("cannot stat " + path + ": " + Errno());
  if (!S_ISREG(st.st_mode)) return Status::InvalidInput(path + " is not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    return Status::InvalidInput(path + " is not a safetensors file: " + std::to_string(file_size) +
                                " bytes, shorter than the 8-byte header length");
  }
  unsigned char len_bytes[8];
  LATAM_RETURN_IF_ERROR(f->PRead(len_bytes, 8, 0, ""));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len_bytes[i]) << (8 * i);
  if (n > file_size - 8) {
    return Status::InvalidInput(path + ": header length " + std::to_string(n) + " runs past the end of the " +
                                std::to_string(file_size) + "-byte file (truncated or not a safetensors file)");
  }
  if (n > kMaxHeaderBytes) {
    return Status::InvalidInput(path + ": header length " + std::to_string(n) + " exceeds the " +
                                std::to_string(kMaxHeaderBytes) + "-byte limit");
  }
  std::string text(n, '\0');
  LATAM_RETURN_IF_ERROR(f->PRead(text.data(), n, 8, ""));
  f->data_start_ = 8 + n;
  const uint64_t data_size = file_size - f->data_start_;

  const nlohmann::ordered_json header = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return Status::InvalidInput(path + ": header is not valid JSON");
  if (!header.is_object()) return Status::InvalidInput(path + ": header is not a JSON object");

  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) return Status::InvalidInput(path + ": __metadata__ is not a JSON object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          return Status::InvalidInput(path + ": __metadata__ value for " + Quote(mk) + " is not a string");
        }
        f->metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor " + Quote(key);
    if (!value.is_object()) return Status::InvalidInput(where + ": header entry is not a JSON object");
    StEntry e;
    e.name = key;
    const auto dt = value.find("dtype");
    if (dt == value.end() || !dt->is_string()) return Status::InvalidInput(where + ": missing or non-string dtype");
    if (!ParseStDType(dt->get<std::string>(), &e.dtype)) {
      return Status::InvalidInput(where + ": unsupported dtype " + Quote(dt->get<std::string>()) +
                                  " (supported: F32, BF16, F16)");
    }
    const auto sh = value.find("shape");
    if (sh == value.end() || !sh->is_array()) return Status::InvalidInput(where + ": missing or non-array shape");
    for (const auto& d : *sh) {
      uint64_t v = 0;
      if (!GetU64(d, &v) || v > static_cast<uint64_t>(INT64_MAX)) {
        return Status::InvalidInput(where + ": shape " + sh->dump() + " is not a list of non-negative integers");
      }
      e.shape.push_back(static_cast<int64_t>(v));
    }
    const auto off = value.find("data_offsets");
    if (off == value.end() || !off->is_array() || off->size() != 2 || !GetU64((*off)[0], &e.begin) ||
        !GetU64((*off)[1], &e.end)) {
      return Status::InvalidInput(where + ": data_offsets must be [begin, end] non-negative integers");
    }
    if (e.end < e.begin) {
      return Status::InvalidInput(where + ": data_offsets " + off->dump() + " end before they begin");
    }
    uint64_t numel = 0, bytes = 0;
    if (!ByteSize(e.shape, StDTypeSize(e.dtype), &numel, &bytes)) {
      return Status::InvalidInput(where + ": shape " + sh->dump() + " is too large");
    }
    if (e.end - e.begin != bytes) {
      return Status::InvalidInput(where + ": data_offsets " + off->dump() + " span " + std::to_string(e.end - e.begin) +
                                  " bytes but " + StDTypeName(e.dtype) + " " + ShapeStr(e.shape) + " needs " +
                                  std::to_string(bytes));
    }
    if (e.end > data_size) {
      return Status::InvalidInput(where + ": data_offsets " + off->dump() + " lie outside the " +
                                  std::to_string(data_size) + "-byte data section (truncated file?)");
    }
    f->by_name_.emplace(e.name, f->entries_.size());
    f->entries_.push_back(std::move(e));
  }

  // No two tensors may share bytes.
  std::vector<const StEntry*> sorted;
  for (const StEntry& e : f->entries_) {
    if (e.end > e.begin) sorted.push_back(&e);
  }
  std::sort(sorted.begin(), sorted.end(), [](const StEntry* a, const StEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->begin < sorted[i - 1]->end) {
      return Status::InvalidInput(path + ": tensors " + Quote(sorted[i - 1]->name) + " and " + Quote(sorted[i]->name) +
                                  " overlap in the data section");
    }
  }
  return f;
}

const StEntry* SafetensorsFile::Find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

Result<const StEntry*> SafetensorsFile::Lookup(const std::string& name) const {
  const StEntry* e = Find(name);
  if (e == nullptr) return Status::InvalidInput(path_ + ": no tensor " + Quote(name));
  return e;
}

Status SafetensorsFile::PRead(void* out, uint64_t size, uint64_t offset, const std::string& tensor) const {
  auto* dst = static_cast<char*>(out);
  while (size > 0) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(size, uint64_t{1} << 30));
    const ssize_t got = ::pread(fd_, dst, want, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    const std::string what = tensor.empty() ? path_ : "tensor " + Quote(tensor) + " from " + path_;
    if (got < 0) return Status::IoError("cannot read " + what + ": " + Errno());
    if (got == 0) return Status::IoError("cannot read " + what + ": unexpected end of file");
    dst += got;
    size -= static_cast<uint64_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return Status::Ok();
}

Status SafetensorsFile::ReadRaw(const std::string& name, void* out) const {
  LATAM_ASSIGN_OR_RETURN(const StEntry* e, Lookup(name));
  return PRead(out, e->bytes(), data_start_ + e->begin, name);
}

Status SafetensorsFile::ReadF32(const std::string& name, float* out) const {
  LATAM_ASSIGN_OR_RETURN(const StEntry* e, Lookup(name));
  if (e->dtype == StDType::kF32) return PRead(out, e->bytes(), data_start_ + e->begin, name);
  const size_t numel = static_cast<size_t>(e->numel());
  std::vector<uint16_t> buf(std::min(numel, kConvertChunkElems));
  for (size_t done = 0; done < numel;) {
    const size_t n = std::min(numel - done, buf.size());
    LATAM_RETURN_IF_ERROR(PRead(buf.data(), n * 2, data_start_ + e->begin + done * 2, name));
    ConvertToF32(e->dtype, buf.data(), n, out + done);
    done += n;
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// HfWeights

Result<std::unique_ptr<HfWeights>> HfWeights::Open(const std::string& dir) {
  std::unique_ptr<HfWeights> w(new HfWeights());
  w->dir_ = dir;
  const fs::path root(dir);
  const std::string index_path = (root / kHfIndexFile).string();
  const std::string single_path = (root / kHfSingleFile).string();
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    w->sharded_ = true;
    std::ifstream in(index_path, std::ios::binary);
    if (!in) return Status::InvalidInput("cannot open " + index_path + ": " + Errno());
    std::stringstream ss;
    ss << in.rdbuf();
    if (in.bad()) return Status::IoError("cannot read " + index_path);
    const nlohmann::json index = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object()) {
      return Status::InvalidInput(index_path + ": not a valid JSON object");
    }
    const auto map = index.find("weight_map");
    if (map == index.end() || !map->is_object()) {
      return Status::InvalidInput(index_path + ": missing or non-object weight_map");
    }
    if (map->empty()) return Status::InvalidInput(index_path + ": weight_map lists no tensors");
    std::map<std::string, const SafetensorsFile*> opened;
    for (const auto& [tensor, file] : map->items()) {  // nlohmann::json keeps keys sorted
      if (!file.is_string()) {
        return Status::InvalidInput(index_path + ": weight_map entry for tensor " + Quote(tensor) + " is not a string");
      }
      const std::string name = file.get<std::string>();
      const fs::path rel(name);
      if (name.empty() || rel.is_absolute() || std::find(rel.begin(), rel.end(), "..") != rel.end()) {
        return Status::InvalidInput(index_path + ": tensor " + Quote(tensor) + " maps to invalid shard file name " +
                                    Quote(name));
      }
      auto it = opened.find(name);
      if (it == opened.end()) {
        auto shard = SafetensorsFile::Open((root / rel).string());
        if (!shard.ok()) return shard.status().WithContext(index_path + " (shard of tensor '" + tensor + "')");
        w->files_.push_back(std::move(shard).value());
        it = opened.emplace(name, w->files_.back().get()).first;
      }
      if (it->second->Find(tensor) == nullptr) {
        return Status::InvalidInput("tensor " + Quote(tensor) + " listed in " + index_path + " is absent from shard " +
                                    it->second->path());
      }
      w->names_.push_back(tensor);
      w->file_of_.emplace(tensor, it->second);
    }
    return w;
  }
  if (!fs::exists(single_path, ec)) {
    return Status::InvalidInput(dir + ": no " + kHfSingleFile + " or " + kHfIndexFile +
                                " (not a Hugging Face safetensors model directory)");
  }
  LATAM_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single_path));
  for (const StEntry& e : file->entries()) {
    w->names_.push_back(e.name);
    w->file_of_.emplace(e.name, file.get());
  }
  w->files_.push_back(std::move(file));
  return w;
}

const SafetensorsFile* HfWeights::FileOf(const std::string& name) const {
  const auto it = file_of_.find(name);
  return it == file_of_.end() ? nullptr : it->second;
}

const StEntry* HfWeights::Find(const std::string& name) const {
  const SafetensorsFile* f = FileOf(name);
  return f == nullptr ? nullptr : f->Find(name);
}

Result<const SafetensorsFile*> HfWeights::Lookup(const std::string& name) const {
  const SafetensorsFile* f = FileOf(name);
  if (f == nullptr) return Status::InvalidInput(dir_ + ": no tensor " + Quote(name) + " in the model's safetensors");
  return f;
}

Status HfWeights::ReadF32(const std::string& name, float* out) const {
  LATAM_ASSIGN_OR_RETURN(const SafetensorsFile* f, Lookup(name));
  return f->ReadF32(name, out);
}

Status HfWeights::ReadRaw(const std::string& name, void* out) const {
  LATAM_ASSIGN_OR_RETURN(const SafetensorsFile* f, Lookup(name));
  return f->ReadRaw(name, out);
}

// ---------------------------------------------------------------------------
// Export

std::string HfShardName(int index, int count) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05d-of-%05d.safetensors", index, count);
  return buf;
}

namespace {

// "model-00002-of-00005.safetensors" and the like.
bool IsHfShardName(const std::string& name) {
  int index = 0, count = 0, end = 0;
  if (std::sscanf(name.c_str(), "model-%5d-of-%5d.safetensors%n", &index, &count, &end) != 2) return false;
  return static_cast<size_t>(end) == name.size() && index >= 1 && name == HfShardName(index, count);
}

}  // namespace

Status WriteHfWeights(const std::string& dir, const std::vector<HfTensorSpec>& tensors, StDType dtype,
                      const HfTensorProducer& produce, uint64_t max_shard_bytes) {
  if (dtype != StDType::kF32 && dtype != StDType::kBF16) {
    return Status::InvalidInput(dir + ": export dtype " + std::string(StDTypeName(dtype)) +
                                " is not supported (F32 or BF16)");
  }
  if (max_shard_bytes == 0) return Status::InvalidInput(dir + ": max_shard_bytes must be positive");
  if (tensors.empty()) return Status::InvalidInput(dir + ": no tensors to export");
  const size_t elem = StDTypeSize(dtype);

  // Greedy packing in the given order: a shard is closed when the next tensor
  // would push it past the limit.
  std::vector<std::vector<size_t>> shards;
  std::vector<uint64_t> sizes(tensors.size());
  std::set<std::string> seen;
  uint64_t total = 0, current = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const HfTensorSpec& t = tensors[i];
    if (!seen.insert(t.name).second) return Status::InvalidInput(dir + ": duplicate tensor " + Quote(t.name));
    uint64_t numel = 0;
    if (!ByteSize(t.shape, elem, &numel, &sizes[i])) {
      return Status::InvalidInput(dir + ": tensor " + Quote(t.name) + " has an invalid shape " + ShapeStr(t.shape));
    }
    if (shards.empty() || (!shards.back().empty() && current + sizes[i] > max_shard_bytes)) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += sizes[i];
    total += sizes[i];
  }

  LATAM_RETURN_IF_ERROR(Env::Default()->CreateDirs(dir));

  const int count = static_cast<int>(shards.size());
  const bool single = count == 1;
  nlohmann::json weight_map = nlohmann::json::object();
  std::vector<float> data;
  std::vector<uint16_t> narrow;
  for (int s = 0; s < count; ++s) {
    const std::string file = single ? std::string(kHfSingleFile) : HfShardName(s + 1, count);
    std::vector<StEntry> entries;
    for (size_t i : shards[static_cast<size_t>(s)]) {
      StEntry e;
      e.name = tensors[i].name;
      e.dtype = dtype;
      e.shape = tensors[i].shape;
      entries.push_back(std::move(e));
      weight_map[tensors[i].name] = file;
    }
    SafetensorsWriter writer((fs::path(dir) / file).string(), std::move(entries), {{"format", "pt"}});
    LATAM_RETURN_IF_ERROR(writer.Begin());
    for (size_t i : shards[static_cast<size_t>(s)]) {
      const HfTensorSpec& t = tensors[i];
      data.clear();
      LATAM_RETURN_IF_ERROR(produce(t.name, &data).WithContext("exporting tensor '" + t.name + "' to " + dir));
      const uint64_t numel = sizes[i] / elem;
      if (data.size() != numel) {
        return Status::Internal("exporting tensor " + Quote(t.name) + " to " + dir + ": producer gave " +
                                std::to_string(data.size()) + " values for shape " + ShapeStr(t.shape) + " (" +
                                std::to_string(numel) + ")");
      }
      if (dtype == StDType::kF32) {
        LATAM_RETURN_IF_ERROR(writer.Append(t.name, data.data(), data.size() * sizeof(float)));
      } else {
        narrow.resize(data.size());
        ConvertFromF32(dtype, data.data(), data.size(), narrow.data());
        LATAM_RETURN_IF_ERROR(writer.Append(t.name, narrow.data(), narrow.size() * sizeof(uint16_t)));
      }
    }
    LATAM_RETURN_IF_ERROR(writer.Finish());
  }

  // Shards of an earlier export with another shard count are dead weight.
  std::set<std::string> written;
  for (int s = 0; s < count && !single; ++s) written.insert(HfShardName(s + 1, count));
  LATAM_ASSIGN_OR_RETURN(const std::vector<std::string> names, Env::Default()->ListDir(dir));
  for (const std::string& name : names) {
    if (!IsHfShardName(name) || written.count(name)) continue;
    LATAM_RETURN_IF_ERROR(
        Env::Default()->RemoveFile((fs::path(dir) / name).string()).WithContext("removing a stale shard"));
  }

  const std::string index_path = (fs::path(dir) / kHfIndexFile).string();
  const std::string single_path = (fs::path(dir) / kHfSingleFile).string();
  if (single) {
    // An older sharded export's index would take precedence over the new file.
    return Env::Default()->RemoveFile(index_path).WithContext("removing a stale index");
  }
  nlohmann::json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = std::move(weight_map);
  LATAM_RETURN_IF_ERROR(WriteFileAtomically(Env::Default(), index_path, index.dump(2) + "\n"));
  // transformers prefers model.safetensors over an index: drop an older one.
  return Env::Default()->RemoveFile(single_path).WithContext("removing a stale single-file export");
}

}  // namespace latam::ckpt
