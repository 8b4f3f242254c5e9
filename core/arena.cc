#include "core/arena.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>

#ifdef LATAM_HAVE_CUDA
#include "core/cuda_check.h"
#endif

namespace latam {

namespace {
size_t RoundUp(size_t n, size_t alignment) { return (n + alignment - 1) / alignment * alignment; }

std::atomic<size_t> host_live{0};
std::atomic<size_t> host_peak{0};

void CountHostAllocation(size_t bytes) {
  const size_t live = host_live.fetch_add(bytes) + bytes;
  size_t peak = host_peak.load();
  while (live > peak && !host_peak.compare_exchange_weak(peak, live)) {
  }
}
}  // namespace

size_t HostArenaLiveBytes() { return host_live.load(); }
size_t HostArenaPeakBytes() { return host_peak.load(); }
void ResetHostArenaPeak() { host_peak.store(host_live.load()); }

Arena::Arena(Device device, size_t bytes) : size_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device == Device::kCPU) {
    data_ = std::aligned_alloc(kAlignment, RoundUp(bytes, kAlignment));
    LATAM_CHECK(data_ != nullptr, "host allocation of " << bytes << " bytes failed");
    CountHostAllocation(bytes);
  } else {
#ifdef LATAM_HAVE_CUDA
    CUDA_CHECK(cudaMalloc(&data_, bytes));
#else
    LATAM_CHECK(false, "device arena requested but this build has no CUDA (configure with LATAM_CUDA=ON)");
#endif
  }
  Zero();
}

Arena::~Arena() { Release(); }

Arena::Arena(Arena&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)), device_(other.device_) {}

Arena& Arena::operator=(Arena&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    device_ = other.device_;
  }
  return *this;
}

void Arena::Release() {
  if (data_ == nullptr) return;
  if (device_ == Device::kCPU) {
    std::free(data_);
    host_live.fetch_sub(size_);
  } else {
#ifdef LATAM_HAVE_CUDA
    CUDA_CHECK(cudaFree(data_));
#endif
  }
  data_ = nullptr;
  size_ = 0;
}

Tensor Arena::View(size_t offset, DType dtype, Shape shape) const {
  const size_t bytes = static_cast<size_t>(shape.numel()) * DTypeSize(dtype);
  LATAM_CHECK(offset + bytes <= size_,
              "view [" << offset << ", " << offset + bytes << ") outside arena of " << size_ << " bytes");
  return Tensor(static_cast<char*>(data_) + offset, dtype, shape, device_);
}

void Arena::Zero() {
  if (size_ == 0) return;
  if (device_ == Device::kCPU) {
    std::memset(data_, 0, size_);
  } else {
#ifdef LATAM_HAVE_CUDA
    CUDA_CHECK(cudaMemset(data_, 0, size_));
    CUDA_CHECK(cudaDeviceSynchronize());
#endif
  }
}

void Arena::ZeroAsync([[maybe_unused]] Stream stream) {
  if (size_ == 0) return;
  if (device_ == Device::kCPU) {
    std::memset(data_, 0, size_);
  } else {
#ifdef LATAM_HAVE_CUDA
    CUDA_CHECK(cudaMemsetAsync(data_, 0, size_, stream.cuda()));
#endif
  }
}

void CopyTensor(const Tensor& dst, const Tensor& src) {
  LATAM_CHECK(dst.bytes() == src.bytes(), "copy of " << src.str() << " into " << dst.str());
  if (dst.bytes() == 0) return;
  if (dst.device == Device::kCPU && src.device == Device::kCPU) {
    std::memcpy(dst.data, src.data, dst.bytes());
    return;
  }
#ifdef LATAM_HAVE_CUDA
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(dst.data, src.data, dst.bytes(), cudaMemcpyDefault));
#else
  LATAM_CHECK(false, "copy of a device tensor in a build without CUDA");
#endif
}

size_t TensorTable::Add(const std::string& name, DType dtype, Shape shape) {
  LATAM_CHECK(index_.count(name) == 0, "duplicate tensor name " << name);
  // Every tensor starts at least element-aligned.
  total_bytes_ = RoundUp(total_bytes_, DTypeSize(dtype));
  entries_.push_back(Entry{name, dtype, shape, total_bytes_});
  total_bytes_ += static_cast<size_t>(shape.numel()) * DTypeSize(dtype);
  index_[name] = entries_.size() - 1;
  return entries_.size() - 1;
}

void TensorTable::Align(size_t alignment) { total_bytes_ = RoundUp(total_bytes_, alignment); }

const TensorTable::Entry& TensorTable::Find(const std::string& name) const {
  auto it = index_.find(name);
  LATAM_CHECK(it != index_.end(), "no tensor named " << name);
  return entries_[it->second];
}

size_t TensorTable::IndexOf(const std::string& name) const {
  auto it = index_.find(name);
  LATAM_CHECK(it != index_.end(), "no tensor named " << name);
  return it->second;
}

Tensor TensorTable::Get(const Arena& arena, const std::string& name) const {
  const Entry& e = Find(name);
  return arena.View(e.offset, e.dtype, e.shape);
}

Tensor TensorTable::Get(const Arena& arena, size_t index) const {
  const Entry& e = entries_.at(index);
  return arena.View(e.offset, e.dtype, e.shape);
}

}  // namespace latam
