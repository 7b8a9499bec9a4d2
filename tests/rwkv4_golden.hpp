// Checks of RWKV-4 files in the golden data's format (tests/data/rwkv4/README.md,
// docs/semantics/rwkv4.md), whatever their dimensions: the model through io::loadModel in every
// form and in token-by-token decoding, its final state, and the WKV stage on the file's keys and
// values. Also the naive oracle built from such a file, and the writer of such files from it.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "reference/naive_rwkv4.hpp"
#include "retnet/io/load_model.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/rwkv4.hpp"
#include "test_util.hpp"

namespace retnet::testing {

// Golden data is float64 end to end; an independent float64 implementation lands within 9.2e-14
// (the T = 1000 extreme-decay file) and 7e-15 elsewhere, so 1e-9 leaves room for summation order
// while every semantic slip measured in the README (0.1 … 0.9, eps 1e-6: 4e-6) fails it. Float32:
// BlinkDL's own float32 run is 7.3e-7 from the golden logits, 1.9e-5 on the extreme-decay file
// (pp's repeated float32 additions), so 1e-4 normwise (README §4).
template <typename Scalar>
constexpr double rwkv4Tolerance() {
  return std::is_same_v<Scalar, double> ? 1e-9 : 1e-4;
}

inline Index metadataIndex(const io::SafetensorsFile& file, const std::string& key) {
  const auto value = file.metadataValue(key);
  if (!value) ADD_FAILURE() << file.displayName() << ": no metadata '" << key << "'";
  return value ? static_cast<Index>(std::stol(*value)) : 0;
}

/// Row r of a (rows x width) row-major double array.
inline std::vector<double> rowOf(const std::vector<double>& values, Index width, Index r) {
  return {values.begin() + r * width, values.begin() + (r + 1) * width};
}

/// Normwise error of the WKV state invariants aa/bb and pp + ln bb (A channels) against the
/// reference triple: the form of the state that does not depend on how pp was reached.
inline double wkvStateError(const std::vector<double>& aa, const std::vector<double>& bb,
                            const std::vector<double>& pp, const std::vector<double>& refAa,
                            const std::vector<double>& refBb, const std::vector<double>& refPp) {
  std::vector<double> ratio, refRatio, level, refLevel;
  for (std::size_t c = 0; c < aa.size(); ++c) {
    ratio.push_back(aa[c] / bb[c]);
    refRatio.push_back(refAa[c] / refBb[c]);
    level.push_back(pp[c] + std::log(bb[c]));
    refLevel.push_back(refPp[c] + std::log(refBb[c]));
  }
  return std::max(normwiseError(ratio.data(), refRatio.data(), ratio.size()),
                  normwiseError(level.data(), refLevel.data(), level.size()));
}

/// The state of a loaded model against `state_final` (B, L, 5, C): ffn_xx and att_xx
/// elementwise, (aa, bb, pp) by its invariants. Also checks bb >= 1 (the denominator's bound).
template <typename Scalar>
double rwkv4StateError(const Rwkv4ModelState<Scalar>& state, const std::vector<double>& golden,
                       Index batch, Index layers, Index C) {
  double worst = 0;
  for (Index b = 0; b < batch; ++b) {
    for (Index l = 0; l < layers; ++l) {
      const auto& s = state.layers[static_cast<std::size_t>(l)];
      const auto slot = [&](Index k) { return rowOf(golden, C, (b * layers + l) * 5 + k); };
      const auto mine = [&](const auto& rows) {
        std::vector<double> v;
        for (Index c = 0; c < rows.cols(); ++c) v.push_back(static_cast<double>(rows(b, c)));
        return v;
      };
      const std::vector<double> ffn = mine(s.ffnShift()), att = mine(s.attShift());
      const std::vector<double> aa = mine(s.aa()), bb = mine(s.bb()), pp = mine(s.pp());
      for (double v : bb) EXPECT_GE(v, 1.0 - 1e-6) << "bb below 1";
      worst = std::max(worst, normwiseError(ffn.data(), slot(0).data(), ffn.size()));
      worst = std::max(worst, normwiseError(att.data(), slot(1).data(), att.size()));
      worst = std::max(worst, wkvStateError(aa, bb, pp, slot(2), slot(3), slot(4)));
    }
  }
  return worst;
}

/// A model file (metadata kind = model) through io::loadModel<Rwkv4Model<Scalar>>: logits of
/// every form (chunks 1, 5, 16 and beyond T) and of decode() against `logits_recurrent`, the
/// final state against `state_final`, and the WKV stage on the file's wkv_k/wkv_v.
template <typename Scalar>
void checkRwkv4ModelFile(const std::string& path) {
  const auto file = io::SafetensorsFile::open(path);
  const auto model = io::loadModel<Rwkv4Model<Scalar>>(path);
  const auto& shape = file.info("tokens").shape;
  ASSERT_EQ(shape.size(), 2u) << path;
  const Index B = shape[0], T = shape[1], V = model.config().vocab, L = model.config().layers;
  const Index C = model.config().block.embedDim;
  const std::vector<std::int64_t> ids = file.readIntegers("tokens");
  TokenMatrix tokens(B, T);
  for (Index i = 0; i < B * T; ++i) tokens.data()[i] = ids[static_cast<std::size_t>(i)];
  const std::vector<double> reference = file.readFlat<double>("logits_recurrent");
  const std::vector<double> finalState = file.readFlat<double>("state_final");
  const double tolerance = rwkv4Tolerance<Scalar>();
  const char* type = std::is_same_v<Scalar, double> ? "double" : "float";

  const auto check = [&](const char* what, const Tensor3<Scalar>& logits,
                         const Rwkv4ModelState<Scalar>& state) {
    const double error = normwiseError(logits, reference);
    const double stateError = rwkv4StateError(state, finalState, B, L, C);
    std::printf("%s %s %s: logits %.2e, state %.2e\n", file.displayName().c_str(), what, type,
                error, stateError);
    EXPECT_LE(error, tolerance) << path << " " << what;
    EXPECT_LE(stateError, tolerance) << path << " " << what;
    for (Index b = 0; b < B; ++b) EXPECT_EQ(state.position(b), T);
  };
  {
    Rwkv4ModelState<Scalar> state;
    check("recurrent", model.forwardRecurrent(tokens, state), state);
  }
  {
    Rwkv4ModelState<Scalar> state;
    check("parallel", model.forwardParallel(tokens, state), state);
  }
  // Chunk 1 (the recurrence's arithmetic), ragged chunks, and one chunk beyond T (the parallel
  // form's, already run above when T is long).
  std::vector<Index> chunks = {1, 5, 16};
  if (T <= 256) chunks.push_back(T + 3);
  for (const Index chunk : chunks) {
    Rwkv4ModelState<Scalar> state;
    const std::string name = "chunkwise " + std::to_string(chunk);
    check(name.c_str(), model.forwardChunkwise(tokens, chunk, state), state);
  }
  {  // Token by token through decode(), as a generator runs it.
    Rwkv4ModelState<Scalar> state;
    Tensor3<Scalar> logits(B, T, V);
    RowMatrix<Scalar> step;
    for (Index t = 0; t < T; ++t) {
      std::vector<std::int64_t> column;
      for (Index b = 0; b < B; ++b) column.push_back(tokens(b, t));
      model.decode(column, state, step);
      for (Index b = 0; b < B; ++b)
        for (Index v = 0; v < V; ++v) logits(b, t, v) = step(b, v);
    }
    check("decode", logits, state);
  }

  // The WKV stage alone on the keys and values that entered layer wkv_layer.
  const Index layer = metadataIndex(file, "wkv_layer");
  const std::string p = "blocks." + std::to_string(layer) + ".att.";
  const RowMatrix<Scalar> k = file.readMatrix<Scalar>("wkv_k"),
                          v = file.readMatrix<Scalar>("wkv_v");
  const Vector<Scalar> timeDecay = file.readVector<Scalar>(p + "time_decay");
  const Vector<Scalar> w = -timeDecay.array().exp(), u = file.readVector<Scalar>(p + "time_first");
  const std::vector<double> wkvOut = file.readFlat<double>("wkv_out");
  for (const Form form : {Form::kRecurrent, Form::kParallel, Form::kChunkwise}) {
    Rwkv4State<Scalar> state(1, 1, k.cols());
    RowMatrix<Scalar> y(k.rows(), k.cols());
    stages::wkv<Scalar>(form, k, v, w.data(), u.data(), 7, state.wkv(0), y);
    const double error = normwiseError(y.data(), wkvOut.data(), wkvOut.size());
    EXPECT_LE(error, tolerance) << path << " wkv " << formName(form);
  }
}

/// A WKV file (metadata kind = wkv): every form, chunks 1, 5, 16 and beyond T, against wkv_out
/// and wkv_state_final (by its invariants); the recurrence's denominator bb >= 1 at every step.
template <typename Scalar>
void checkRwkv4WkvFile(const std::string& path) {
  const auto file = io::SafetensorsFile::open(path);
  const RowMatrix<Scalar> k = file.readMatrix<Scalar>("wkv_k"),
                          v = file.readMatrix<Scalar>("wkv_v");
  const Index T = k.rows(), A = k.cols();
  const Vector<Scalar> timeDecay = file.readVector<Scalar>("time_decay", A);
  const Vector<Scalar> w = -timeDecay.array().exp(), u = file.readVector<Scalar>("time_first", A);
  const std::vector<double> reference = file.readFlat<double>("wkv_out");
  const std::vector<double> finalState = file.readFlat<double>("wkv_state_final");
  const double tolerance = rwkv4Tolerance<Scalar>();
  const auto run = [&](const char* what, Form form, Index chunk) {
    Rwkv4State<Scalar> state(1, 1, A);
    RowMatrix<Scalar> y(T, A);
    stages::wkv<Scalar>(form, k, v, w.data(), u.data(), chunk, state.wkv(0), y);
    const double error = normwiseError(y.data(), reference.data(), reference.size());
    const auto row = [&](const auto& rows) {
      std::vector<double> out;
      for (Index c = 0; c < A; ++c) out.push_back(static_cast<double>(rows(0, c)));
      return out;
    };
    const double stateError =
        wkvStateError(row(state.aa()), row(state.bb()), row(state.pp()), rowOf(finalState, A, 0),
                      rowOf(finalState, A, 1), rowOf(finalState, A, 2));
    std::printf("%s wkv %s: out %.2e, state %.2e\n", file.displayName().c_str(), what, error,
                stateError);
    EXPECT_LE(error, tolerance) << path << " " << what;
    EXPECT_LE(stateError, tolerance) << path << " " << what;
  };
  run("recurrent", Form::kRecurrent, 0);
  run("parallel", Form::kParallel, 0);
  for (const Index chunk : {Index(1), Index(5), Index(16), T + 3}) {
    const std::string name = "chunkwise " + std::to_string(chunk);
    run(name.c_str(), Form::kChunkwise, chunk);
  }
  // Step by step: the denominator bound and no inf/NaN at every step.
  Rwkv4State<Scalar> state(1, 1, A);
  RowMatrix<Scalar> y(1, A);
  for (Index t = 0; t < T; ++t) {
    stages::wkv<Scalar>(Form::kRecurrent, k.middleRows(t, 1), v.middleRows(t, 1), w.data(),
                        u.data(), 0, state.wkv(0), y);
    ASSERT_TRUE(y.allFinite()) << path << " step " << t;
    ASSERT_GE(state.bb().minCoeff(), Scalar(1)) << path << " step " << t;
  }
}

}  // namespace retnet::testing
