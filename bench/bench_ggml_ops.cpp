// retnet's side of bench/ggml.sh (not Google Benchmark): the cases of ggml_compare.hpp through
// retnet's stage functions, as the layers call them.
//
//   bench_ggml_ops --kind linear|gla|check [--type f32|bf16|int8] [--threads N] …
//
// linear: stages::linear(x, W, y) with W a LinearWeight<float> converted to WeightType::kFull,
//   kBf16 or kInt8 (int8 codes, a float32 scale per 32 columns; x stays float32), one call per
//   copy of W, each copy in turn. The run also measures the read bandwidth (a sum over 1 GiB).
// gla: stages::retention of the 8 heads, heads over threads as MultiScaleRetention does (one
//   whole head per task), FLA's retention (no normalisation, scale dk^(−1/2) on q), the state of
//   each head (dk x dv) updated in place: T = 1 the recurrent step, T = 64 the chunkwise form
//   (chunk 64) and the recurrent form, for each of --layers states in turn.
// check: besides retnet's outputs, the exact results (double, from the same float inputs) and
//   for each output the a-priori error bound of each side's format, which bench/ggml.sh checks:
//   (n = in, u = 2^−24, γ_m = m·u/(1 − m·u), A = Σ_i |w_i||x_i| over row j of W)
//     f32  both                 γ_n·A
//     bf16 retnet               2^−9·A + γ_n·(1 + 2^−9)·A            (W rounded to nearest even)
//          ggml                 ((1 + 2^−9)² − 1)·A + γ_n·(1 + 2^−9)²·A   (x rounded to BF16 too)
//     int8 retnet               Σ e_i|x_i| + γ_(n+3)·Σ(|w_i| + e_i)|x_i|, e_i = max_g|w|/254
//          ggml Q8_0            Σ [e'_i|x_i| + (|w_i| + e'_i) f'_i] + γ_(n+3)·Σ(|w_i| + e'_i)(|x_i|
//          + f'_i)
//                               e' = d/2·(1 + 2^−15) + 2^−11·(|w| + d/2·(1 + 2^−15)), d =
//                               max_g|w|/127 (its F16 scale), f' the same for x (ggml quantises x
//                               to Q8_0)
//   and for the retention, from |q|, |k|, |v| and |S_0| through the same recurrence (o_abs, S_abs):
//     o: (dk + 2T + 16)·u·o_abs; state: (2T + 16)·u·S_abs (dk-term dot products, 2 roundings per
//     state update and step, the chunkwise form's T-term sums and rounded decay powers).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "ggml_compare.hpp"
#include "retnet/linear_weight.hpp"
#include "retnet/stages/linear.hpp"
#include "retnet/stages/retention.hpp"

namespace {

using ggml_compare::kHeads;
using ggml_compare::kKeyDim;
using ggml_compare::kValueDim;
using ggml_compare::Options;
using ggml_compare::Row;
using retnet::Index;
using retnet::WeightType;
using Matrix = retnet::RowMatrix<float>;

WeightType weightType(const std::string& type) {
  if (type == "f32") return WeightType::kFull;
  if (type == "bf16") return WeightType::kBf16;
  return WeightType::kInt8;
}

Matrix caseMatrix(std::size_t caseIndex) {
  const ggml_compare::LinearCase& c = ggml_compare::kLinearCases[caseIndex];
  const std::vector<float> w = ggml_compare::caseWeight(caseIndex, c.out, c.in);
  return Eigen::Map<const Matrix>(w.data(), c.out, c.in);
}

Row timeLinear(std::size_t caseIndex, const Options& o) {
  const ggml_compare::LinearCase& c = ggml_compare::kLinearCases[caseIndex];
  const WeightType type = weightType(o.type);
  const retnet::LinearWeight<float> original(caseMatrix(caseIndex));
  const retnet::LinearWeight<float> first = original.converted(type);
  const auto stored = static_cast<double>(first.storedBytes());
  const int copies = ggml_compare::copiesFor(stored, o.minBytes);
  std::vector<retnet::LinearWeight<float>> weights;  // distinct storage for every copy
  for (int copy = 0; copy < copies; ++copy) {
    weights.push_back(type == WeightType::kFull ? retnet::LinearWeight<float>(original.matrix())
                                                : original.converted(type));
  }
  const std::vector<float> input = ggml_compare::caseInput(caseIndex, c.in);
  const Matrix x = Eigen::Map<const Matrix>(input.data(), 1, c.in);
  Matrix y(1, c.out);
  Row r{"linear", o.type, c.name, retnet::weightTypeName(type), c.out, c.in, 1, copies, stored, {}};
  r.time = ggml_compare::timePasses(
      [&] {
        for (const retnet::LinearWeight<float>& w : weights) retnet::stages::linear<float>(x, w, y);
      },
      copies, o.minSeconds);
  benchmark::DoNotOptimize(y.data());
  return r;
}

/// The retention of all heads over T tokens for `layers` states, in the form given.
class Retention {
 public:
  Retention(Index T, retnet::Form form, int layers)
      : T_(T), layers_(layers), qkv_(T, 2 * kHeads * kKeyDim + kHeads * kValueDim) {
    const ggml_compare::GlaInputs in = ggml_compare::glaInputs(T);
    const Index qk = kHeads * kKeyDim;
    qkv_.leftCols(qk) = Eigen::Map<const Matrix>(in.q.data(), T, qk);  // q | k | v, as the layer
    qkv_.middleCols(qk, qk) = Eigen::Map<const Matrix>(in.k.data(), T, qk);
    qkv_.rightCols(kHeads * kValueDim) =
        Eigen::Map<const Matrix>(in.v.data(), T, kHeads * kValueDim);
    out_.resize(T, kHeads * kValueDim);
    for (Index h = 0; h < kHeads; ++h) {
      const retnet::RetentionHead head{ggml_compare::headDecay(h),
                                       retnet::RetentionNormalization::kNone,
                                       ggml_compare::glaScale(), retnet::ScaleSide::kQuery};
      plans_.emplace_back(head, form, T, T);
    }
    states_.resize(static_cast<std::size_t>(layers) * kHeads * kKeyDim * kValueDim);
    reset();
    scratch_.resize(static_cast<std::size_t>(retnet::detail::maxThreadSlots()));
  }

