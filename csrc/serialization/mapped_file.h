// A whole file mapped into memory, private and copy-on-write: tensors can view its bytes
// without a copy, and writing to them never reaches the file. The mapping lives as long
// as the object (share it with a shared_ptr). A file truncated by another program while
// mapped makes reads past its new end fail (SIGBUS), as with any memory-mapped reader;
// lowbit's own writers replace files by rename, which leaves existing mappings intact.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace lowbit {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws std::invalid_argument
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  uint8_t* data() const { return data_; }  // nullptr for an empty file
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace lowbit
