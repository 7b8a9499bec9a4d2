// Encoding and decoding 1 MB of text with the Hugging Face tokenizer.json files of tests/data/bpe
// (io/bpe_tokenizer.hpp): Mistral-7B's (SentencePiece-style BPE over the whole text, no
// pre-tokenizer), GPT-2's (ByteLevel, its regex through PCRE2) and cl100k's (a Split regex, then
// ByteLevel). The text is the test corpus (tests/data/bpe/mistral/cases.json: English, code, CJK,
// emoji, whitespace runs, numbers …) repeated to 1 MiB.
//
//   encode_cold/<file>   a fresh tokenizer each iteration's text: the word cache starts empty
//                        (the tokenizer is built outside the timed region)
//   encode_warm/<file>   the same tokenizer again and again: words come from the cache
//   decode/<file>        the ids back to text
// Counters: bytes_per_second (of text), tokens_per_second.
#include <benchmark/benchmark.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "retnet/io/load_tokenizer.hpp"

namespace {

const char* const kFiles[] = {"mistral", "gpt2", "cl100k"};

std::string dataDir(const char* name) { return std::string(RETNET_TEST_DATA_DIR) + "/bpe/" + name; }

const std::string& megabyte() {
  static const std::string text = [] {
    std::ifstream in(dataDir("mistral") + "/cases.json");
    const nlohmann::json cases = nlohmann::json::parse(in);
    std::string corpus, out;
    for (const auto& c : cases.at("cases")) corpus += c.at("text").get<std::string>();
    while (out.size() < (std::size_t(1) << 20)) out += corpus;
    out.resize(std::size_t(1) << 20);
    // Not inside a character: cut back to a whole one.
    out.resize(retnet::io::detail::completeUtf8Prefix(out));
    return out;
  }();
  return text;
}

void counters(benchmark::State& state, std::size_t tokens) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * megabyte().size()));
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(tokens) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}

void encodeCold(benchmark::State& state) {
  const char* name = kFiles[state.range(0)];
  std::size_t tokens = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto tokenizer =
        std::make_unique<retnet::io::Tokenizer>(retnet::io::loadTokenizer(dataDir(name)));
    state.ResumeTiming();
    const std::vector<std::int64_t> ids = tokenizer->encode(megabyte(), false);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
    state.PauseTiming();
    tokenizer.reset();
    state.ResumeTiming();
  }
  state.SetLabel(name);
  counters(state, tokens);
}

void encodeWarm(benchmark::State& state) {
  const char* name = kFiles[state.range(0)];
  const retnet::io::Tokenizer tokenizer = retnet::io::loadTokenizer(dataDir(name));
  std::size_t tokens = tokenizer.encode(megabyte(), false).size();
  for (auto _ : state) {
    const std::vector<std::int64_t> ids = tokenizer.encode(megabyte(), false);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetLabel(name);
  counters(state, tokens);
}

void decode(benchmark::State& state) {
  const char* name = kFiles[state.range(0)];
  const retnet::io::Tokenizer tokenizer = retnet::io::loadTokenizer(dataDir(name));
  const std::vector<std::int64_t> ids = tokenizer.encode(megabyte(), false);
  for (auto _ : state) {
    const std::string text = tokenizer.decode(ids);
    benchmark::DoNotOptimize(text.data());
  }
  state.SetLabel(name);
  counters(state, ids.size());
}

BENCHMARK(encodeCold)
    ->Name("encode_cold")
    ->DenseRange(0, 2)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);
BENCHMARK(encodeWarm)->Name("encode_warm")->DenseRange(0, 2)->Unit(benchmark::kMillisecond);
BENCHMARK(decode)->Name("decode")->DenseRange(0, 2)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
