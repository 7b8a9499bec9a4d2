// ggml's side of bench/ggml.sh: the cases of ggml_compare.hpp through ggml's public API (ggml.h,
// ggml-cpu.h), CPU backend. Our code, not ggml's: bench/ggml.sh compiles it against a libggml
// built outside this repository.
//
//   ggml_driver --kind linear|gla|check [--type f32|bf16|int8] [--threads N] …  (ggml_compare.hpp)
//
// linear: y = W x with W a GGML_TYPE_F32, GGML_TYPE_BF16 or GGML_TYPE_Q8_0 tensor (int8 maps to
//   Q8_0: int8 codes, an F16 scale per 32 columns) and x float32, through ggml_mul_mat. ggml turns
//   x into its vec_dot_type first (BF16 for a BF16 W, Q8_0 for a Q8_0 W: x is rounded too). The
//   copies of W are the nodes of one graph, computed in one ggml_graph_compute call (as a model's
//   decode graph runs its layers).
// gla: ggml_gated_linear_attn (k, v, q, g, state, scale): per token and head
//   S = diag(g) S + kᵀv, o = scale · q S, with head size dk = dv. dv = 512 is split into two
//   value halves: 16 ggml heads of 256, head 2h + c holding q_h, k_h, the decay γ_h in g and
//   value columns [256c, 256c + 256) of v_h; its output and state are exactly retnet's head h
//   columns. T > 1 tokens are processed one after another. One node per layer (its own state).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "ggml-cpu.h"
#include "ggml.h"
#include "ggml_compare.hpp"

namespace {

using ggml_compare::Options;
using ggml_compare::Row;

/// A ggml context for `dataBytes` of tensor data in up to `tensors` tensors and one graph of up
/// to `graphSize` nodes, freed with it.
class Context {
 public:
  Context(std::size_t dataBytes, std::size_t tensors, std::size_t graphSize) {
    const std::size_t bytes = dataBytes + tensors * (ggml_tensor_overhead() + 64) +
                              ggml_graph_overhead_custom(graphSize, false) + (1 << 16);
    ggml_init_params params = {bytes, nullptr, false};
    ctx_ = ggml_init(params);
    if (ctx_ == nullptr) throw std::runtime_error("ggml_init failed");
  }
  ~Context() { ggml_free(ctx_); }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ggml_context* get() const { return ctx_; }

 private:
  ggml_context* ctx_;
};

/// A graph with its plan and work buffer, computed as often as asked.
class Graph {
 public:
  static std::size_t graphSize(std::size_t outputs) { return 4 * outputs + 16; }
  Graph(ggml_context* ctx, const std::vector<ggml_tensor*>& outputs, int threads) {
    graph_ = ggml_new_graph_custom(ctx, graphSize(outputs.size()), false);
    for (ggml_tensor* t : outputs) ggml_build_forward_expand(graph_, t);
    plan_ = ggml_graph_plan(graph_, threads, nullptr);
    work_.resize(plan_.work_size + 1);
    plan_.work_data = work_.data();
  }
  void compute() {
    if (ggml_graph_compute(graph_, &plan_) != GGML_STATUS_SUCCESS)
      throw std::runtime_error("ggml_graph_compute failed");
  }

