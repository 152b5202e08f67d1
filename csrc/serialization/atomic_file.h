// Writing a file so that a crash, a kill or a full disk at any moment leaves either the
// old file or the complete new one: the bytes go to a temporary file in the same folder,
// which is flushed to disk (fsync) and then renamed over the target; the folder is
// flushed too, so the rename itself survives a power loss.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace lowbit {

// Throws std::invalid_argument naming the path and the system's reason; on failure the
// target is untouched and no temporary file is left behind.
void write_file_atomic(const std::string& path, const uint8_t* data, size_t size);

}  // namespace lowbit
