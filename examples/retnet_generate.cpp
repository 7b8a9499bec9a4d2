// retnet_generate: load a checkpoint — a RetNet (an FLA or syncdoth Hugging Face directory, or a
// torchscale safetensors file) or an RWKV-4 (BlinkDL's names in a safetensors file, or a Hugging
// Face RwkvForCausalLM directory) — and generate tokens.
//
//   retnet_generate --model DIR|FILE.safetensors --prompt-ids 1,2,3 --max-new 32
//                   (or --prompt "text" / --prompt-file FILE, with the model directory's
//                   tokenizer or --tokenizer FILE|DIR: the generated text is streamed)
//                   [--temperature 0.8] [--top-k 40] [--top-p 0.95] [--seed 7] [--stop-ids 0,2]
//                   [--chunk 64] [--prefill chunkwise|parallel] [--threads 2]
//                   [--precision float|double] [--weights f32|bf16|f16|int8] [--no-mmap]
//                   [--save-state FILE] [--load-state FILE] [--interactive]
//
// --weights: how the dense weights are kept (f32 = the --precision type; bf16/f16 round each weight
// once, int8 per group of 32 with float scales: half or a quarter of the bytes a decoding step
// reads). --no-mmap: weights kept in the file's own type are read into memory the process owns
// instead of used in place in the mapped file (io::LoadOptions::map): slower to load, but the
// kernel cannot drop their pages and read them from disk again in the middle of decoding.
//
// --interactive: after the prompt (if any), a conversation on standard input: each line read is
// fed (with a newline) after what came before, a reply generated and streamed, the state kept
// between turns; it ends at end of input. It needs a tokenizer.
//
// Prints the generated ids (and, with a text prompt, the text as it is generated), prefill and
// decode speeds and the size of the state. With
// --load-state, --prompt-ids are fed after the saved conversation (a saved state has consumed
// everything but the last generated token: pass that token first to continue where it ended).
// Bad arguments or files print one line on stderr and exit non-zero.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <retnet/io/load_model.hpp>
#include <retnet/io/load_tokenizer.hpp>
#include <retnet/io/state_file.hpp>
#include <retnet/retnet.hpp>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include "command_line.hpp"

namespace {

using retnet_examples::parseNumber;
using retnet_examples::UsageError;

const char* const kUsage =
    "usage: retnet_generate --model DIR|FILE (--prompt-ids 1,2,3 | --prompt TEXT | --prompt-file "
    "FILE) [--tokenizer FILE|DIR] [--max-new N] [--temperature T] "
    "[--top-k K] "
    "[--top-p P] [--seed S] [--stop-ids a,b] [--chunk C] [--prefill chunkwise|parallel] "
    "[--threads N] [--precision float|double] [--weights f32|bf16|f16|int8] [--no-mmap] "
    "[--save-state FILE] [--load-state FILE] [--interactive]";

std::vector<std::int64_t> parseIds(const std::string& flag, const std::string& text) {
  std::vector<std::int64_t> ids;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    std::size_t used = 0;
    long long id = 0;
    try {
      id = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size())
      throw UsageError(flag + " expects comma-separated integers, got \"" + text + "\"");
    ids.push_back(id);
  }
  if (ids.empty()) throw UsageError(flag + " expects at least one id");
  return ids;
}

struct Arguments {
  std::string model, saveState, loadState, precision = "float";
  std::string text, tokenizer;  // a text prompt (--prompt, --prompt-file) and --tokenizer
  bool hasText = false;
  bool interactive = false;  // --interactive: a conversation on standard input
  std::vector<std::int64_t> prompt, stop;
  retnet::GenerationOptions options;
  int threads = 0;
  retnet::io::LoadOptions load;  // --weights, --no-mmap
};

