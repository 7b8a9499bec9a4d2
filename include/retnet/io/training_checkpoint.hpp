// Training checkpoints: AdamW's state (its step count and the moments of every parameter), to
// resume training where it stopped.
#pragma once

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "retnet/io/checkpoint.hpp"
#include "retnet/io/safetensors.hpp"
#include "retnet/model.hpp"
#include "retnet/optimizer.hpp"

namespace retnet::io {

namespace detail {

/// A double as text that reads back to the same double.
inline std::string exactNumber(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

template <typename Scalar>
constexpr Dtype dtypeOf() {
  return std::is_same_v<Scalar, float> ? Dtype::F32 : Dtype::F64;
}

/// Adds `count` Scalars as a tensor of `shape` in `dtype`.
template <typename Scalar>
void addValues(SafetensorsWriter& writer, std::string name, Dtype dtype,
               std::vector<Eigen::Index> shape, const Scalar* values, Index count) {
  std::vector<double> converted(values, values + count);
  writer.addTensor(std::move(name), dtype, std::move(shape), converted.data());
}

/// A parameter's shape as PyTorch has it: a vector weight (one column) is rank 1.
inline std::vector<Eigen::Index> torchShape(Index rows, Index cols) {
  if (cols == 1) return {rows};
  return {rows, cols};
}

}  // namespace detail

/// Writes AdamW's state to the safetensors file `path`: `exp_avg.{name}` and `exp_avg_sq.{name}`
/// for every parameter (PyTorch's names for the moments, the parameter's shape, F32 for a float
/// optimiser and F64 for double), and as metadata the step count, the options and the parameter
/// order. An existing file is replaced.
template <typename Scalar>
void saveAdamW(const AdamW<Scalar>& optimizer, const std::string& path) {
  SafetensorsWriter writer;
  constexpr Dtype dtype = detail::dtypeOf<Scalar>();
  nlohmann::json order = nlohmann::json::array();
  for (const auto& moment : optimizer.moments()) {
    const auto shape = detail::torchShape(moment.rows, moment.cols);
    detail::addValues(writer, "exp_avg." + moment.name, dtype, shape, moment.m.data(),
                      moment.m.size());
    detail::addValues(writer, "exp_avg_sq." + moment.name, dtype, shape, moment.v.data(),
                      moment.v.size());
    order.push_back(moment.name);
  }
  const AdamWOptions& options = optimizer.options();
  writer.addMetadata("format", "retnet-adamw");
  writer.addMetadata("step", std::to_string(optimizer.steps()));
  writer.addMetadata("lr", detail::exactNumber(options.learningRate));
  writer.addMetadata("beta1", detail::exactNumber(options.beta1));
  writer.addMetadata("beta2", detail::exactNumber(options.beta2));
  writer.addMetadata("eps", detail::exactNumber(options.eps));
  writer.addMetadata("weight_decay", detail::exactNumber(options.weightDecay));
  writer.addMetadata("decay_vectors", options.decayVectors ? "True" : "False");
  writer.addMetadata("parameters", order.dump());
  writer.write(path);
}

/// AdamW<Scalar> as saveAdamW left it (moments converted to Scalar from the stored dtype).
/// FormatError naming the file and key for anything else.
template <typename Scalar>
AdamW<Scalar> loadAdamW(const std::string& path) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  if (file.metadataValue("format").value_or("") != "retnet-adamw")
    detail::failFile(file, "not an AdamW state: metadata 'format' must be \"retnet-adamw\"");
  const auto number = [&](const char* key) {
    const std::optional<double> value = detail::metadataNumber<double>(file, key);
    if (!value) detail::failFile(file, "missing metadata '", key, "'");
    return *value;
  };
  AdamWOptions options;
  options.learningRate = number("lr");
  options.beta1 = number("beta1");
  options.beta2 = number("beta2");
  options.eps = number("eps");
  options.weightDecay = number("weight_decay");
  options.decayVectors = file.metadataValue("decay_vectors").value_or("False") == "True";
  const std::optional<std::int64_t> steps = detail::metadataNumber<std::int64_t>(file, "step");
  if (!steps || *steps < 0) detail::failFile(file, "metadata 'step' must be a count >= 0");
  nlohmann::json order;
  try {
    order = nlohmann::json::parse(file.metadataValue("parameters").value_or(""));
  } catch (const nlohmann::json::exception&) {
    detail::failFile(file, "metadata 'parameters' must be a JSON list of names");
  }
  if (!order.is_array())
    detail::failFile(file, "metadata 'parameters' must be a JSON list of names");
  std::vector<typename AdamW<Scalar>::Moments> moments;
  for (const nlohmann::json& entry : order) {
    if (!entry.is_string())
      detail::failFile(file, "metadata 'parameters' must list names (strings)");
    typename AdamW<Scalar>::Moments moment;
    moment.name = entry.get<std::string>();
    const std::string m = "exp_avg." + moment.name, v = "exp_avg_sq." + moment.name;
    if (!file.contains(m) || !file.contains(v))
      detail::failFile(file, "missing tensor '", file.contains(m) ? v : m, "'");
    const std::vector<Index> shape = detail::shapeOf(file, m);
    if (shape.empty() || shape.size() > 2)
      detail::failFile(file, "tensor '", m, "' must have rank 1 or 2");
    file.requireShape(v, shape);
    moment.rows = shape[0];
    moment.cols = shape.size() == 2 ? shape[1] : 1;
    const std::vector<Scalar> mValues = file.readFlat<Scalar>(m),
                              vValues = file.readFlat<Scalar>(v);
    moment.m = Eigen::Map<const Vector<Scalar>>(mValues.data(), Index(mValues.size()));
    moment.v = Eigen::Map<const Vector<Scalar>>(vValues.data(), Index(vValues.size()));
    moments.push_back(std::move(moment));
  }
  try {
    return AdamW<Scalar>(options, *steps, std::move(moments));
  } catch (const InvalidArgument& error) {
    detail::failFile(file, error.what());
  }
}

}  // namespace retnet::io
