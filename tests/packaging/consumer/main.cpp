// Consumer smoke test: include the umbrella header, run two forms, check they agree; then (unless
// built against the core alone) write a tiny safetensors file in memory and read it back.
#include <cmath>
#include <cstdio>
#include <retnet/retnet.hpp>
#ifndef RETNET_CONSUMER_CORE_ONLY
#include <retnet/io/safetensors.hpp>
#include <vector>
#endif

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

#ifndef RETNET_CONSUMER_CORE_ONLY
  // Row 4 of the output as a (3,) F16 tensor (0.96875 = 31/32 is exact in F16), with metadata.
  const std::vector<double> row = {a(0, 4, 0), a(0, 4, 1), a(0, 4, 2)};
  retnet::io::SafetensorsWriter writer;
  writer.addMetadata("source", "consumer");
  writer.addTensor("row", retnet::io::Dtype::F16, {3}, row.data());
  const retnet::io::SafetensorsFile file = retnet::io::SafetensorsFile::fromBytes(writer.bytes());
  const std::vector<double> back = file.readFlat<double>("row");
  if (back != row || file.metadataValue("source") != "consumer" ||
      file.info("row").dtype != retnet::io::Dtype::F16) {
    std::printf("consumer: the safetensors round trip lost something\n");
    return 1;
  }
#endif
  std::printf("consumer: ok\n");
  return 0;
}