 private:
  ggml_cgraph* graph_;
  ggml_cplan plan_;
  std::vector<std::uint8_t> work_;
};

ggml_type weightType(const std::string& type) {
  if (type == "f32") return GGML_TYPE_F32;
  if (type == "bf16") return GGML_TYPE_BF16;
  return GGML_TYPE_Q8_0;
}

/// y = W x for every copy of a case's W (copies 1: the check).
struct LinearRun {
  LinearRun(std::size_t caseIndex, ggml_type type, int copies, int threads)
      : c(ggml_compare::kLinearCases[caseIndex]),
        rowBytes(ggml_row_size(type, c.in)),
        ctx(static_cast<std::size_t>(copies) * (rowBytes * c.out + 4 * c.out) + 4 * c.in,
            2 * static_cast<std::size_t>(copies) + 1,
            Graph::graphSize(static_cast<std::size_t>(copies))) {
    const std::vector<float> w = ggml_compare::caseWeight(caseIndex, c.out, c.in);
    const std::vector<float> input = ggml_compare::caseInput(caseIndex, c.in);
    x = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, c.in, 1);
    std::memcpy(x->data, input.data(), input.size() * sizeof(float));
    std::vector<ggml_tensor*> outputs;
    for (int copy = 0; copy < copies; ++copy) {
      ggml_tensor* W = ggml_new_tensor_2d(ctx.get(), type, c.in, c.out);  // ne0 = in, ne1 = out
      if (copy == 0) {
        ggml_quantize_chunk(type, w.data(), W->data, 0, c.out, c.in, nullptr);
      } else {
        std::memcpy(W->data, outputs.front()->src[0]->data, ggml_nbytes(W));
      }
      outputs.push_back(ggml_mul_mat(ctx.get(), W, x));  // (out, 1)
    }
    y = outputs.front();
    graph = std::make_unique<Graph>(ctx.get(), outputs, threads);
  }
  ggml_compare::LinearCase c;
  std::size_t rowBytes;
  Context ctx;
  ggml_tensor* x = nullptr;
  ggml_tensor* y = nullptr;
  std::unique_ptr<Graph> graph;
};

/// ggml_gated_linear_attn over T tokens for `layers` states (each its own node).
struct GlaRun {
  static constexpr std::int64_t kSplit = ggml_compare::kValueDim / ggml_compare::kKeyDim;
  static constexpr std::int64_t S = ggml_compare::kKeyDim, H = ggml_compare::kHeads * kSplit;

  GlaRun(std::int64_t T, int layers, int threads)
      : ctx(static_cast<std::size_t>(4 * (4 * T * S * H + layers * (S * S * H + (T + S) * S * H))),
            4 + 2 * static_cast<std::size_t>(layers),
            Graph::graphSize(static_cast<std::size_t>(layers))) {
    using ggml_compare::kHeads;
    using ggml_compare::kKeyDim;
    using ggml_compare::kValueDim;
    const ggml_compare::GlaInputs in = ggml_compare::glaInputs(T);
    ggml_tensor* k = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, S, H, T);
    ggml_tensor* v = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, S, H, T);
    ggml_tensor* q = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, S, H, T);
    ggml_tensor* g = ggml_new_tensor_3d(ctx.get(), GGML_TYPE_F32, S, H, T);
    auto* kd = static_cast<float*>(k->data);
    auto* qd = static_cast<float*>(q->data);
    auto* gd = static_cast<float*>(g->data);
    std::memcpy(v->data, in.v.data(), in.v.size() * sizeof(float));  // (T, H·dv) = (T, 16, 256)
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t hh = 0; hh < H; ++hh) {
        const std::int64_t h = hh / kSplit;
        const auto gamma = static_cast<float>(ggml_compare::headDecay(h));
        for (std::int64_t i = 0; i < S; ++i) {
          const std::int64_t ours = (t * kHeads + h) * kKeyDim + i, theirs = (t * H + hh) * S + i;
          kd[theirs] = in.k[static_cast<std::size_t>(ours)];
          qd[theirs] = in.q[static_cast<std::size_t>(ours)];
          gd[theirs] = gamma;
        }
      }
    }
    std::vector<ggml_tensor*> outputs;
    for (int layer = 0; layer < layers; ++layer) {
      ggml_tensor* state = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, S * S * H, 1);
      auto* sd = static_cast<float*>(state->data);
      for (std::int64_t hh = 0; hh < H; ++hh)  // ggml head 2h + c: S_h's columns [256c, 256c+256)
        for (std::int64_t i = 0; i < S; ++i)
          for (std::int64_t j = 0; j < S; ++j)
            sd[(hh * S + i) * S + j] =
                ggml_compare::glaInitialState(hh / kSplit, i, (hh % kSplit) * S + j);
      outputs.push_back(
          ggml_gated_linear_attn(ctx.get(), k, v, q, g, state, ggml_compare::glaScale()));
    }
    (void)kValueDim;
    result = outputs.front();
    graph = std::make_unique<Graph>(ctx.get(), outputs, threads);
  }
  Context ctx;
  ggml_tensor* result = nullptr;  // (H·S, T + S): o (T rows of H·S), then the state (S·H rows)
  std::unique_ptr<Graph> graph;
};

