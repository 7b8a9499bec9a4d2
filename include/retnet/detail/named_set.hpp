// The scaffolding shared by everything visited by name in training: the gradient structs
// (forEach, setZero) and the layers' parameter views (forEachParameter). Each Derived writes one
// static template, forEachOf(self, visit) or forEachParameterOf(self, visit), over a const or
// non-const self; these bases give the two overloads that call it.
#pragma once

namespace retnet::detail {

/// A gradient struct: visit(name, gradient) over its fields, and setZero().
template <typename Derived>
struct GradientSet {
  /// Zeros every field, keeping the shapes (between optimiser steps).
  void setZero() {
    forEach([](const char*, auto& gradient) { gradient.setZero(); });
  }
  /// visit(name, gradient) for each field, in Derived::forEachOf's order.
  template <typename Visit>
  void forEach(Visit&& visit) {
    Derived::forEachOf(static_cast<Derived&>(*this), visit);
  }
  template <typename Visit>
  void forEach(Visit&& visit) const {
    Derived::forEachOf(static_cast<const Derived&>(*this), visit);
  }
};

/// A layer or model with trainable parameters: visit(name, Eigen::Map of the weight in place),
/// writable through a non-const Derived.
template <typename Derived>
struct ParameterSet {
  template <typename Visit>
  void forEachParameter(Visit&& visit) {
    Derived::forEachParameterOf(static_cast<Derived&>(*this), visit);
  }
  template <typename Visit>
  void forEachParameter(Visit&& visit) const {
    Derived::forEachParameterOf(static_cast<const Derived&>(*this), visit);
  }
};

}  // namespace retnet::detail