Arguments parse(int argc, char** argv) {
  const std::vector<std::string> valued{
      "--model",      "--prompt-ids", "--max-new", "--temperature", "--top-k",     "--top-p",
      "--seed",       "--stop-ids",   "--chunk",   "--prefill",     "--threads",   "--precision",
      "--save-state", "--load-state", "--prompt",  "--prompt-file", "--tokenizer", "--weights"};
  const retnet_examples::Flags flags(argc, argv, valued, {"--interactive", "--no-mmap"});
  std::map<std::string, std::string> given = flags.values;
  Arguments a;
  a.interactive = flags.switches.at("--interactive");
  a.load.map = !flags.switches.at("--no-mmap");
  if (!given.count("--model")) throw UsageError("--model is required");
  const int prompts = static_cast<int>(given.count("--prompt-ids") + given.count("--prompt") +
                                       given.count("--prompt-file"));
  if (prompts > 1 || (prompts == 0 && !a.interactive))
    throw UsageError("give exactly one of --prompt-ids, --prompt and --prompt-file");
  a.model = given["--model"];
  if (given.count("--prompt-ids")) a.prompt = parseIds("--prompt-ids", given["--prompt-ids"]);
  if (given.count("--prompt")) {
    a.text = given["--prompt"];
    a.hasText = true;
  }
  if (given.count("--prompt-file")) {
    std::ifstream in(given["--prompt-file"], std::ios::binary);
    if (!in) throw UsageError("--prompt-file: cannot read \"" + given["--prompt-file"] + "\"");
    a.text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    a.hasText = true;
  }
  if (given.count("--tokenizer")) a.tokenizer = given["--tokenizer"];
  if (given.count("--stop-ids")) a.options.stopTokens = parseIds("--stop-ids", given["--stop-ids"]);
  if (given.count("--max-new"))
    a.options.maxNewTokens = parseNumber<retnet::Index>("--max-new", given["--max-new"]);
  if (given.count("--temperature"))
    a.options.sampling.temperature = parseNumber<double>("--temperature", given["--temperature"]);
  if (given.count("--top-k"))
    a.options.sampling.topK = parseNumber<retnet::Index>("--top-k", given["--top-k"]);
  if (given.count("--top-p"))
    a.options.sampling.topP = parseNumber<double>("--top-p", given["--top-p"]);
  if (given.count("--seed")) a.options.seed = parseNumber<std::uint64_t>("--seed", given["--seed"]);
  if (given.count("--chunk"))
    a.options.chunkSize = parseNumber<retnet::Index>("--chunk", given["--chunk"]);
  if (given.count("--prefill")) {
    const std::string form = given["--prefill"];
    if (form != "chunkwise" && form != "parallel")
      throw UsageError("--prefill must be chunkwise or parallel, got \"" + form + "\"");
    a.options.prefillForm = form == "parallel" ? retnet::Form::kParallel : retnet::Form::kChunkwise;
  }
  if (given.count("--threads")) a.threads = parseNumber<int>("--threads", given["--threads"]);
  if (given.count("--precision")) a.precision = given["--precision"];
  if (a.precision != "float" && a.precision != "double")
    throw UsageError("--precision must be float or double, got \"" + a.precision + "\"");
  if (a.threads < 0) throw UsageError("--threads must be >= 1");
  if (given.count("--weights")) {
    const auto type = retnet::weightTypeFromName(given["--weights"]);
    if (!type)
      throw UsageError("--weights must be f32, bf16, f16 or int8, got \"" + given["--weights"] +
                       "\"");
    a.load.weights = *type;
  }
  a.saveState = given.count("--save-state") ? given["--save-state"] : "";
  a.loadState = given.count("--load-state") ? given["--load-state"] : "";
  // The library checks the remaining ranges (ids, sampling options, chunk) with its own messages.
  return a;
}

double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// One line describing the loaded model.
template <typename Scalar>
void describe(const Arguments& a, const retnet::io::ModelInfo& info, double loadSeconds) {
  const char* precision = sizeof(Scalar) == 4 ? "float32" : "float64";
  if (info.family == retnet::io::ModelFamily::kRwkv4) {
    const auto& c = info.rwkv4;
    std::printf(
        "model: %s (rwkv4: layers %ld, embed %ld, att %ld, ffn %ld, vocab %ld), %s, loaded in "
        "%.2f s\n",
        a.model.c_str(), static_cast<long>(c.layers), static_cast<long>(c.block.embedDim),
        static_cast<long>(c.block.attentionDim()), static_cast<long>(c.block.ffnDim),
        static_cast<long>(c.vocab), precision, loadSeconds);
    return;
  }
  const auto& c = info.config;
  std::printf(
      "model: %s (%s: layers %ld, embed %ld, value %ld, heads %ld, ffn %ld, vocab %ld), %s, "
      "loaded in %.2f s\n",
      a.model.c_str(), retnet::io::familyName(info.family), static_cast<long>(c.layers),
      static_cast<long>(c.block.embedDim), static_cast<long>(c.block.valueDim),
      static_cast<long>(c.block.heads), static_cast<long>(c.block.ffnDim),
      static_cast<long>(c.vocab), precision, loadSeconds);
}

