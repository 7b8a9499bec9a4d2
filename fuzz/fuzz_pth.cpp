// libFuzzer target for the PyTorch checkpoint reader (include/retnet/io/pth_reader.hpp).
//
// An input that starts with "PK" is a whole archive, parsed with PthFile::fromBytes. Any other
// input is a data.pkl: it is put into torch.save's archive layout next to three storages
// (pthFuzzStorages: "0" 24 F32 values, "1" 16 bytes, "2" empty), so that mutations reach the
// unpickler instead of failing the archive's CRC check. When parsing succeeds, every tensor is
// read through every reading method whose rank fits (fuzz_tensor_file.hpp). Only
// retnet::FormatError and retnet::InvalidArgument are expected; anything else (another exception,
// a crash, a leak, undefined behaviour, an allocation far beyond the input size) is a finding.
// Invariants checked beyond "does not crash":
//   - every tensor's byte span lies inside the file and is numel() * dtypeSize() bytes;
//   - names() lists each tensor once;
//   - readFlat/readMatrix/readVector/readTensor/readIntegers agree element for element, and the
//     reads that do not fit (wrong rank, dtype, shape or name) are refused with a FormatError.
// Reading from a file (PthFile::open) differs only in where bytes come from; the tests cover it.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "fuzz_tensor_file.hpp"
#include "retnet/errors.hpp"
#include "retnet/io/pth_reader.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const bool wholeArchive = size >= 2 && data[0] == 'P' && data[1] == 'K';
  std::vector<unsigned char> bytes(data, data + size);
  if (!wholeArchive) bytes = retnet_fuzz::pthFuzzArchive(bytes);
  const std::size_t fileSize = bytes.size();
  try {
    const retnet::io::PthFile file = retnet::io::PthFile::fromBytes(std::move(bytes), "fuzz-input");
    retnet_fuzz::check(file.displayName() == "fuzz-input", "displayName", "");
    const std::set<std::string> unique(file.names().begin(), file.names().end());
    retnet_fuzz::check(unique.size() == file.names().size(), "names() repeats a name", "");
    (void)retnet_fuzz::exerciseTensors(file, fileSize);
    if (!wholeArchive) retnet_fuzz::check(file.archiveName() == "archive", "archiveName", "");
  } catch (const retnet::FormatError&) {
  } catch (const retnet::InvalidArgument&) {
  }
  return 0;
}
