// retnet_train: trains a byte-level RetNet from scratch on a text file, then samples from it:
// torchscale's architecture (--family torchscale, the default) or FLA's (--family fla: grouped
// heads possible, half-split rotary, no normalisers, SwiGLU, a head-norm weight).
//
//   retnet_train --text FILE --out DIR [--steps 2000] [--batch 8] [--seq 256]
//                [--family torchscale|fla] [--layers 4] [--dim 256] [--heads 4] [--kv-heads H]
//                [--ffn 512] [--value-dim 512]
//                [--lr 2e-3] [--min-lr 2e-4] [--warmup 100] [--weight-decay 0.1] [--clip 1.0]
//                [--form chunkwise|parallel] [--chunk 64] [--val-every 100] [--val-fraction 0.05]
//                [--val-batches 8] [--save-every 500] [--seed 1] [--threads N] [--precision
//                float|double] [--stop-at STEP] [--resume] [--sample "prompt"] [--sample-tokens
//                200]
//
// The tokens are the file's bytes (vocabulary 256). The last --val-fraction of the file is held
// out: every --val-every steps the mean loss over --val-batches fixed batches of it is printed.
// Each step draws --batch windows of --seq + 1 bytes at positions that depend only on (seed,
// step), runs forwardTraining + backwardCrossEntropy, clips the gradients' global norm to --clip
// and takes an AdamW step at the warm-up + cosine schedule's rate; a progress line shows the
// loss, tokens/s and the time left.
//
// DIR receives, every --save-every steps and at the end:
//   model.safetensors       the weights under torchscale's RetNetDecoder names (io::loadModel,
//                           retnet_generate, torchscale's load_state_dict), or FLA's names
//   config.json             --family fla: FLA's RetNetConfig (a Hugging Face directory that
//                           FLA's RetNetForCausalLM.from_pretrained and io::loadModel read)
//   tokenizer.json          a byte-level tokenizer (token id = byte value) for retnet_generate
//                           --prompt and Hugging Face tokenizers
//   optimizer.safetensors   AdamW's moments and step count
//   training.json           the arguments and the step reached (what --resume continues from)
//   log.csv                 step, lr, train loss, validation loss, gradient norm, tokens/s
// --stop-at STEP ends the run at that step (saved), as a job with a time limit would; --resume
// continues a run in DIR from its last save, bit for bit as if it had not stopped.
// Bad arguments or files print one line on stderr and exit non-zero.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <retnet/init.hpp>
#include <retnet/io/load_model.hpp>
#include <retnet/io/training_checkpoint.hpp>
#include <retnet/optimizer.hpp>
#include <retnet/retnet.hpp>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "command_line.hpp"

namespace {

using retnet_examples::parseNumber;
using retnet_examples::UsageError;

const char* const kUsage =
    "usage: retnet_train --text FILE --out DIR [--steps N] [--batch B] [--seq T] "
    "[--family torchscale|fla] [--layers L] [--dim D] [--heads H] [--kv-heads H] [--ffn F] "
    "[--value-dim V] [--lr LR] [--min-lr LR] [--warmup N] "
    "[--weight-decay W] [--clip C] [--form chunkwise|parallel] [--chunk C] [--val-every N] "
    "[--val-fraction F] [--val-batches N] [--save-every N] [--seed S] [--threads N] "
    "[--precision float|double] [--stop-at STEP] [--resume] [--sample TEXT] [--sample-tokens N]";

/// Every setting of a run: what training.json records and --resume reads back.
struct Arguments {
  std::string text, out;
  std::int64_t steps = 2000, batch = 8, seq = 256;
  std::string family = "torchscale";
  std::int64_t layers = 4, dim = 256, heads = 4, kvHeads = 0, ffn = 512, valueDim = 512;
  double lr = 2e-3, minLr = 2e-4, weightDecay = 0.1, clip = 1.0, valFraction = 0.05;
  std::int64_t warmup = 100, chunk = 64, valEvery = 100, valBatches = 8, saveEvery = 500;
  std::int64_t stopAt = 0;  // 0: at --steps
  std::string form = "chunkwise", precision = "float";
  std::uint64_t seed = 1;
  int threads = 0;
  bool resume = false;
  std::string sample = "\n";
  std::int64_t sampleTokens = 200;