std::string systemInfo() {
  char info[512];
  std::snprintf(info, sizeof info,
                "\"ggml_cpu\": {\"avx2\": %d, \"avx512\": %d, \"avx512_vnni\": %d, "
                "\"avx512_bf16\": %d, \"avx_vnni\": %d, \"f16c\": %d, \"fma\": %d, "
                "\"llamafile\": %d, \"amx_int8\": %d},\n  ",
                ggml_cpu_has_avx2(), ggml_cpu_has_avx512(), ggml_cpu_has_avx512_vnni(),
                ggml_cpu_has_avx512_bf16(), ggml_cpu_has_avx_vnni(), ggml_cpu_has_f16c(),
                ggml_cpu_has_fma(), ggml_cpu_has_llamafile(), ggml_cpu_has_amx_int8());
  return info;
}

void check(const Options& o) {
  for (const char* type : {"f32", "bf16", "int8"}) {
    for (std::size_t i = 0; i < ggml_compare::kLinearCases.size(); ++i) {
      LinearRun run(i, weightType(type), 1, 1);
      run.graph->compute();
      ggml_compare::writeValues(o, std::string("ggml_linear_") + type + "_" + run.c.name,
                                static_cast<const float*>(run.y->data), run.c.out);
    }
  }
  for (std::int64_t T : ggml_compare::kGlaTokens) {
    GlaRun run(T, 1, 1);
    run.graph->compute();
    const auto* data = static_cast<const float*>(run.result->data);
    const std::int64_t S = GlaRun::S, H = GlaRun::H, dv = ggml_compare::kValueDim;
    ggml_compare::writeValues(o, "ggml_gla_T" + std::to_string(T) + "_out", data,
                              static_cast<std::size_t>(T * H * S));
    std::vector<float> state(static_cast<std::size_t>(H * S * S));  // retnet's (8, dk, dv)
    const float* s = data + T * H * S;
    for (std::int64_t hh = 0; hh < H; ++hh)
      for (std::int64_t i = 0; i < S; ++i)
        for (std::int64_t j = 0; j < S; ++j)
          state[static_cast<std::size_t>(((hh / GlaRun::kSplit) * S + i) * dv +
                                         (hh % GlaRun::kSplit) * S + j)] = s[(hh * S + i) * S + j];
    ggml_compare::writeValues(o, "ggml_gla_T" + std::to_string(T) + "_state", state.data(),
                              state.size());
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = ggml_compare::parseOptions(argc, argv);
  ggml_cpu_init();
  try {
    if (o.kind == "check") {
      check(o);
      return 0;
    }
    std::vector<Row> rows;
    if (o.kind == "linear") {
      const ggml_type type = weightType(o.type);
      for (std::size_t i = 0; i < ggml_compare::kLinearCases.size(); ++i) {
        const ggml_compare::LinearCase& c = ggml_compare::kLinearCases[i];
        const double stored = static_cast<double>(ggml_row_size(type, c.in) * c.out);
        const int copies = ggml_compare::copiesFor(stored, o.minBytes);
        LinearRun run(i, type, copies, o.threads);
        Row r{"linear", o.type, c.name, ggml_type_name(type), c.out, c.in, 1, copies, stored, {}};
        r.time = ggml_compare::timePasses([&] { run.graph->compute(); }, copies, o.minSeconds);
        rows.push_back(r);
      }
    } else {
      for (std::int64_t T : ggml_compare::kGlaTokens) {
        GlaRun run(T, o.layers, o.threads);
        Row r{"gla", "f32", "retention", "gated_linear_attn", 0, 0, T, o.layers, 0, {}};
        r.time = ggml_compare::timePasses([&] { run.graph->compute(); }, o.layers, o.minSeconds);
        rows.push_back(r);
      }
    }
    ggml_compare::writeJson(o.json, "ggml", o, systemInfo(), rows);
    for (const Row& r : rows)
      std::printf("ggml  %-6s %-5s %-9s T=%-3lld %8.4f ms (median %8.4f)\n", r.op.c_str(),
                  r.type.c_str(), r.name.c_str(), static_cast<long long>(r.tokens),
                  1e3 * r.time.best, 1e3 * r.time.median);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ggml_driver: %s\n", e.what());
    return 1;
  }
  return 0;
}