/// Generation with a model of any family (RetNet, RWKV-4): the same skeleton, state and files.
/// The tokenizer of a text prompt: --tokenizer, else the model directory's.
std::optional<retnet::io::Tokenizer> tokenizerFor(const Arguments& a) {
  if (!a.hasText && !a.interactive && a.tokenizer.empty()) return std::nullopt;
  if (!a.tokenizer.empty()) return retnet::io::loadTokenizer(a.tokenizer);
  if (!std::filesystem::is_directory(a.model))
    throw UsageError(std::string(a.hasText ? "a text prompt" : "--interactive") +
                     " needs --tokenizer (the model is a single file)");
  return retnet::io::loadTokenizer(a.model);
}

/// The prompt's ids, checked against the model's vocabulary: a tokenizer that is not the model's
/// is named as the cause.
std::vector<std::int64_t> encodeFor(const retnet::io::Tokenizer& tokenizer, const std::string& text,
                                    bool addSpecial, retnet::Index vocab) {
  std::vector<std::int64_t> ids = tokenizer.encode(text, addSpecial);
  for (const std::int64_t id : ids) {
    if (id >= vocab)
      throw std::runtime_error("the tokenizer (" + std::string(tokenizer.kind()) + ", " +
                               std::to_string(tokenizer.vocabSize()) + " tokens) gave token " +
                               std::to_string(id) + ", outside the model's vocabulary of " +
                               std::to_string(vocab) + ": it is not this model's tokenizer");
  }
  return ids;
}

/// What one prompt produced: the drawn tokens and when.
struct Turn {
  std::vector<std::int64_t> tokens;
  double firstTokenAt = -1;  ///< seconds from the start to the first drawn token (the prefill)
  double total = 0;          ///< seconds from the start to the end
};

/// Feeds `prompt` to `state` and generates, streaming the text when there is a tokenizer.
/// `state` becomes the state that has consumed everything but the last drawn token: where the
/// conversation resumes (that token first).
template <typename Model>
Turn runTurn(const Model& model, typename Model::State& state,
             const std::vector<std::int64_t>& prompt, const retnet::GenerationOptions& base,
             const retnet::io::Tokenizer* tokenizer) {
  Turn turn;
  retnet::GenerationOptions options = base;
  std::optional<retnet::io::StreamDecoder> stream;
  if (tokenizer != nullptr) stream.emplace(*tokenizer);
  const auto start = std::chrono::steady_clock::now();
  options.onToken = [&](retnet::Index, std::int64_t token) {
    if (turn.firstTokenAt < 0) turn.firstTokenAt = secondsSince(start);
    turn.tokens.push_back(token);
    if (stream && token < tokenizer->vocabSize()) {
      std::fputs(stream->push(token).c_str(), stdout);
      std::fflush(stdout);
    }
  };
  typename Model::State resume;
  model.continueGeneration(state, {prompt}, options, &resume);
  state = std::move(resume);
  turn.total = secondsSince(start);
  if (stream) std::printf("%s\n", stream->flush().c_str());
  return turn;
}

/// The speed of a turn: the first token needs only the prefill, every later one a decoding step.
void printSpeed(const Turn& turn, std::size_t promptTokens) {
  if (turn.firstTokenAt < 0) return;
  std::printf("prefill: %.3f ms (%.0f tokens/s)\n", turn.firstTokenAt * 1e3,
              static_cast<double>(promptTokens) / turn.firstTokenAt);
  const auto steps = static_cast<double>(turn.tokens.size()) - 1;
  if (steps > 0)
    std::printf("decode: %.3f ms per token (%.0f tokens/s)\n",
                (turn.total - turn.firstTokenAt) / steps * 1e3,
                steps / (turn.total - turn.firstTokenAt));
}

/// --interactive: a line read, fed (after the token the previous turn drew last), a reply
/// generated and streamed; the state carries the whole conversation. Ends at end of input.
/// Returns the token drawn last and not yet fed (none if nothing was drawn).
template <typename Model>
std::vector<std::int64_t> converse(const Model& model, typename Model::State& state,
                                   const Arguments& a, const retnet::io::Tokenizer& tokenizer,
                                   std::vector<std::int64_t> pending) {
  const auto& c = model.config();
  for (int turn = 1;; ++turn) {
    std::printf("> ");
    std::fflush(stdout);
    std::string line;
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    // BOS (where the tokenizer adds one) only at the very start of a conversation.
    const bool first = state.empty() && pending.empty();
    std::vector<std::int64_t> prompt = pending;
    for (const std::int64_t id : encodeFor(tokenizer, line + "\n", first, c.vocab))
      prompt.push_back(id);
    const Turn reply = runTurn(model, state, prompt, a.options, &tokenizer);
    pending.clear();
    if (!reply.tokens.empty()) pending.push_back(reply.tokens.back());
    std::printf("[turn %d: %zu prompt tokens, %zu generated, %.0f ms; position %ld]\n", turn,
                prompt.size(), reply.tokens.size(), reply.total * 1e3,
                static_cast<long>(state.position(0)));
  }
  std::printf("\n");
  return pending;
}