  /// visit(key, member) for every setting a resumed run must share: training.json's "run".
  template <typename Self, typename Visit>
  static void forEachSetting(Self& a, Visit&& visit) {
    visit("text", a.text);
    visit("steps", a.steps);
    visit("batch", a.batch);
    visit("seq", a.seq);
    visit("family", a.family);
    visit("layers", a.layers);
    visit("dim", a.dim);
    visit("heads", a.heads);
    visit("kv_heads", a.kvHeads);
    visit("ffn", a.ffn);
    visit("value_dim", a.valueDim);
    visit("lr", a.lr);
    visit("min_lr", a.minLr);
    visit("weight_decay", a.weightDecay);
    visit("clip", a.clip);
    visit("val_fraction", a.valFraction);
    visit("warmup", a.warmup);
    visit("chunk", a.chunk);
    visit("val_batches", a.valBatches);
    visit("form", a.form);
    visit("precision", a.precision);
    visit("seed", a.seed);
  }

  nlohmann::json run() const {
    nlohmann::json settings = nlohmann::json::object();
    forEachSetting(*this, [&](const char* key, const auto& value) { settings[key] = value; });
    return settings;
  }
};

Arguments parse(int argc, char** argv) {
  const std::vector<std::string> valued{
      "--text",       "--out",           "--steps",        "--batch",
      "--seq",        "--layers",        "--dim",          "--heads",
      "--ffn",        "--value-dim",     "--lr",           "--min-lr",
      "--warmup",     "--weight-decay",  "--clip",         "--form",
      "--chunk",      "--val-every",     "--val-fraction", "--val-batches",
      "--save-every", "--seed",          "--threads",      "--precision",
      "--sample",     "--sample-tokens", "--stop-at",      "--family",
      "--kv-heads"};
  const retnet_examples::Flags flags(argc, argv, valued, {"--resume"});
  std::map<std::string, std::string> given = flags.values;
  Arguments a;
  a.resume = flags.switches.at("--resume");
  if (!given.count("--out")) throw UsageError("--out is required");
  if (!given.count("--text") && !a.resume) throw UsageError("--text is required");
  a.out = given["--out"];
  if (given.count("--text")) a.text = given["--text"];
  const auto integer = [&](const char* flag, std::int64_t& value, std::int64_t minimum) {
    if (!given.count(flag)) return;
    value = parseNumber<std::int64_t>(flag, given[flag]);
    if (value < minimum)
      throw UsageError(std::string(flag) + " must be >= " + std::to_string(minimum));
  };
  const auto real = [&](const char* flag, double& value) {
    if (given.count(flag)) value = parseNumber<double>(flag, given[flag]);
  };
  integer("--steps", a.steps, 1);
  integer("--batch", a.batch, 1);
  integer("--seq", a.seq, 1);
  integer("--layers", a.layers, 1);
  integer("--dim", a.dim, 1);
  integer("--heads", a.heads, 1);
  integer("--ffn", a.ffn, 1);
  integer("--value-dim", a.valueDim, 1);
  integer("--warmup", a.warmup, 0);
  integer("--chunk", a.chunk, 1);
  integer("--val-every", a.valEvery, 1);
  integer("--val-batches", a.valBatches, 1);
  integer("--save-every", a.saveEvery, 1);
  integer("--sample-tokens", a.sampleTokens, 0);
  integer("--stop-at", a.stopAt, 1);
  integer("--kv-heads", a.kvHeads, 1);
  if (given.count("--family")) a.family = given["--family"];
  if (a.family != "torchscale" && a.family != "fla")
    throw UsageError("--family must be torchscale or fla, got \"" + a.family + "\"");
  if (a.kvHeads > 0 && a.family != "fla")
    throw UsageError("--kv-heads needs --family fla (torchscale has no grouped heads)");
  real("--lr", a.lr);
  real("--min-lr", a.minLr);
  real("--weight-decay", a.weightDecay);
  real("--clip", a.clip);
  real("--val-fraction", a.valFraction);
  if (!(a.valFraction > 0 && a.valFraction < 1))
    throw UsageError("--val-fraction must be in (0, 1)");
  if (given.count("--seed")) a.seed = parseNumber<std::uint64_t>("--seed", given["--seed"]);
  if (given.count("--threads")) a.threads = parseNumber<int>("--threads", given["--threads"]);
  if (a.threads < 0) throw UsageError("--threads must be >= 1");
  if (given.count("--form")) a.form = given["--form"];
  if (a.form != "chunkwise" && a.form != "parallel")
    throw UsageError("--form must be chunkwise or parallel, got \"" + a.form + "\"");
  if (given.count("--precision")) a.precision = given["--precision"];
  if (a.precision != "float" && a.precision != "double")
    throw UsageError("--precision must be float or double, got \"" + a.precision + "\"");
  if (a.family == "fla" && a.precision == "double")
    throw UsageError(
        "--family fla saves float32 weights (FLA's checkpoints have no float64), so a resumed run "
        "would not continue a double one exactly: use --precision float");
  if (given.count("--sample")) a.sample = given["--sample"];
  return a;
}

/// The settings of the run saved in `dir` (training.json), for --resume: the saved run's
/// settings; only --steps, --val-every, --save-every, --threads and the sampling flags may be
/// given anew.
std::pair<Arguments, std::int64_t> resumed(const Arguments& given) {
  const std::string path = given.out + "/training.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("--resume: cannot read " + path);
  const nlohmann::json saved = nlohmann::json::parse(in, nullptr, false);
  if (saved.is_discarded() || !saved.contains("run") || !saved.contains("step"))
    throw std::runtime_error(path + ": not a retnet_train state (needs \"run\" and \"step\")");
  Arguments a = given;
  const nlohmann::json& r = saved["run"];
  try {
    // The saved run's settings, except --text (a moved file) and --steps when given anew.
    Arguments::forEachSetting(a, [&](const char* key, auto& member) {
      const std::string name = key;
      if ((name == "text" && !given.text.empty()) ||
          (name == "steps" && given.steps != Arguments{}.steps))
        return;
      member = r.at(key).template get<std::decay_t<decltype(member)>>();
    });
    return {a, saved["step"].get<std::int64_t>()};
  } catch (const nlohmann::json::exception& error) {
    throw std::runtime_error(path + ": " + error.what());
  }
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// GPT-2's printable stand-in of each byte (what a ByteLevel tokenizer's vocabulary holds).
std::string byteStandIn(int byte) {
  int code = byte;
  const bool printable = (byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || byte >= 174;
  if (!printable) {
    int n = 0;  // the byte's rank among the non-printable ones, placed from 256 on
    for (int b = 0; b < byte; ++b)
      if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) ++n;
    code = 256 + n;
  }
  std::string utf8;  // code < 0x800: one or two bytes
  if (code < 0x80) {
    utf8 += static_cast<char>(code);
  } else {
    utf8 += static_cast<char>(0xC0 | (code >> 6));
    utf8 += static_cast<char>(0x80 | (code & 0x3F));
  }
  return utf8;
}

/// A Hugging Face tokenizer.json whose tokens are the 256 bytes, id = byte value: a ByteLevel
/// BPE without merges or regex, so that encoding any text gives its bytes.
nlohmann::json byteTokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byteStandIn(b)] = b;
  const nlohmann::json byteLevel = {{"type", "ByteLevel"},
                                    {"add_prefix_space", false},
                                    {"trim_offsets", false},
                                    {"use_regex", false}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", nlohmann::json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", byteLevel},
          {"post_processor", nullptr},
          {"decoder", byteLevel},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"vocab", vocab},
            {"merges", nlohmann::json::array()}}}};
}