  /// Every layer's state set to S_0.
  void reset() {
    const std::size_t per = kHeads * kKeyDim * kValueDim;
    for (std::size_t i = 0; i < per; ++i) {
      const auto h = static_cast<Index>(i / (kKeyDim * kValueDim));
      const auto a = static_cast<Index>(i / kValueDim % kKeyDim),
                 j = static_cast<Index>(i % kValueDim);
      states_[i] = ggml_compare::glaInitialState(h, a, j);
    }
    for (int layer = 1; layer < layers_; ++layer)
      std::copy(states_.begin(), states_.begin() + static_cast<std::ptrdiff_t>(per),
                states_.begin() + static_cast<std::ptrdiff_t>(layer * per));
  }

  /// One layer's op: o (T x H·dv) and its state (H x dk x dv) updated.
  void run(int layer) {
    const Index qk = kHeads * kKeyDim;
    float* layerState =
        states_.data() + static_cast<std::size_t>(layer) * kHeads * kKeyDim * kValueDim;
    // Heads over threads, one whole head per task, as MultiScaleRetention does.
    retnet::detail::parallelFor(kHeads, [&](Index h, int thread) {
      Eigen::Map<Matrix> S(layerState + h * kKeyDim * kValueDim, kKeyDim, kValueDim);
      retnet::stages::retention<float>(
          plans_[static_cast<std::size_t>(h)], qkv_.block(0, h * kKeyDim, T_, kKeyDim),
          qkv_.block(0, qk + h * kKeyDim, T_, kKeyDim),
          qkv_.block(0, 2 * qk + h * kValueDim, T_, kValueDim), S, 0, false,
          out_.block(0, h * kValueDim, T_, kValueDim), scratch_[static_cast<std::size_t>(thread)]);
    });
  }
  void pass() {
    for (int layer = 0; layer < layers_; ++layer) run(layer);
  }
  const Matrix& out() const { return out_; }
  const std::vector<float>& states() const { return states_; }

