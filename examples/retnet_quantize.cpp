// retnet_quantize: write a checkpoint with its dense weights stored as int8 (or BF16/F16), so that
// it loads without rounding again and, kept in that type, straight from the mapped file.
//
//   retnet_quantize SOURCE TARGET [--weights int8|bf16|f16]      (default int8)
//
// SOURCE is anything retnet_generate --model takes (a Hugging Face model directory, a
// .safetensors or .pth file); TARGET must not exist: a directory for a directory (config.json
// and tokenizer files copied, one model.safetensors), else a file. The convention is in
// include/retnet/io/quantize.hpp. Then:
//
//   retnet_generate --model TARGET --weights int8 --prompt "..."
//
// Bad arguments or files print one line on stderr and exit non-zero.
#include <chrono>
#include <cstdio>
#include <exception>
#include <retnet/io/quantize.hpp>
#include <string>

int main(int argc, char** argv) {
  std::string source, target, weights = "int8";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--weights" && i + 1 < argc) {
      weights = argv[++i];
    } else if (arg == "-h" || arg == "--help") {
      std::printf("usage: retnet_quantize SOURCE TARGET [--weights int8|bf16|f16]\n");
      return 0;
    } else if (source.empty() && arg.rfind("--", 0) != 0) {
      source = arg;
    } else if (target.empty() && arg.rfind("--", 0) != 0) {
      target = arg;
    } else {
      std::fprintf(stderr, "retnet_quantize: unexpected argument \"%s\" (--help)\n", arg.c_str());
      return 2;
    }
  }
  if (source.empty() || target.empty()) {
    std::fprintf(stderr, "retnet_quantize: need SOURCE and TARGET (--help)\n");
    return 2;
  }
  const auto type = retnet::weightTypeFromName(weights);
  if (!type || *type == retnet::WeightType::kFull) {
    std::fprintf(stderr, "retnet_quantize: --weights must be int8, bf16 or f16, got \"%s\"\n",
                 weights.c_str());
    return 2;
  }
  try {
    const auto start = std::chrono::steady_clock::now();
    const retnet::io::QuantizeSummary s = retnet::io::saveQuantized(source, target, *type);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf(
        "wrote %s: %lld dense weights as %s (%.1f MB -> %.1f MB), %lld other tensors "
        "copied, in %.1f s\n",
        s.weightsFile.c_str(), static_cast<long long>(s.denseWeights),
        retnet::io::weightsMetadataValue(*type).c_str(), double(s.sourceBytes) / 1e6,
        double(s.quantizedBytes) / 1e6, static_cast<long long>(s.otherTensors), seconds);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "retnet_quantize: %s\n", e.what());
    return 1;
  }
  return 0;
}