/// Row b of tokens/targets: the window of data at `start` and the same shifted by one byte.
void copyWindow(const std::string& data, std::size_t start, retnet::Index b,
                retnet::TokenMatrix& tokens, retnet::TokenMatrix& targets) {
  for (retnet::Index t = 0; t < tokens.cols(); ++t) {
    tokens(b, t) = static_cast<unsigned char>(data[start + static_cast<std::size_t>(t)]);
    targets(b, t) = static_cast<unsigned char>(data[start + static_cast<std::size_t>(t) + 1]);
  }
}

/// One training batch: `batch` rows of seq + 1 bytes at positions drawn from (seed, step) alone,
/// so that a resumed run sees the same batches.
void trainingBatch(const std::string& data, std::int64_t seq, std::uint64_t seed, std::int64_t step,
                   retnet::TokenMatrix& tokens, retnet::TokenMatrix& targets) {
  const auto starts = static_cast<std::uint64_t>(data.size()) - static_cast<std::uint64_t>(seq);
  // drawSeed hashes (seed, step): nearby steps get unrelated streams (a plain seed ^ step·γ would
  // give step s + 1 the windows of step s shifted by one row).
  retnet::SplitMix64 random(retnet::drawSeed(seed, step));
  for (retnet::Index b = 0; b < tokens.rows(); ++b) {
    const auto start = static_cast<std::size_t>(random.next() % starts);
    copyWindow(data, start, b, tokens, targets);
  }
}

