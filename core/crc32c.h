// CRC-32C (Castagnoli), as used by TFRecord/TensorBoard event files and by
// checkpoint shard records. Table-driven, slicing by 8 bytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace latam {

// CRC-32C of data[0, n), continuing from `crc` (0 to start).
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

// TFRecord's masked form of a CRC-32C.
inline uint32_t MaskCrc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

}  // namespace latam