/// Generation with a model of any family (RetNet, RWKV-4): the same skeleton, state and files.
template <typename Model>
int generate(const Arguments& a, const Model& model) {
  using State = typename Model::State;
  const auto& c = model.config();
  const std::optional<retnet::io::Tokenizer> tokenizer = tokenizerFor(a);
  if (tokenizer) {
    std::printf("tokenizer: %s, %ld tokens", tokenizer->kind(),
                static_cast<long>(tokenizer->vocabSize()));
  }
  State state;
  if (!a.loadState.empty()) {
    state = retnet::io::loadModelState<typename Model::BlockType>(a.loadState, c);
    if (state.batch() != 1)
      throw std::runtime_error(a.loadState + ": holds " + std::to_string(state.batch()) +
                               " sequences, this tool continues one");
  }
  std::vector<std::int64_t> prompt = a.prompt;
  if (a.hasText) {
    prompt = encodeFor(*tokenizer, a.text, state.empty(), c.vocab);
    if (prompt.empty()) throw UsageError("the text prompt encodes to no tokens");
    std::printf("; prompt: %zu tokens", prompt.size());
  }
  if (tokenizer) std::printf("\n");
  if (!a.loadState.empty()) {
    std::printf("loaded state: %s at position %ld\n", a.loadState.c_str(),
                static_cast<long>(state.position(0)));
  }

  std::vector<std::int64_t> tokens;
  if (!prompt.empty()) {
    if (tokenizer) {
      std::printf("text: %s", a.text.c_str());  // then the generated text, as it comes
      std::fflush(stdout);
    }
    const Turn turn = runTurn(model, state, prompt, a.options, tokenizer ? &*tokenizer : nullptr);
    tokens = turn.tokens;
    std::printf("prompt: %zu tokens\n", prompt.size());
    std::printf("generated:");
    for (const auto t : tokens) std::printf(" %lld", static_cast<long long>(t));
    std::printf("\n");
    printSpeed(turn, prompt.size());
  }
  std::vector<std::int64_t> pending;  // drawn last, not yet fed: where a continuation starts
  if (!tokens.empty()) pending.push_back(tokens.back());
  if (a.interactive) pending = converse(model, state, a, *tokenizer, pending);
  std::printf("state: %ld bytes (fixed: independent of the sequence length)\n",
              static_cast<long>(state.bytes()));
  if (!a.saveState.empty()) {
    if (state.empty()) throw std::runtime_error("--save-state: nothing was fed, no state to save");
    retnet::io::saveState(state, c, a.saveState);
    std::printf("saved state: %s at position %ld; continue with --load-state %s --prompt-ids ",
                a.saveState.c_str(), static_cast<long>(state.position(0)), a.saveState.c_str());
    if (pending.empty()) {
      std::printf("<next tokens>\n");  // everything given was consumed
    } else {
      std::printf("%lld\n", static_cast<long long>(pending.back()));
    }
  }
  return 0;
}

template <typename Scalar>
int run(const Arguments& a) {
  retnet::io::ModelInfo info;
  const auto loadStart = std::chrono::steady_clock::now();
  const auto model = retnet::io::loadModel<retnet::io::AnyModel<Scalar>>(a.model, a.load, &info);
  describe<Scalar>(a, info, secondsSince(loadStart));
  const std::size_t bytes = std::visit([](const auto& m) { return m.storedWeightBytes(); }, model);
  std::printf("weights: %s, %.1f MB as stored; kernels: %s\n",
              a.load.weights == retnet::WeightType::kFull ? (sizeof(Scalar) == 4 ? "f32" : "f64")
                                                          : retnet::weightTypeName(a.load.weights),
              static_cast<double>(bytes) / 1e6, retnet::simdLevelName(retnet::simdLevel()));
  if (a.threads > 0) retnet::setNumThreads(a.threads);
  std::printf("threads: %d%s\n", retnet::numThreads(),
              retnet::numThreads() == 1 && a.threads > 1 ? " (built without OpenMP)" : "");
  return std::visit([&](const auto& m) { return generate(a, m); }, model);
}

}  // namespace

int main(int argc, char** argv) {
  return retnet_examples::runTool(
      "retnet_generate", kUsage, [&] { return parse(argc, argv); },
      [](const Arguments& arguments) {
        return arguments.precision == "double" ? run<double>(arguments) : run<float>(arguments);
      });
}