/// Validation batch `index` of `count`: windows spread evenly over the held-out text, the same in
/// every evaluation.
void validationBatch(const std::string& data, std::int64_t seq, std::int64_t index,
                     std::int64_t count, retnet::TokenMatrix& tokens,
                     retnet::TokenMatrix& targets) {
  const auto last = static_cast<std::int64_t>(data.size()) - seq - 1;  // the last start
  const std::int64_t windows = count * tokens.rows();
  for (retnet::Index b = 0; b < tokens.rows(); ++b) {
    const std::int64_t window = index * tokens.rows() + b;
    const auto start = static_cast<std::size_t>(windows > 1 ? last * window / (windows - 1) : 0);
    copyWindow(data, start, b, tokens, targets);
  }
}

std::string duration(double seconds) {
  const auto s = static_cast<long>(seconds + 0.5);
  char text[32];
  if (s >= 3600) {
    std::snprintf(text, sizeof text, "%ldh%02ldm", s / 3600, s / 60 % 60);
  } else {
    std::snprintf(text, sizeof text, "%ldm%02lds", s / 60, s % 60);
  }
  return text;
}

template <typename Scalar>
int train(const Arguments& args, std::int64_t startStep) {
  using Model = retnet::RetNetModel<Scalar>;
  namespace fs = std::filesystem;
  const std::string data = readFile(args.text);
  const auto heldOut =
      static_cast<std::int64_t>(static_cast<double>(data.size()) * args.valFraction);
  const std::string trainText = data.substr(0, data.size() - static_cast<std::size_t>(heldOut));
  const std::string valText = data.substr(trainText.size());
  if (static_cast<std::int64_t>(valText.size()) < args.seq + 2 ||
      static_cast<std::int64_t>(trainText.size()) < args.seq + 2)
    throw std::runtime_error(args.text + ": " + std::to_string(data.size()) +
                             " bytes are too few for --seq " + std::to_string(args.seq) +
                             " with --val-fraction " + std::to_string(args.valFraction));
  fs::create_directories(args.out);
  const std::string modelPath = args.out + "/model.safetensors";
  const std::string optimizerPath = args.out + "/optimizer.safetensors";

  retnet::RetNetModelConfig config;
  config.vocab = 256;
  config.layers = args.layers;
  config.block.embedDim = args.dim;
  config.block.valueDim = args.valueDim;
  config.block.heads = args.heads;
  config.block.ffnDim = args.ffn;
  config.block.activation = retnet::Activation::kGelu;
  if (args.family == "fla") {  // FLA's semantics (MultiScaleRetentionConfig::fla) and SwiGLU
    if (args.dim % args.heads != 0 || args.valueDim % args.heads != 0)
      throw std::runtime_error("--dim and --value-dim must be multiples of --heads");
    const auto r = retnet::MultiScaleRetentionConfig::fla(
        args.dim, args.heads, args.kvHeads > 0 ? args.kvHeads : args.heads, args.dim / args.heads,
        args.valueDim / args.heads, config.block.eps);
    config.block.headKeyDim = r.headKeyDim;
    config.block.kvHeads = r.kvHeads;
    config.block.rotary = r.rotary;
    config.block.normalization = r.normalization;
    config.block.scaleSide = r.scaleSide;
    config.block.activation = retnet::Activation::kSwish;
  }
  Model model = startStep > 0
                    ? retnet::io::loadModel<Scalar>(args.out)
                    : Model(config, retnet::initialRetNetWeights<Scalar>(config, args.seed));
  retnet::AdamWOptions adamw;
  adamw.learningRate = args.lr;
  adamw.weightDecay = args.weightDecay;
  adamw.beta2 = 0.95;
  retnet::AdamW<Scalar> optimizer =
      startStep > 0 ? retnet::io::loadAdamW<Scalar>(optimizerPath) : retnet::AdamW<Scalar>(adamw);
  if (optimizer.steps() != startStep)
    throw std::runtime_error(optimizerPath + " holds " + std::to_string(optimizer.steps()) +
                             " steps, training.json " + std::to_string(startStep));
  const retnet::WarmupCosineSchedule schedule(args.lr, args.minLr,
                                              std::min(args.warmup, args.steps), args.steps);
  const retnet::Form form =
      args.form == "parallel" ? retnet::Form::kParallel : retnet::Form::kChunkwise;

  std::size_t parameters = 0;
  model.forEachParameter(
      [&](const char*, auto p) { parameters += static_cast<std::size_t>(p.size()); });
  std::printf(
      "model: %lld layers, D %lld, V %lld, %lld heads, FFN %lld, vocab 256: %.2fM parameters\n",
      static_cast<long long>(args.layers), static_cast<long long>(args.dim),
      static_cast<long long>(args.valueDim), static_cast<long long>(args.heads),
      static_cast<long long>(args.ffn), static_cast<double>(parameters) / 1e6);
  std::printf(
      "data: %s, %zu bytes for training, %zu held out; batch %lld x %lld, %s form%s, %d "
      "threads, %s\n",
      args.text.c_str(), trainText.size(), valText.size(), static_cast<long long>(args.batch),
      static_cast<long long>(args.seq), args.form.c_str(),
      form == retnet::Form::kChunkwise ? (" (chunk " + std::to_string(args.chunk) + ")").c_str()
                                       : "",
      retnet::numThreads(), args.precision.c_str());
  if (startStep > 0) std::printf("resumed at step %lld\n", static_cast<long long>(startStep));

  typename Model::TrainingCache cache;
  typename Model::Gradients grads = model.zeroGradients();
  retnet::TokenMatrix tokens(args.batch, args.seq), targets(args.batch, args.seq);

  const auto validationLoss = [&] {
    double sum = 0;
    for (std::int64_t v = 0; v < args.valBatches; ++v) {
      validationBatch(valText, args.seq, v, args.valBatches, tokens, targets);
      const auto& logits = model.forwardTraining(form, tokens, args.chunk, cache);
      sum += retnet::stages::crossEntropy<Scalar>(logits, targets.data());
    }
    return sum / static_cast<double>(args.valBatches);
  };

  std::ofstream log(args.out + "/log.csv", startStep > 0 ? std::ios::app : std::ios::trunc);
  if (startStep == 0) log << "step,lr,train_loss,val_loss,grad_norm,tokens_per_s,seconds\n";
  const auto save = [&](std::int64_t step) {
    if (args.family == "fla") {
      retnet::io::saveFlaModel(model, args.out);
    } else {
      retnet::io::saveTorchscaleModel(model, modelPath);
    }
    retnet::io::saveAdamW(optimizer, optimizerPath);
    std::ofstream(args.out + "/tokenizer.json") << byteTokenizer().dump(1) << "\n";
    std::ofstream(args.out + "/training.json")
        << nlohmann::json{{"run", args.run()}, {"step", step}}.dump(1) << "\n";
    log.flush();
  };

  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  double smoothed = NAN, lastVal = NAN;
  std::int64_t stepsRun = 0;
  const std::int64_t end = args.stopAt > 0 ? std::min(args.stopAt, args.steps) : args.steps;
  for (std::int64_t step = startStep; step < end; ++step) {
    trainingBatch(trainText, args.seq, args.seed, step, tokens, targets);
    grads.setZero();
    model.forwardTraining(form, tokens, args.chunk, cache);
    const double loss = model.backwardCrossEntropy(cache, targets, grads);
    const double norm = retnet::clipGradientNorm(grads, args.clip);
    const double lr = schedule(step);
    optimizer.step(model, grads, lr);
    ++stepsRun;

    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double tokensPerSecond = static_cast<double>(stepsRun * args.batch * args.seq) / seconds;
    smoothed = std::isnan(smoothed) ? loss : 0.95 * smoothed + 0.05 * loss;
    const bool last = step + 1 == end;
    double val = NAN;
    if ((step + 1) % args.valEvery == 0 || last) lastVal = val = validationLoss();
    log << step + 1 << ',' << lr << ',' << loss << ',';
    if (!std::isnan(val)) log << val;
    log << ',' << norm << ',' << tokensPerSecond << ',' << seconds << '\n';

    const double done =
        static_cast<double>(step + 1 - startStep) / static_cast<double>(end - startStep);
    const int width = 24, filled = static_cast<int>(done * width);
    std::fprintf(stderr, "\r[%s%s] step %lld/%lld  loss %.3f  val %.3f  %.0f tok/s  ETA %s   ",
                 std::string(static_cast<std::size_t>(filled), '=').c_str(),
                 std::string(static_cast<std::size_t>(width - filled), ' ').c_str(),
                 static_cast<long long>(step + 1), static_cast<long long>(args.steps), smoothed,
                 lastVal, tokensPerSecond, duration(seconds / done * (1 - done)).c_str());
    if (!std::isnan(val)) std::fprintf(stderr, "\n");
    if ((step + 1) % args.saveEvery == 0 || last) save(step + 1);
  }
  std::fprintf(stderr, "\n");
  std::printf("saved %s (validation loss %.4f nats/byte, %.3f bits/byte)\n", args.out.c_str(),
              lastVal, lastVal / std::log(2.0));

  if (args.sampleTokens > 0 && !args.sample.empty()) {
    retnet::GenerationOptions options;
    options.maxNewTokens = args.sampleTokens;
    options.sampling.temperature = 0.8;
    options.sampling.topK = 40;
    options.seed = args.seed;
    std::vector<std::int64_t> prompt(args.sample.begin(), args.sample.end());
    for (std::int64_t& id : prompt) id = static_cast<unsigned char>(id);
    options.onToken = [](retnet::Index, std::int64_t id) {
      std::fputc(static_cast<int>(id), stdout);
      std::fflush(stdout);
    };
    std::printf("sample:\n%s", args.sample.c_str());
    model.generate({prompt}, options);
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return retnet_examples::runTool(
      "retnet_train", kUsage, [&] { return parse(argc, argv); },
      [](Arguments args) {
        std::int64_t startStep = 0;
        if (args.resume) std::tie(args, startStep) = resumed(args);
        if (args.threads > 0) retnet::setNumThreads(args.threads);
        return args.precision == "double" ? train<double>(args, startStep)
                                          : train<float>(args, startStep);
      });
}
