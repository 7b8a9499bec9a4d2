// Consumer smoke test: include the umbrella header, run two forms, check they agree.
#include <cmath>
#include <cstdio>
#include <retnet/retnet.hpp>

int main() {
  retnet::Tensor3<double> q(1, 5, 4), k(1, 5, 4), v(1, 5, 3);
  q.setConstant(0.5);
  k.setConstant(0.25);
  v.setConstant(1.0);
  const retnet::Retention<double> retention(0.5);
  const retnet::Tensor3<double> a = retention.forwardParallel(q, k, v);
  const retnet::Tensor3<double> b = retention.forwardRecurrent(q, k, v);
  // o_4 = Σ_s 0.5^(4-s) · (q·k = 0.5) · 1 = 0.5 · (1 + 1/2 + 1/4 + 1/8 + 1/16)
  const double expected = 0.5 * 1.9375;
  if (std::abs(a(0, 4, 2) - expected) > 1e-12 || std::abs(b(0, 4, 2) - expected) > 1e-12) {
    std::printf("consumer: wrong result %g %g, expected %g\n", a(0, 4, 2), b(0, 4, 2), expected);
    return 1;
  }
  std::printf("consumer: ok\n");
  return 0;
}
