// When BF16 weights' prefill products run as BF16 GEMMs (oneDNN), and whether this build and CPU
// can: the switch and its queries. The GEMM itself, its speed, its error bound and its threads
// are described in detail/bf16_gemm.hpp. Without RETNET_ONEDNN the queries answer false and the
// switch changes nothing: every product is Eigen's float32 GEMM.
#pragma once

#include <atomic>

#ifdef RETNET_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace retnet {

/// When BF16 weights' products of many rows (prefill) run as BF16 GEMMs.
enum class Bf16Gemm {
  kNever,      ///< always the float32 path: W decoded into panels, x exact
  kWhereFast,  ///< where it beats float32 (the default): AMX-BF16, or AVX512-BF16 on AMD
               ///< (bf16GemmFast)
  kWherever    ///< wherever oneDNN runs BF16 matmul (an Intel CPU's AVX512-BF16 without AMX:
               ///< slower than float32; for tests)
};

namespace detail {
inline std::atomic<int>& bf16GemmStorage() {
  static std::atomic<int> use{static_cast<int>(Bf16Gemm::kWhereFast)};
  return use;
}
}  // namespace detail

/// Chooses when BF16 GEMMs run (process-wide; without RETNET_ONEDNN they never do).
inline void setBf16Gemm(Bf16Gemm use) { detail::bf16GemmStorage().store(static_cast<int>(use)); }

/// The current choice (Bf16Gemm::kWhereFast unless setBf16Gemm changed it).
inline Bf16Gemm bf16GemmChoice() {
  return static_cast<Bf16Gemm>(detail::bf16GemmStorage().load(std::memory_order_relaxed));
}

/// Whether this build has the BF16 GEMM (RETNET_ONEDNN) and oneDNN runs BF16 matmul on this CPU
/// (it needs AVX-512; tried once, on a small product).
inline bool bf16GemmAvailable() {
#ifdef RETNET_ONEDNN
  static const bool available = [] {
    try {
      using dnnl::memory;
      const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
      const memory::desc a({16, 32}, memory::data_type::bf16, memory::format_tag::ab);
      const memory::desc b({32, 16}, memory::data_type::bf16, memory::format_tag::ba);
      const memory::desc c({16, 16}, memory::data_type::f32, memory::format_tag::ab);
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), engine);
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return available;
#else
  return false;
#endif
}

/// Whether the BF16 GEMM is available and faster than the float32 path here: where the CPU has
/// AMX-BF16 (a tile multiply, 2.3x float32 on a Xeon thread), or is an AMD CPU with AVX512-BF16.
/// AMD's cores issue VDPBF16PS (32 products a 512-bit instruction) as often as their float FMAs
/// (16 products), which doubles the peak (measured on Zen 5: 2.0-2.3x at 1024³; Zen 4 not
/// measured); an Intel core without AMX gains nothing from it (measured on Sapphire Rapids with
/// AMX withheld from oneDNN: 0.7x), so there it stays off.
inline bool bf16GemmFast() {
#ifdef RETNET_ONEDNN
  static const bool fast = [] {
    const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto has = [isa](dnnl::cpu_isa level) {
      const auto bits = static_cast<unsigned>(level);
      return (isa & bits) == bits;
    };
#if defined(__x86_64__) || defined(__i386__)
    const bool amd = __builtin_cpu_is("amd");
#else
    const bool amd = false;
#endif
    return (has(dnnl::cpu_isa::avx512_core_amx) || (amd && has(dnnl::cpu_isa::avx512_core_bf16))) &&
           bf16GemmAvailable();
  }();
  return fast;
#else
  return false;
#endif
}

}  // namespace retnet
