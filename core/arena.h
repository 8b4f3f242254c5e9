// Arena: one contiguous, owned block of host or device memory, and
// TensorTable: named tensors laid out inside such a block.
//
// Parameters, gradients, optimizer state and activations each live in one
// arena, so a whole set can be zeroed, reduced, sharded or copied as one flat
// buffer. Allocation happens once, before training; nothing is allocated in
// the step loop. Host arenas are 256-byte aligned and zero-filled; device
// arenas use cudaMalloc (only in builds with LATAM_CUDA) and are zero-filled
// too.
//
// Host-arena accounting: the process counts the bytes of its live host
// arenas (the size asked for, alignment padding not included) and the peak
// of that count since the last ResetHostArenaPeak(). `latam-train --plan`'s
// CPU memory is checked against it (tests/mpi/test_plan_memory.cc). Device
// arenas are not counted. Thread-safe.
#pragma once

#include <cstddef>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/stream.h"
#include "core/tensor.h"

namespace latam {

class Arena {
 public:
  static constexpr size_t kAlignment = 256;

  Arena() = default;
  Arena(Device device, size_t bytes);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&& other) noexcept;
  Arena& operator=(Arena&& other) noexcept;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  Device device() const { return device_; }

  // A view of `shape` elements of `dtype` starting `offset` bytes in.
  Tensor View(size_t offset, DType dtype, Shape shape) const;
  // Sets every byte to zero; returns once done (a device arena synchronises
  // the device).
  void Zero();
  // Sets every byte to zero, enqueued on `stream` (a cudaStream_t) for a
  // device arena; a host arena is zeroed at once.
  void ZeroAsync(Stream stream);

 private:
  void Release();
  void* data_ = nullptr;
  size_t size_ = 0;
  Device device_ = Device::kCPU;
};

// Bytes of host arenas alive now in this process.
size_t HostArenaLiveBytes();
// The largest HostArenaLiveBytes() since the last reset (or the start).
size_t HostArenaPeakBytes();
// Starts a new peak from the bytes alive now.
void ResetHostArenaPeak();

// Copies src into dst (equal byte sizes; any pair of devices) and returns
// once the copy is done. Device copies synchronise the whole device first, so
// they see every kernel already enqueued on any stream: for set-up,
// checkpoints and tests, not for the step loop.
void CopyTensor(const Tensor& dst, const Tensor& src);

// Named tensors at fixed offsets of an arena-sized block. Add() every tensor
// first, then allocate one Arena of total_bytes() and take views with Get().
// Two arenas built from the same table (parameters and their gradients) have
// every tensor at the same offset, so element i of one flat buffer matches
// element i of the other.
class TensorTable {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    size_t offset;  // bytes from the start of the arena
  };

  // Adds a tensor; returns its index. Names must be unique.
  size_t Add(const std::string& name, DType dtype, Shape shape);
  // Padding inserted before the next Add() so that its offset is aligned to
  // `alignment` bytes. Consecutive Add()s with no alignment in between are
  // contiguous (used to fuse Q/K/V or gate/up into one GEMM operand).
  void Align(size_t alignment);

  size_t total_bytes() const { return total_bytes_; }
  size_t size() const { return entries_.size(); }
  const Entry& entry(size_t i) const { return entries_[i]; }
  const std::vector<Entry>& entries() const { return entries_; }
  bool Contains(const std::string& name) const { return index_.count(name) != 0; }
  const Entry& Find(const std::string& name) const;  // aborts if absent
  size_t IndexOf(const std::string& name) const;     // aborts if absent

  Tensor Get(const Arena& arena, const std::string& name) const;
  Tensor Get(const Arena& arena, size_t index) const;

 private:
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> index_;
  size_t total_bytes_ = 0;
};

}  // namespace latam
