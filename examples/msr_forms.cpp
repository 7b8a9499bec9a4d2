// msr_forms: the RetNet block of a torchscale checkpoint in its three forms, plus a chunkwise
// prefill handed over to recurrent decoding, each compared with torchscale's own outputs.
//
//   msr_forms [layer.safetensors]     (default: the repository's
//   tests/data/layer_small.safetensors)
#include <cstdio>
#include <retnet/io/checkpoint.hpp>
#include <retnet/retnet.hpp>
#include <string>

namespace {

using retnet::Index;
using retnet::Tensor3;

/// max|a - b| / max|b|, b read from the file.
double relativeError(const Tensor3<double>& a, const std::vector<double>& b) {
  double diff = 0, scale = 0;
  for (Index i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a.data()[i] - b[static_cast<std::size_t>(i)]));
    scale = std::max(scale, std::abs(b[static_cast<std::size_t>(i)]));
  }
  return diff / scale;
}

std::vector<double> flat(const Tensor3<double>& t) {
  return std::vector<double>(t.data(), t.data() + t.size());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : RETNET_EXAMPLE_LAYER_FILE;
  try {
    const auto file = retnet::io::SafetensorsFile::open(path);
    const auto block = retnet::io::loadRetNetBlock<double>(file);
    const auto x = file.readTensor<double, 3>("x");
    const Index batch = x.dimension(0), time = x.dimension(1);
    const Index chunk = std::stol(file.metadataValue("chunk_size").value_or("8"));
    const auto& c = block.config();
    std::printf(
        "RetNet block from %s\n  embed %ld, value %ld, heads %ld, ffn %ld (%s); input batch %ld, T "
        "%ld, chunk %ld\n",
        path.c_str(), static_cast<long>(c.embedDim), static_cast<long>(c.valueDim),
        static_cast<long>(c.heads), static_cast<long>(c.ffnDim),
        retnet::activationName(c.activation), static_cast<long>(batch), static_cast<long>(time),
        static_cast<long>(chunk));

    const Tensor3<double> parallel = block.forwardParallel(x);
    const Tensor3<double> chunkwise = block.forwardChunkwise(x, chunk);
    const Tensor3<double> recurrent = block.forwardRecurrent(x);
    std::printf("against torchscale (normwise relative, float64):\n");
    std::printf("  parallel  %.2e\n",
                relativeError(parallel, file.readFlat<double>("out_parallel")));
    std::printf("  chunkwise %.2e\n",
                relativeError(chunkwise, file.readFlat<double>("out_chunkwise")));
    std::printf("  recurrent %.2e\n",
                relativeError(recurrent, file.readFlat<double>("out_recurrent")));
    std::printf("between forms (torchscale's forms differ by the group-norm eps too):\n");
    std::printf("  parallel vs chunkwise  %.2e\n", relativeError(parallel, flat(chunkwise)));
    std::printf("  parallel vs recurrent  %.2e\n", relativeError(parallel, flat(recurrent)));
    std::printf("  chunkwise vs recurrent %.2e\n", relativeError(chunkwise, flat(recurrent)));

    // Prefill half the sequence chunkwise, then decode the rest token by token from its state.
    const Index prefill = time / 2;
    retnet::MultiScaleRetentionState<double> state;
    const Eigen::array<Index, 3> origin{0, 0, 0}, head{batch, prefill, c.embedDim};
    const Tensor3<double> prompt = x.slice(origin, head);
    block.forwardChunkwise(prompt, chunk, state);
    Tensor3<double> decoded(batch, time - prefill, c.embedDim), step;
    for (Index t = prefill; t < time; ++t) {
      const Eigen::array<Index, 3> at{0, t, 0}, one{batch, 1, c.embedDim};
      block.forwardRecurrent(Tensor3<double>(x.slice(at, one)), state, step);
      decoded.slice(Eigen::array<Index, 3>{0, t - prefill, 0}, one) = step;
    }
    const Eigen::array<Index, 3> tailAt{0, prefill, 0}, tail{batch, time - prefill, c.embedDim};
    const Tensor3<double> recurrentTail = recurrent.slice(tailAt, tail);
    const Tensor3<double> goldenTail =
        file.readTensor<double, 3>("out_recurrent").slice(tailAt, tail);
    std::printf(
        "chunkwise prefill of %ld positions, then %ld recurrent steps (state: %ld bytes):\n",
        static_cast<long>(prefill), static_cast<long>(time - prefill),
        static_cast<long>(state.bytes()));
    std::printf("  vs our recurrent form      %.2e\n", relativeError(decoded, flat(recurrentTail)));
    std::printf("  vs torchscale's recurrent  %.2e\n", relativeError(decoded, flat(goldenTail)));
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "msr_forms: error: %s\n", error.what());
    return 1;
  }
}