 private:
  Index T_;
  int layers_;
  Matrix qkv_, out_;
  std::vector<retnet::RetentionPlan<float>> plans_;
  std::vector<float> states_;
  std::vector<retnet::RetentionScratch<float>> scratch_;
};

double gammaN(double m) {
  const double u = 0x1p-24;
  return m * u / (1 - m * u);
}

/// Exact y = W x (double) and each side's bound, for every row (see the top of this file).
void checkLinearBounds(const Options& o, std::size_t caseIndex) {
  const ggml_compare::LinearCase& c = ggml_compare::kLinearCases[caseIndex];
  const Matrix w = caseMatrix(caseIndex);
  const std::vector<float> x = ggml_compare::caseInput(caseIndex, c.in);
  const Index n = c.in, groups = n / 32;
  const double b = 0x1p-9, slack = 1 + 0x1p-15;
  // ggml's Q8_0 error of each x_i: f'_i
  std::vector<double> fx(static_cast<std::size_t>(n));
  for (Index g = 0; g < groups; ++g) {
    double amax = 0;
    for (Index i = 32 * g; i < 32 * g + 32; ++i) amax = std::max(amax, std::fabs(double(x[i])));
    const double d = amax / 127;
    for (Index i = 32 * g; i < 32 * g + 32; ++i)
      fx[i] = d / 2 * slack + 0x1p-11 * (std::fabs(double(x[i])) + d / 2 * slack);
  }
  std::vector<double> exact(c.out);
  std::vector<double> bounds[6];  // f32 ours, f32 ggml, bf16 ours, bf16 ggml, int8 ours, int8 ggml
  for (auto& v : bounds) v.resize(c.out);
  for (Index j = 0; j < c.out; ++j) {
    double y = 0, A = 0, ours8 = 0, ours8acc = 0, ggml8 = 0, ggml8acc = 0;
    for (Index g = 0; g < groups; ++g) {
      double amax = 0;
      for (Index i = 32 * g; i < 32 * g + 32; ++i)
        amax = std::max(amax, std::fabs(double(w(j, i))));
      const double e = amax / 254 * (1 + 0x1p-20), d = amax / 127;
      for (Index i = 32 * g; i < 32 * g + 32; ++i) {
        const double wi = std::fabs(double(w(j, i))), xi = std::fabs(double(x[i]));
        const double e2 = d / 2 * slack + 0x1p-11 * (wi + d / 2 * slack);
        y += double(w(j, i)) * double(x[i]);
        A += wi * xi;
        ours8 += e * xi;
        ours8acc += (wi + e) * xi;
        ggml8 += e2 * xi + (wi + e2) * fx[i];
        ggml8acc += (wi + e2) * (xi + fx[i]);
      }
    }
    const double gn = gammaN(double(n)), gn3 = gammaN(double(n + 3));
    exact[j] = y;
    bounds[0][j] = bounds[1][j] = gn * A;
    bounds[2][j] = b * A + gn * (1 + b) * A;
    bounds[3][j] = ((1 + b) * (1 + b) - 1) * A + gn * (1 + b) * (1 + b) * A;
    bounds[4][j] = ours8 + gn3 * ours8acc;
    bounds[5][j] = ggml8 + gn3 * ggml8acc;
  }
  const std::string name = c.name;
  ggml_compare::writeValues(o, "exact_linear_" + name, exact.data(), exact.size());
  const char* labels[6] = {"f32_retnet", "f32_ggml",    "bf16_retnet",
                           "bf16_ggml",  "int8_retnet", "int8_ggml"};
  for (int k = 0; k < 6; ++k)
    ggml_compare::writeValues(o, "bound_linear_" + std::string(labels[k]) + "_" + name,
                              bounds[k].data(), bounds[k].size());
}

/// The retention in double from the same inputs, and its absolute twin, over T tokens.
void checkRetentionBounds(const Options& o, Index T) {
  const ggml_compare::GlaInputs in = ggml_compare::glaInputs(T);
  const double u = 0x1p-24, scale = ggml_compare::glaScale();
  const Index qk = kHeads * kKeyDim, V = kHeads * kValueDim;
  std::vector<double> out(T * V), outBound(T * V), state(kHeads * kKeyDim * kValueDim),
      stateBound(state.size());
  for (Index h = 0; h < kHeads; ++h) {
    const double gamma = ggml_compare::headDecay(h);
    std::vector<double> S(kKeyDim * kValueDim), Sa(S.size());
    for (Index a = 0; a < kKeyDim; ++a)
      for (Index j = 0; j < kValueDim; ++j) {
        S[a * kValueDim + j] = ggml_compare::glaInitialState(h, a, j);
        Sa[a * kValueDim + j] = std::fabs(S[a * kValueDim + j]);
      }
    for (Index t = 0; t < T; ++t) {
      for (Index a = 0; a < kKeyDim; ++a) {
        const double k = in.k[t * qk + h * kKeyDim + a];
        for (Index j = 0; j < kValueDim; ++j) {
          const double v = in.v[t * V + h * kValueDim + j];
          S[a * kValueDim + j] = gamma * S[a * kValueDim + j] + k * v;
          Sa[a * kValueDim + j] = gamma * Sa[a * kValueDim + j] + std::fabs(k * v);
        }
      }
      for (Index j = 0; j < kValueDim; ++j) {
        double y = 0, ya = 0;
        for (Index a = 0; a < kKeyDim; ++a) {
          const double q = in.q[t * qk + h * kKeyDim + a];
          y += q * S[a * kValueDim + j];
          ya += std::fabs(q) * Sa[a * kValueDim + j];
        }
        out[t * V + h * kValueDim + j] = scale * y;
        outBound[t * V + h * kValueDim + j] = double(kKeyDim + 2 * T + 16) * u * scale * ya;
      }
    }
    for (Index i = 0; i < kKeyDim * kValueDim; ++i) {
      state[h * kKeyDim * kValueDim + i] = S[i];
      stateBound[h * kKeyDim * kValueDim + i] = double(2 * T + 16) * u * Sa[i];
    }
  }
  const std::string tag = "gla_T" + std::to_string(T);
  ggml_compare::writeValues(o, "exact_" + tag + "_out", out.data(), out.size());
  ggml_compare::writeValues(o, "exact_" + tag + "_state", state.data(), state.size());
  ggml_compare::writeValues(o, "bound_" + tag + "_out", outBound.data(), outBound.size());
  ggml_compare::writeValues(o, "bound_" + tag + "_state", stateBound.data(), stateBound.size());
}

void check(const Options& o) {
  for (const char* type : {"f32", "bf16", "int8"}) {
    for (std::size_t i = 0; i < ggml_compare::kLinearCases.size(); ++i) {
      const ggml_compare::LinearCase& c = ggml_compare::kLinearCases[i];
      const retnet::LinearWeight<float> w =
          retnet::LinearWeight<float>(caseMatrix(i)).converted(weightType(type));
      const std::vector<float> input = ggml_compare::caseInput(i, c.in);
      Matrix y(1, c.out);
      retnet::stages::linear<float>(Eigen::Map<const Matrix>(input.data(), 1, c.in), w, y);
      ggml_compare::writeValues(o, std::string("retnet_linear_") + type + "_" + c.name, y.data(),
                                static_cast<std::size_t>(y.size()));
    }
  }
  for (std::size_t i = 0; i < ggml_compare::kLinearCases.size(); ++i) checkLinearBounds(o, i);
  for (Index T : ggml_compare::kGlaTokens) {
    checkRetentionBounds(o, T);
    for (retnet::Form form : {retnet::Form::kRecurrent, retnet::Form::kChunkwise}) {
      if (T == 1 && form == retnet::Form::kChunkwise) continue;
      Retention r(T, form, 1);
      r.run(0);
      const std::string tag = "retnet_gla_T" + std::to_string(T) + "_" + retnet::formName(form);
      ggml_compare::writeValues(o, tag + "_out", r.out().data(),
                                static_cast<std::size_t>(r.out().size()));
      ggml_compare::writeValues(o, tag + "_state", r.states().data(), r.states().size());
    }
  }
}

/// Best GB/s (1e9 bytes) of a sum over 1 GiB of floats with `threads` threads, over ~0.5 s.
double readBandwidth(int threads) {
  const Index count = Index(1) << 28;
  std::vector<float> data(static_cast<std::size_t>(count), 1.0f);
  const retnet_bench::BestTimes t = retnet_bench::bestTimes(
      [&] {
        float sum = retnet_bench::streamSum(data.data(), count, threads);
        benchmark::DoNotOptimize(sum);
      },
      0.5);
  return 4e-9 * double(count) / t.wall;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = ggml_compare::parseOptions(argc, argv);
  try {
    retnet_bench::setThreads(o.threads);
    if (o.kind == "check") {
      retnet_bench::setThreads(1);
      check(o);
      return 0;
    }
    std::vector<Row> rows;
    std::string members =
        "\"simd\": \"" + std::string(retnet::simdLevelName(retnet::simdLevel())) + "\",\n  ";
    if (o.kind == "linear") {
      char bandwidth[96];
      std::snprintf(bandwidth, sizeof bandwidth, "\"read_bandwidth_gbs\": %.3f,\n  ",
                    readBandwidth(o.threads));
      members += bandwidth;
      for (std::size_t i = 0; i < ggml_compare::kLinearCases.size(); ++i)
        rows.push_back(timeLinear(i, o));
    } else {
      for (Index T : ggml_compare::kGlaTokens) {
        for (retnet::Form form : {retnet::Form::kRecurrent, retnet::Form::kChunkwise}) {
          if (T == 1 && form == retnet::Form::kChunkwise) continue;
          Retention r(T, form, o.layers);
          Row row{"gla", "f32", "retention", retnet::formName(form), 0, 0, T, o.layers, 0, {}};
          row.time = ggml_compare::timePasses([&] { r.pass(); }, o.layers, o.minSeconds);
          rows.push_back(row);
        }
      }
    }
    ggml_compare::writeJson(o.json, "retnet", o, members, rows);
    for (const Row& r : rows)
      std::printf("retnet %-6s %-5s %-9s %-10s T=%-3lld %8.4f ms (median %8.4f)\n", r.op.c_str(),
                  r.type.c_str(), r.name.c_str(), r.way.c_str(), static_cast<long long>(r.tokens),
                  1e3 * r.time.best, 1e3 * r.time.median);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ggml_ops: %s\n", e.what());
    return 1;
  }
  return 0;
}
