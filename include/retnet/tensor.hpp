// Tensor and matrix types at retnet's API surface.
//
// Activations are row-major (batch, time, features) like PyTorch, so a caller's buffer (or a
// checkpoint's) maps without a copy. Inputs are taken as ConstTensor3Ref, which binds to an owning
// Tensor3, a TensorMap over mutable memory, or a TensorMap over const memory alike.
#pragma once

#include <Eigen/Core>
#include <array>
#include <unsupported/Eigen/CXX11/Tensor>

namespace retnet {

using Index = Eigen::Index;

/// The furthest position a sequence may reach: 2^53, where positions stop being exact in double
/// (the rotary angles p·θ and decay powers γ^p are computed from them). States and forms refuse
/// positions beyond it, so `position + time` never overflows.
inline constexpr Index kMaxPosition = Index(1) << 53;

/// An owning row-major (batch, time, features) tensor.
template <typename Scalar>
using Tensor3 = Eigen::Tensor<Scalar, 3, Eigen::RowMajor>;

/// A row-major (out, in) matrix, the layout of a PyTorch Linear weight.
template <typename Scalar>
using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <typename Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// A view of rows of a row-major matrix: a RowMatrix, a Map of a caller's buffer, or a block of
/// either (e.g. one head's columns of a (time x heads·dk) buffer), nothing copied. Rows may be
/// any distance apart (OuterStride); elements of a row are contiguous. The stage functions
/// (retnet/stages/) take their matrices as these.
template <typename Scalar>
using MatrixRef = Eigen::Ref<RowMatrix<Scalar>, 0, Eigen::OuterStride<>>;
template <typename Scalar>
using ConstMatrixRef = Eigen::Ref<const RowMatrix<Scalar>, 0, Eigen::OuterStride<>>;

namespace detail {
/// Marks a parameter as not taking part in template argument deduction, so that `Scalar` is
/// deduced from another argument and a Map or block converts to the MatrixRef parameter.
template <typename T>
struct TypeIdentity {
  using type = T;
};
template <typename T>
using NoDeduce = typename TypeIdentity<T>::type;
}  // namespace detail

/// A read-only view of a row-major rank-3 tensor: data pointer and dimensions, nothing copied.
template <typename Scalar>
class ConstTensor3Ref {
 public:
  ConstTensor3Ref(const Tensor3<Scalar>& tensor)  // NOLINT(google-explicit-constructor)
      : data_(tensor.data()),
        dims_{tensor.dimension(0), tensor.dimension(1), tensor.dimension(2)} {}
  ConstTensor3Ref(const Eigen::TensorMap<Tensor3<Scalar>>& map)  // NOLINT
      : data_(map.data()), dims_{map.dimension(0), map.dimension(1), map.dimension(2)} {}
  ConstTensor3Ref(const Eigen::TensorMap<const Tensor3<Scalar>>& map)  // NOLINT
      : data_(map.data()), dims_{map.dimension(0), map.dimension(1), map.dimension(2)} {}
  ConstTensor3Ref(const Scalar* data, Index batch, Index time, Index features)
      : data_(data), dims_{batch, time, features} {}

  const Scalar* data() const { return data_; }
  Index dimension(int i) const { return dims_[static_cast<std::size_t>(i)]; }
  Index batch() const { return dims_[0]; }
  Index time() const { return dims_[1]; }
  Index features() const { return dims_[2]; }
  Index size() const { return dims_[0] * dims_[1] * dims_[2]; }

 private:
  const Scalar* data_;
  std::array<Index, 3> dims_;
};

}  // namespace retnet
