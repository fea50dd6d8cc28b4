// Standalone test and benchmark of the CUDA activation kernels; needs nvcc and
// a CUDA driver, no TensorFlow. Build and run: bash tools/gpu_check/run.sh
//
//   gpu_check                 accuracy of every activation (forward y and f',
//                             backward dy * f') on the GPU against the CPU
//                             implementation compiled from the same headers, over
//                             a dense grid of inputs (every half/bfloat16 bit
//                             pattern; dense, log-spaced, edge and random float32 /
//                             float64 values incl. +-0, subnormals, +-inf, NaN), on
//                             the aligned (16-byte pack), unaligned and in-place
//                             paths; the same for the storage forms of f'
//                             (kernels/storage.h): y alone, dx from y, and every
//                             quantizer (bfloat16, uint8, bits1-4, levels) with
//                             the packed codes compared byte for byte (one-step
//                             differences where f' sits within tolerance of a
//                             rounding boundary are counted and reported); then
//                             GB/s at --bench-elements (default 256M) against the
//                             device copy bandwidth of the same run, with rows for
//                             the quantized pair (bits4 / uint8; silu, gelu, mish;
//                             float32 and bfloat16).
//   gpu_check --self-check    no GPU: runs the kernels' per-thread code on the CPU
//                             over fake grids and checks the comparison logic.
// Options: --tolerances float16=RTOL:ATOL,bfloat16=...,float32=...,float64=...
//          (run.sh passes TOLERANCES from tests/conftest.py), --bench-elements N,
//          --no-bench, --only NAME, --require-target (exit 1 below the target).
// Exit status: 0 when every comparison is within tolerance, 1 otherwise.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda/fused_activation_gpu.h"
#include "cuda/fused_activation_gpu_kernels.cuh"
#include "cuda/storage_gpu_kernels.cuh"
#include "fewbit_tables.h"
#include "fused_activation.h"
#include "storage.h"

namespace nestad {
namespace check {

using gpu::ElementType;

// ---------------------------------------------------------------- test cases

struct Case {
  Kind kind;
  std::vector<float> params;
  std::string label;
};

// Parameter values for the activations that take parameters (the others take
// none). An activation whose parameter count differs from this table is an
// error, so a new parameterized activation gets its entry here.
const std::multimap<std::string, std::vector<float>>& ParameterTable() {
  static const std::multimap<std::string, std::vector<float>> table = {
      {"celu", {1.0f}},
      {"celu", {0.5f}},
      {"elu", {1.0f}},
      {"hard_shrink", {0.5f}},
      {"leaky_relu", {0.2f}},
      {"relu", {0.0f, INFINITY, 0.0f}},
      {"relu", {0.1f, 6.0f, 0.5f}},
      {"soft_shrink", {0.5f}},
      {"squareplus", {4.0f}},
      {"threshold", {0.5f, -1.0f}},
  };
  return table;
}

std::string Label(const std::string& name, const std::vector<float>& params) {
  std::string label = name;
  for (size_t i = 0; i < params.size(); ++i) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%s%g", i ? "," : "(", params[i]);
    label += buffer;
  }
  return params.empty() ? label : label + ")";
}

bool BuildCases(const std::string& only, std::vector<Case>* cases) {
  for (int i = 0; i < static_cast<int>(Kind::kCount); ++i) {
    const Kind kind = static_cast<Kind>(i);
    const std::string name = Info(kind).name;
    if (!only.empty() && only != name) continue;
    std::vector<std::vector<float>> param_sets;
    const auto range = ParameterTable().equal_range(name);
    for (auto it = range.first; it != range.second; ++it) param_sets.push_back(it->second);
    if (param_sets.empty()) param_sets.push_back({});
    for (const auto& params : param_sets) {
      Kind resolved;
      const std::string error = ResolveActivation(name, params, &resolved);
      if (!error.empty()) {
        std::fprintf(stderr, "gpu_check: parameter table entry for %s: %s\n", name.c_str(),
                     error.c_str());
        return false;
      }
      cases->push_back({resolved, params, Label(name, params)});
    }
  }
  return !cases->empty();
}

// ------------------------------------------------------------- element types

template <typename S> struct TypeInfo;
template <> struct TypeInfo<__half> {
  static constexpr ElementType kType = ElementType::kFloat16;
  static constexpr const char* kName = "float16";
};
template <> struct TypeInfo<__nv_bfloat16> {
  static constexpr ElementType kType = ElementType::kBFloat16;
  static constexpr const char* kName = "bfloat16";
};
template <> struct TypeInfo<float> {
  static constexpr ElementType kType = ElementType::kFloat32;
  static constexpr const char* kName = "float32";
};
template <> struct TypeInfo<double> {
  static constexpr ElementType kType = ElementType::kFloat64;
  static constexpr const char* kName = "float64";
};

// Calls fn(S()) for every storage type, in the order of the tables.
template <typename Fn>
void ForEachType(Fn&& fn) {
  fn(__half());
  fn(__nv_bfloat16());
  fn(float());
  fn(double());
}

template <typename S>
double ToDouble(S value) { return static_cast<double>(static_cast<typename ComputeType<S>::type>(value)); }
template <typename S>
S FromDouble(double value) { return static_cast<S>(static_cast<typename ComputeType<S>::type>(value)); }

template <typename S>
bool SameBits(S a, S b) { return std::memcmp(&a, &b, sizeof(S)) == 0; }

// Tolerances: |got - want| <= atol + rtol * |want| (the rule of tests/conftest.py).
struct Tolerance {
  double rtol, atol;
};
std::map<std::string, Tolerance> g_tolerances = {
    // Defaults = TOLERANCES of tests/conftest.py; run.sh passes the live values.
    {"float16", {2e-3, 2e-3}},
    {"bfloat16", {1.6e-2, 1.6e-2}},
    {"float32", {2e-5, 2e-6}},
    {"float64", {1e-9, 1e-12}},
};

bool ParseTolerances(const std::string& text) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    const size_t eq = item.find('='), colon = item.find(':');
    if (eq == std::string::npos || colon == std::string::npos || colon < eq ||
        !g_tolerances.count(item.substr(0, eq))) {
      std::fprintf(stderr, "gpu_check: bad --tolerances item '%s'\n", item.c_str());
      return false;
    }
    g_tolerances[item.substr(0, eq)] = {std::atof(item.substr(eq + 1, colon - eq - 1).c_str()),
                                        std::atof(item.substr(colon + 1).c_str())};
    start = end + 1;
  }
  return true;
}

// ---------------------------------------------------------------- comparison

struct Comparison {
  int64_t count = 0, mismatches = 0, identical = 0, first_mismatch = -1;
  int64_t one_step = 0;  // codes: accepted one-quantization-step differences (CompareCodes)
  double worst = 0;  // largest |got - want| / (atol + rtol |want|) over finite pairs
  void Merge(const Comparison& other) {
    if (first_mismatch < 0 && other.first_mismatch >= 0) first_mismatch = count + other.first_mismatch;
    count += other.count;
    mismatches += other.mismatches;
    identical += other.identical;
    one_step += other.one_step;
    worst = std::max(worst, other.worst);
  }
};

// NaN must meet NaN, infinities must be equal, finite values within tolerance.
template <typename S>
Comparison Compare(const S* got, const S* want, int64_t n, Tolerance tol) {
  Comparison result;
  result.count = n;
  for (int64_t i = 0; i < n; ++i) {
    if (SameBits(got[i], want[i])) {
      ++result.identical;
      continue;
    }
    const double a = ToDouble(got[i]), b = ToDouble(want[i]);
    bool ok;
    if (a == b) {  // +0 and -0
      ok = true;
    } else if (std::isnan(a) || std::isnan(b)) {
      ok = std::isnan(a) && std::isnan(b);
    } else if (std::isinf(a) || std::isinf(b)) {
      ok = a == b;
    } else {
      const double ratio = std::fabs(a - b) / (tol.atol + tol.rtol * std::fabs(b));
      result.worst = std::max(result.worst, ratio);
      ok = ratio <= 1.0;
    }
    if (!ok) {
      if (result.first_mismatch < 0) result.first_mismatch = i;
      ++result.mismatches;
    }
  }
  return result;
}

// ------------------------------------------------------------------- inputs

template <typename S>
std::vector<S> DenseInputs() {
  std::vector<S> values;
  if (sizeof(S) == 2) {  // every bit pattern: +-0, subnormals, normals, +-inf, NaNs
    for (uint32_t bits = 0; bits < 65536; ++bits) {
      const uint16_t b16 = static_cast<uint16_t>(bits);
      S value;
      std::memcpy(&value, &b16, 2);
      values.push_back(value);
    }
  } else {
    using C = typename ComputeType<S>::type;
    const double edges[] = {0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, 20.0, -20.0, 1e4, -1e4,
                            INFINITY, -INFINITY, NAN, 3.0, -3.0, 6.0, 0.5, -0.5, 10.0, -10.0,
                            std::numeric_limits<C>::min(), -std::numeric_limits<C>::min(),
                            std::numeric_limits<C>::denorm_min(), std::numeric_limits<C>::max(),
                            -std::numeric_limits<C>::max()};
    for (double e : edges) values.push_back(FromDouble<S>(e));
    const int dense = sizeof(S) == 4 ? (1 << 20) : (1 << 19);
    const double limit = sizeof(S) == 4 ? 40.0 : 50.0;
    for (int i = 0; i < dense; ++i) values.push_back(FromDouble<S>(-limit + 2 * limit * i / (dense - 1)));
    const int min_exp = std::numeric_limits<C>::min_exponent - std::numeric_limits<C>::digits;
    const int max_exp = std::numeric_limits<C>::max_exponent;
    for (int e = min_exp; e < max_exp; ++e) {  // log-spaced magnitudes, both signs
      for (int m = 0; m < (sizeof(S) == 4 ? 64 : 16); ++m) {
        const double v = std::ldexp(1.0 + m / 64.0, e);
        values.push_back(FromDouble<S>(v));
        values.push_back(FromDouble<S>(-v));
      }
    }
  }
  std::mt19937_64 rng(12345);
  std::normal_distribution<double> normal(0.0, 5.0);
  const int random = sizeof(S) == 2 ? (1 << 16) : (1 << 18);
  for (int i = 0; i < random; ++i) values.push_back(FromDouble<S>(normal(rng)));
  for (int i = 0; i < random; ++i) {  // random bit patterns (all classes of values)
    uint64_t bits = rng();
    S value;
    std::memcpy(&value, &bits, sizeof(S));
    values.push_back(value);
  }
  while (values.size() % 16 != 13) values.push_back(FromDouble<S>(0.25));  // a ragged tail
  return values;
}

template <typename S>
std::vector<S> RandomGradients(size_t n) {
  std::vector<S> values(n);
  std::mt19937_64 rng(777);
  std::normal_distribution<double> normal(0.0, 2.0);
  for (auto& v : values) v = FromDouble<S>(normal(rng));
  if (n > 4) {
    values[0] = FromDouble<S>(INFINITY);
    values[1] = FromDouble<S>(NAN);
    values[2] = FromDouble<S>(-0.0);
  }
  return values;
}

// ---------------------------------------------------------- CPU reference

// fn(begin, end) over [0, n) in one chunk per hardware thread. A std::function,
// so that std::thread is instantiated once, not once per reference loop.
void ParallelChunks(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t threads = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t begin = 0; begin < n; begin += chunk) {
    pool.emplace_back(fn, begin, std::min(n, begin + chunk));
  }
  for (auto& t : pool) t.join();
}

template <typename S>
void CpuForward(const Case& c, const S* x, S* y, S* d, int64_t n) {
  VisitActivation(c.kind, c.params.data(), [&](auto f) {
    ParallelChunks(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) FusedForwardElement(f, x[i], y[i], d[i]);
    });
    return 0;
  });
}

template <typename S>
void CpuBackward(const S* dy, const S* d, S* dx, int64_t n) {
  ParallelChunks(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dx[i] = FusedBackwardElement(dy[i], d[i]);
  });
}

// ------------------------------------------------------------------ output

int g_failures = 0;

template <typename S>
void Report(const char* what, const std::string& label, const Comparison& c) {
  const bool ok = c.mismatches == 0;
  if (!ok) ++g_failures;
  std::printf("%-26s %-9s %-13s %9lld %8.4f %7.3f%% %s", label.c_str(), TypeInfo<S>::kName, what,
              static_cast<long long>(c.count), c.worst,
              100.0 * c.identical / std::max<int64_t>(1, c.count), ok ? "ok" : "FAIL");
  if (!ok) std::printf(" (%lld mismatches, first at %lld)", static_cast<long long>(c.mismatches),
                       static_cast<long long>(c.first_mismatch));
  if (c.one_step > 0) {
    std::printf(" (%lld one-step code differences at f' within tolerance of a boundary)",
                static_cast<long long>(c.one_step));
  }
  std::printf("\n");
}

void PrintAccuracyHeader(const char* title) {
  std::printf("\n%s\n%-26s %-9s %-13s %9s %8s %8s %s\n", title, "activation", "dtype", "output",
              "elements", "worst", "bitexact", "result");
  std::printf("(worst = max |got - want| / (atol + rtol |want|); <= 1 passes)\n");
}

// ------------------------------------------ storage forms: cases and references

// One quantizer of the check (kernels/storage.h), labelled like nestad_tf's
// derivative= modes ("bfloat16", "uint8", "bits1".."bits4"; "levels1"/"levels2").
struct StorageCase {
  std::string label;
  Quantizer q;
};

// The quantizers checked for one activation: every format and packing width the
// ops accept. Buckets and the uniform8 range come from kernels/fewbit_tables.h
// where the activation has tables (what nestad_tf.storage uses), else from f'
// over the inputs; levels only where f' takes at most 3 finite values over the
// inputs (a piecewise-constant f', the format's only use), with those values.
template <typename C>
std::vector<StorageCase> StorageCases(const Case& c, const std::vector<C>& derivative) {
  const std::string name = Info(c.kind).name;
  std::vector<StorageCase> result;
  auto add = [&](const std::string& label, const char* format, int bits,
                 const std::vector<float>& breakpoints, const std::vector<float>& levels,
                 const std::vector<float>& range) {
    StorageCase sc{label, Quantizer()};
    const std::string error = MakeQuantizer(format, bits, breakpoints, levels, range, &sc.q);
    if (!error.empty()) {
      std::printf("%s %s: MakeQuantizer failed: %s FAIL\n", c.label.c_str(), label.c_str(),
                  error.c_str());
      ++g_failures;
      return;
    }
    result.push_back(sc);
  };
  float lo = INFINITY, hi = -INFINITY;
  std::vector<float> distinct;
  for (C value : derivative) {
    const float d = static_cast<float>(value);
    if (!std::isfinite(d)) continue;
    lo = std::min(lo, d);
    hi = std::max(hi, d);
    if (distinct.size() <= 3 && std::find(distinct.begin(), distinct.end(), d) == distinct.end()) {
      distinct.push_back(d);
    }
  }
  lo = std::max(lo, -4.0f);
  hi = std::min(hi, 4.0f);
  if (!(lo < hi)) hi = (lo = std::isfinite(lo) ? lo : 0.0f) + 1.0f;
  for (const DerivativeRange& range : kDerivativeRanges) {
    if (c.params.empty() && name == range.activation) lo = range.lo, hi = range.hi;
  }
  add("bfloat16", "bfloat16", 16, {}, {}, {});
  add("uint8", "uniform8", 8, {}, {}, {lo, hi});
  for (int bits = 1; bits <= 4; ++bits) {
    const int num_levels = 1 << bits;
    std::vector<float> breakpoints, levels;
    for (const QuantizedDerivativeTable& table : kQuantizedDerivativeTables) {
      if (c.params.empty() && name == table.activation && table.bits == bits) {
        breakpoints.assign(table.breakpoints, table.breakpoints + num_levels - 1);
        levels.assign(table.levels, table.levels + num_levels);
      }
    }
    if (levels.empty()) {  // synthetic: breakpoints even over [-4, 4], levels over [lo, hi]
      for (int i = 0; i < num_levels; ++i) levels.push_back(lo + (hi - lo) * (i + 0.5f) / num_levels);
      for (int i = 1; i < num_levels; ++i) breakpoints.push_back(-4.0f + 8.0f * i / num_levels);
    }
    add("bits" + std::to_string(bits), "buckets", bits, breakpoints, levels, {});
  }
  if (!distinct.empty() && distinct.size() <= 3) {
    std::sort(distinct.begin(), distinct.end());
    if (distinct.size() == 1) add("levels1", "levels", 1, {}, distinct, {});
    add("levels2", "levels", 2, {}, distinct, {});
  }
  return result;
}

// y = f(x) and f'(x) in the compute type, as the quantized forward op computes
// them before it encodes f' (CpuQuantize).
template <typename S>
void CpuForwardCompute(const Case& c, const S* x, S* y, typename ComputeType<S>::type* d,
                       int64_t n) {
  using C = typename ComputeType<S>::type;
  VisitActivation(c.kind, c.params.data(), [&](auto f) {
    ParallelChunks(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        C yc;
        FusedForwardCompute(f, static_cast<C>(x[i]), yc, d[i]);
        y[i] = static_cast<S>(yc);
      }
    });
    return 0;
  });
}

// The CPU ops of kernels/storage_ops.cc, element by element from the same
// headers: ActivationForward, ActivationGradFromOutput, FusedActivationQuantized
// (CpuForwardCompute + CpuQuantize; codes of a partial last group padded with
// 0), ActivationGradQuantized.
template <typename S>
void CpuForwardOnly(const Case& c, const S* x, S* y, int64_t n) {
  VisitActivation(c.kind, c.params.data(), [&](auto f) {
    ParallelChunks(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) y[i] = ForwardOnlyElement(f, x[i]);
    });
    return 0;
  });
}

// Whether the activation's f' can be recovered from y (ActivationGradFromOutput).
bool HasDerivativeFromOutput(const Case& c) {
  return VisitActivation(c.kind, c.params.data(), [](auto f) {
    if constexpr (SupportsDerivativeFromOutput<decltype(f)>::value) {
      return f.HasDerivativeFromOutput();
    } else {
      return false;
    }
  });
}

template <typename S>
void CpuBackwardFromOutput(const Case& c, const S* dy, const S* y, S* dx, int64_t n) {
  VisitActivation(c.kind, c.params.data(), [&](auto f) {
    if constexpr (SupportsDerivativeFromOutput<decltype(f)>::value) {
      ParallelChunks(n, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) dx[i] = BackwardFromOutputElement(f, dy[i], y[i]);
      });
    }
    return 0;
  });
}

// The codes of FusedActivationQuantized from x and f' (CpuForwardCompute).
template <typename S>
void CpuQuantize(const Quantizer& q, const S* x, const typename ComputeType<S>::type* d,
                 uint8_t* code, int64_t n) {
  using C = typename ComputeType<S>::type;
  ParallelChunks((n + kGroup - 1) / kGroup, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      uint32_t codes[kGroup] = {};
      for (int k = 0; k < kGroup && g * kGroup + k < n; ++k) {
        codes[k] = q.Encode(static_cast<C>(x[g * kGroup + k]), d[g * kGroup + k]);
      }
      PackGroup(codes, q.bits, code + g * q.bits);
    }
  });
}

template <typename S>
void CpuQuantizedBackward(const Quantizer& q, const S* dy, const uint8_t* code, S* dx,
                          int64_t n) {
  using C = typename ComputeType<S>::type;
  ParallelChunks(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      uint32_t codes[kGroup];
      UnpackGroup(code + i / kGroup * q.bits, q.bits, codes);
      dx[i] = static_cast<S>(static_cast<C>(dy[i]) * static_cast<C>(q.Decode(codes[i % kGroup])));
    }
  });
}

// Whether codes a != b are one quantization step apart with the CPU's f' (d)
// within tolerance of the rounding boundary between them: the GPU's f' may
// differ from the CPU's within tolerance and round to the neighbouring code.
// Only formats that round f' qualify (bfloat16, uniform8); buckets are a
// function of x and levels compare exact values, so those must match exactly.
bool OneStepApart(const Quantizer& q, uint32_t a, uint32_t b, double d, Tolerance tol) {
  const double va = q.Decode(a), vb = q.Decode(b);
  if (va == vb) return true;  // +0 and -0
  const uint32_t distance = a > b ? a - b : b - a;
  bool neighbours = false;
  if (q.format == QuantFormat::kBfloat16) {
    neighbours = ((a ^ b) & 0x8000u) == 0 && distance == 1 && std::isfinite(va) &&
                 std::isfinite(vb);
  } else if (q.format == QuantFormat::kUniform8) {
    neighbours = a < 255 && b < 255 && distance == 1;
  }
  return neighbours && std::isfinite(d) &&
         std::fabs(d - 0.5 * (va + vb)) <= tol.atol + tol.rtol * std::fabs(d);
}

// The packed codes of n elements: equal codes pass; different ones pass as a
// one-step difference (counted) where OneStepApart; the padding codes of the
// last group must be equal (0). `derivative` is the CPU's f' in the compute type.
template <typename C>
Comparison CompareCodes(const uint8_t* got, const uint8_t* want, const Quantizer& q,
                        const C* derivative, int64_t n, Tolerance tol) {
  Comparison result;
  result.count = n;
  for (int64_t g = 0; g * kGroup < n; ++g) {
    uint32_t a[kGroup], b[kGroup];
    UnpackGroup(got + g * q.bits, q.bits, a);
    UnpackGroup(want + g * q.bits, q.bits, b);
    for (int k = 0; k < kGroup; ++k) {
      const int64_t i = g * kGroup + k;
      if (a[k] == b[k]) {
        result.identical += i < n;
      } else if (i < n && OneStepApart(q, a[k], b[k], static_cast<double>(derivative[i]), tol)) {
        ++result.one_step;
      } else {
        if (result.first_mismatch < 0) result.first_mismatch = i;
        ++result.mismatches;
      }
    }
  }
  return result;
}

// ------------------------------------------------------- self-check (no GPU)
//
// Host code only, hidden from nvcc's device pass: that pass would otherwise
// instantiate every emulated per-thread function for the device as well, for
// nothing (about 20 s of compile time). Main only needs the declaration there.

int SelfCheck(const std::vector<Case>& cases);

#if !defined(__CUDA_ARCH__)


template <typename S>
struct AlignedBuffer {
  explicit AlignedBuffer(size_t n) : size(n), data(static_cast<S*>(std::aligned_alloc(64, ((n * sizeof(S) + 63) / 64 + 1) * 64))) {}
  ~AlignedBuffer() { std::free(data); }
  size_t size;
  S* data;
};

// Runs ForwardThread / BackwardThread for every thread of a fake grid on the
// CPU and compares with the CPU reference: same math, so every element must
// match; outputs start as a sentinel, so a skipped element fails.
template <typename S, int kVec>
void EmulateCase(const Case& c, const std::vector<S>& inputs, int64_t offset, int64_t threads) {
  using Codec = gpu::ExactDerivative<S>;
  const int64_t n = static_cast<int64_t>(inputs.size()) - offset;
  AlignedBuffer<S> x(inputs.size()), y(inputs.size()), d(inputs.size()), dx(inputs.size());
  std::memcpy(x.data, inputs.data(), inputs.size() * sizeof(S));
  std::vector<S> want_y(n), want_d(n), want_dx(n);
  CpuForward(c, x.data + offset, want_y.data(), want_d.data(), n);
  const S sentinel = FromDouble<S>(1234.0);
  std::fill(y.data, y.data + y.size, sentinel);
  std::fill(d.data, d.data + d.size, sentinel);
  VisitActivation(c.kind, c.params.data(), [&](auto f) {
    for (int64_t t = 0; t < threads; ++t) {
      gpu::ForwardThread<decltype(f), S, kVec, Codec>(f, x.data + offset, y.data + offset,
                                                      d.data + offset, n, t, threads);
    }
    return 0;
  });
  const std::vector<S> dy = RandomGradients<S>(n);
  CpuBackward(dy.data(), want_d.data(), want_dx.data(), n);
  std::fill(dx.data, dx.data + dx.size, sentinel);
  AlignedBuffer<S> dy_buffer(inputs.size());
  std::memcpy(dy_buffer.data + offset, dy.data(), n * sizeof(S));
  for (int64_t t = 0; t < threads; ++t) {
    gpu::BackwardThread<S, kVec, Codec>(dy_buffer.data + offset, d.data + offset,
                                        dx.data + offset, n, t, threads);
  }
  const Tolerance exact{0.0, 0.0};
  char what[64];
  std::snprintf(what, sizeof(what), "y v%d+%lld/%lld", kVec, static_cast<long long>(offset),
                static_cast<long long>(threads));
  Report<S>(what, c.label, Compare(y.data + offset, want_y.data(), n, exact));
  what[0] = 'd';
  Report<S>(what, c.label, Compare(d.data + offset, want_d.data(), n, exact));
  what[0] = 'x';
  Report<S>(what, c.label, Compare(dx.data + offset, want_dx.data(), n, exact));
}

template <typename S>
void SelfCheckType(const std::vector<Case>& cases) {
  std::vector<S> inputs = DenseInputs<S>();
  inputs.resize(4096 + 13);  // a slice of the grid (edge values first), ragged length
  for (const Case& c : cases) {
    constexpr int kVec = gpu::VectorWidth<S>();
    EmulateCase<S, kVec>(c, inputs, 0, 1);
    EmulateCase<S, kVec>(c, inputs, 0, 37);
    EmulateCase<S, 1>(c, inputs, 1, 64);
  }
}

// The activations whose storage-form thread code the self-check runs on the
// CPU. Every functor instantiates that code again (compile time), while the
// code is one template for all of them and their own f, f' are covered by the
// fused pair's self-check; these cover each path: FewBit tables and smooth f'
// (silu, gelu, mish), f' from y and levels (relu, hard_sigmoid), f' from y
// through exp (selu). Returns whether `kind` is one of them.
template <typename Visitor>
bool VisitEmulatedStorageActivation(Kind kind, const float* params, Visitor&& visitor) {
  switch (kind) {
    case Kind::k_silu: visitor(Silu(params)); return true;
    case Kind::k_gelu: visitor(Gelu(params)); return true;
    case Kind::k_mish: visitor(Mish(params)); return true;
    case Kind::k_relu: visitor(Relu(params)); return true;
    case Kind::k_hard_sigmoid: visitor(HardSigmoid(params)); return true;
    case Kind::k_selu: visitor(Selu(params)); return true;
    default: return false;
  }
}

constexpr int64_t kGuard = 16;  // sentinel elements / bytes after every emulated output

template <typename T>
std::vector<T> WithGuard(std::vector<T> values, T sentinel) {
  values.insert(values.end(), kGuard, sentinel);
  return values;
}

// The storage forms' rows of one activation and type, merged over fake grids.
struct StorageRows {
  Comparison forward_only, from_output;
  std::map<std::string, Comparison> quantized;  // y, codes and dx per quantizer label
};

// Runs the y-only pair's per-thread code (ForwardOnlyThread,
// BackwardFromOutputThread from the CPU's y) for every thread of a fake grid on
// the CPU against the CPU references: same math, so y and dx must match
// exactly (and the codes of EmulateQuantizedCase byte for byte); outputs start
// as a sentinel and the kGuard elements / bytes after each must stay
// untouched. Elements start at `offset` (1: unaligned pointers, and codes one
// byte off, so the element-wise and byte-wise paths run).
template <typename S, int kVec>
void EmulateStorageCase(const Case& c, const std::vector<S>& inputs, int64_t offset,
                        int64_t threads, StorageRows* rows) {
  const Tolerance exact{0.0, 0.0};
  const int64_t n = static_cast<int64_t>(inputs.size()) - offset;
  const S sentinel = FromDouble<S>(1234.0);
  AlignedBuffer<S> x(n + offset), y(n + offset + kGuard), dy(n + offset), dx(n + offset + kGuard);
  std::memcpy(x.data + offset, inputs.data() + offset, n * sizeof(S));
  const std::vector<S> grads = RandomGradients<S>(n);
  std::memcpy(dy.data + offset, grads.data(), n * sizeof(S));
  auto each_thread = [&](auto&& thread_fn) {
    for (int64_t t = 0; t < threads; ++t) thread_fn(t);
  };

  std::vector<S> want_y(n);
  CpuForwardOnly(c, x.data + offset, want_y.data(), n);
  std::fill(y.data, y.data + y.size, sentinel);
  VisitEmulatedStorageActivation(c.kind, c.params.data(), [&](auto f) {
    each_thread([&](int64_t t) {
      gpu::ForwardOnlyThread<decltype(f), S, kVec>(f, x.data + offset, y.data + offset, n, t,
                                                   threads);
    });
    return 0;
  });
  rows->forward_only.Merge(
      Compare(y.data + offset, WithGuard(want_y, sentinel).data(), n + kGuard, exact));

  if (HasDerivativeFromOutput(c)) {  // from the CPU's y
    std::vector<S> want_dx(n);
    CpuBackwardFromOutput(c, grads.data(), want_y.data(), want_dx.data(), n);
    AlignedBuffer<S> y_in(n + offset);
    std::memcpy(y_in.data + offset, want_y.data(), n * sizeof(S));
    std::fill(dx.data, dx.data + dx.size, sentinel);
    VisitEmulatedStorageActivation(c.kind, c.params.data(), [&](auto f) {
      if constexpr (SupportsDerivativeFromOutput<decltype(f)>::value) {
        each_thread([&](int64_t t) {
          gpu::BackwardFromOutputThread<decltype(f), S, kVec>(
              f, dy.data + offset, y_in.data + offset, dx.data + offset, n, t, threads);
        });
      }
      return 0;
    });
    rows->from_output.Merge(
        Compare(dx.data + offset, WithGuard(want_dx, sentinel).data(), n + kGuard, exact));
  }
}

// QuantizedForwardThread for every thread of a fake grid (one instantiation per
// activation and type: the emulations share it).
template <typename S>
void EmulateQuantizedForward(const Case& c, const Quantizer& q, const S* x, S* y, uint8_t* code,
                             int64_t n, bool aligned, int64_t threads) {
  VisitEmulatedStorageActivation(c.kind, c.params.data(), [&](auto f) {
    for (int64_t t = 0; t < threads; ++t) {
      gpu::QuantizedForwardThread<decltype(f), S>(f, q, x, y, code, n, aligned, t, threads);
    }
    return 0;
  });
}

// The quantized pair's per-thread code (QuantizedForwardThread, also in place,
// and QuantizedBackwardThread from the CPU's codes) over a fake grid on the CPU
// for every quantizer of StorageCases, as EmulateStorageCase does.
template <typename S>
void EmulateQuantizedCase(const Case& c, const std::vector<S>& inputs, int64_t offset,
                          int64_t threads, StorageRows* rows) {
  using C = typename ComputeType<S>::type;
  constexpr int kVec = gpu::VectorWidth<S>();
  const Tolerance exact{0.0, 0.0};
  const int64_t n = static_cast<int64_t>(inputs.size()) - offset;
  const S sentinel = FromDouble<S>(1234.0);
  const uint8_t code_sentinel = 0xA5;
  AlignedBuffer<S> x(n + offset), y(n + offset + kGuard), dy(n + offset), dx(n + offset + kGuard);
  AlignedBuffer<S> in_place(n + offset);
  std::memcpy(x.data + offset, inputs.data() + offset, n * sizeof(S));
  const std::vector<S> grads = RandomGradients<S>(n);
  std::memcpy(dy.data + offset, grads.data(), n * sizeof(S));
  std::vector<C> derivative(n);
  std::vector<S> want_y(n), want_dx(n);
  CpuForwardCompute(c, x.data + offset, want_y.data(), derivative.data(), n);
  for (const StorageCase& sc : StorageCases(c, derivative)) {
    const Quantizer& q = sc.q;
    const int64_t bytes = PackedBytes(n, q.bits);
    std::vector<uint8_t> want_code(bytes);
    CpuQuantize(q, x.data + offset, derivative.data(), want_code.data(), n);
    CpuQuantizedBackward(q, grads.data(), want_code.data(), want_dx.data(), n);
    Comparison& row = rows->quantized[sc.label];

    AlignedBuffer<uint8_t> code(bytes + offset + kGuard);
    std::fill(code.data, code.data + code.size, code_sentinel);
    std::fill(y.data, y.data + y.size, sentinel);
    const bool aligned = gpu::PacksAligned<kVec>(x.data + offset, y.data + offset) &&
                         gpu::PacksAligned<16>(code.data + offset);
    EmulateQuantizedForward(c, q, x.data + offset, y.data + offset, code.data + offset, n,
                            aligned, threads);
    row.Merge(Compare(y.data + offset, WithGuard(want_y, sentinel).data(), n + kGuard, exact));
    row.Merge(Compare(code.data + offset, WithGuard(want_code, code_sentinel).data(),
                      bytes + kGuard, exact));
    // In place (y = x), as when TF forwards x's buffer to y.
    std::memcpy(in_place.data + offset, x.data + offset, n * sizeof(S));
    EmulateQuantizedForward(c, q, in_place.data + offset, in_place.data + offset,
                            code.data + offset, n, aligned, threads);
    row.Merge(Compare(in_place.data + offset, want_y.data(), n, exact));

    // Backward from the CPU's codes.
    std::memcpy(code.data + offset, want_code.data(), bytes);
    std::fill(dx.data, dx.data + dx.size, sentinel);
    const bool aligned_backward =
        gpu::PacksAligned<kVec>(dy.data + offset, dx.data + offset) &&
        gpu::PacksAligned<16>(code.data + offset);
    for (int64_t t = 0; t < threads; ++t) {
      gpu::QuantizedBackwardThread<S>(q, dy.data + offset, code.data + offset, dx.data + offset,
                                      n, aligned_backward, t, threads);
    }
    row.Merge(Compare(dx.data + offset, WithGuard(want_dx, sentinel).data(), n + kGuard, exact));
  }
}

template <typename S>
void SelfCheckStorageType(const std::vector<Case>& cases) {
  std::vector<S> inputs = DenseInputs<S>();
  inputs.resize(4096 + 13);  // a slice of the grid (edge values first), ragged length
  for (const Case& c : cases) {
    if (!VisitEmulatedStorageActivation(c.kind, c.params.data(), [](auto) {})) continue;
    constexpr int kVec = gpu::VectorWidth<S>();
    StorageRows rows;
    EmulateStorageCase<S, kVec>(c, inputs, 0, 1, &rows);
    EmulateStorageCase<S, kVec>(c, inputs, 0, 37, &rows);
    EmulateStorageCase<S, 1>(c, inputs, 1, 64, &rows);
    EmulateQuantizedCase<S>(c, inputs, 0, 1, &rows);
    EmulateQuantizedCase<S>(c, inputs, 0, 37, &rows);
    EmulateQuantizedCase<S>(c, inputs, 1, 64, &rows);
    Report<S>("y only", c.label, rows.forward_only);
    if (HasDerivativeFromOutput(c)) Report<S>("dx from y", c.label, rows.from_output);
    for (const auto& [label, row] : rows.quantized) {
      Report<S>((label + " y/code/dx").c_str(), c.label, row);
    }
  }
}

// CompareCodes must pass equal codes and one-step differences at a rounding
// boundary, and flag every other difference (padding included).
void SelfCheckCodeComparison() {
  const Tolerance tol = g_tolerances["float32"];
  Quantizer uint8, bfloat16, buckets;
  const bool built = MakeQuantizer("uniform8", 8, {}, {}, {0.0f, 1.0f}, &uint8).empty() &&
                     MakeQuantizer("bfloat16", 16, {}, {}, {}, &bfloat16).empty() &&
                     MakeQuantizer("buckets", 2, {-1.0f, 0.0f, 1.0f}, {0.0f, 0.3f, 0.6f, 1.0f},
                                   {}, &buckets).empty();
  constexpr int n = 13;  // two groups, the second with 3 padding codes
  struct Fault {
    const char* what;
    const Quantizer* q;
    int index;
    float value;                  // f' (and x) at index; the others are far from any boundary
    uint32_t (*got)(uint32_t);    // the faulty code from the right one
    bool flagged, one_step;
  } faults[] = {
      {"uint8 +1 inside a step", &uint8, 2, 23.0f / 254, [](uint32_t w) { return w + 1; }, true,
       false},
      {"uint8 across a boundary", &uint8, 5, 53.5f / 254, [](uint32_t w) { return 107 - w; },
       false, true},
      {"uint8 two steps at a boundary", &uint8, 5, 53.5f / 254,
       [](uint32_t w) { return w == 53 ? 55u : 52u; }, true, false},
      {"uint8 NaN code", &uint8, 4, 1.0f, [](uint32_t) { return 255u; }, true, false},
      {"uint8 padding", &uint8, 14, 0.0f, [](uint32_t w) { return w + 1; }, true, false},
      {"bfloat16 across a boundary", &bfloat16, 7, 1.00390625f,
       [](uint32_t w) { return w == 0x3F80u ? 0x3F81u : 0x3F80u; }, false, true},
      {"bfloat16 +1 inside", &bfloat16, 7, 1.5f, [](uint32_t w) { return w + 1; }, true, false},
      {"bfloat16 sign", &bfloat16, 7, 1.5f, [](uint32_t w) { return w ^ 0x8000u; }, true, false},
      {"buckets across a breakpoint", &buckets, 3, 0.0f, [](uint32_t w) { return w - 1; }, true,
       false},
      {"buckets padding", &buckets, 15, 0.0f, [](uint32_t w) { return w + 1; }, true, false},
  };
  int failures = built ? 0 : 1;
  for (const Fault& fault : faults) {
    const Quantizer& q = *fault.q;
    std::vector<float> d(n);
    for (int i = 0; i < n; ++i) d[i] = q.format == QuantFormat::kUniform8 ? (20.0f * i + 3) / 254
                                                                           : 1.0f + i / 8.0f;
    if (fault.index < n) d[fault.index] = fault.value;
    std::vector<uint8_t> want(PackedBytes(n, q.bits)), got;
    for (int g = 0; g * kGroup < n; ++g) {
      uint32_t codes[kGroup] = {};
      for (int k = 0; k < kGroup && g * kGroup + k < n; ++k) {
        codes[k] = q.Encode(d[g * kGroup + k], d[g * kGroup + k]);
      }
      PackGroup(codes, q.bits, want.data() + g * q.bits);
    }
    got = want;
    uint32_t codes[kGroup];
    const int g = fault.index / kGroup, k = fault.index % kGroup;
    UnpackGroup(got.data() + g * q.bits, q.bits, codes);
    codes[k] = fault.got(codes[k]);
    PackGroup(codes, q.bits, got.data() + g * q.bits);
    const Comparison c = CompareCodes(got.data(), want.data(), q, d.data(), n, tol);
    if ((c.mismatches == 1) != fault.flagged || c.mismatches > 1 ||
        (c.one_step == 1) != fault.one_step) {
      std::printf("code comparison self-check: %s: %lld mismatches, %lld one-step FAIL\n",
                  fault.what, static_cast<long long>(c.mismatches),
                  static_cast<long long>(c.one_step));
      ++failures;
    }
  }
  std::printf("code comparison self-check %s\n", failures ? "FAIL" : "ok");
  g_failures += failures;
}

// The comparison must flag what is wrong and only that.
template <typename S>
void SelfCheckComparison() {
  const Tolerance tol = g_tolerances[TypeInfo<S>::kName];
  std::vector<S> want = {FromDouble<S>(1.0), FromDouble<S>(-2.0), FromDouble<S>(0.0),
                         FromDouble<S>(INFINITY), FromDouble<S>(NAN), FromDouble<S>(100.0)};
  struct Fault {
    int index;
    double value;
    bool flagged;
  } faults[] = {
      {0, 1.0 + 4 * tol.rtol + 4 * tol.atol, true},  // beyond tolerance
      {0, 1.0 + 0.2 * (tol.rtol + tol.atol), false},  // within tolerance (rounded to S)
      {1, NAN, true},                                  // NaN for a number
      {3, -INFINITY, true},                            // wrong infinity
      {3, 1000.0, true},                               // finite for inf
      {4, 0.0, true},                                  // number for NaN
      {5, 100.0 * (1 + 10 * tol.rtol) + 10 * tol.atol, true},
  };
  int failures = 0;
  for (const Fault& fault : faults) {
    std::vector<S> got = want;
    got[fault.index] = FromDouble<S>(fault.value);
    const Comparison c = Compare(got.data(), want.data(), want.size(), tol);
    if ((c.mismatches == 1) != fault.flagged || c.mismatches > 1) {
      std::printf("comparison self-check %s: fault at %d (value %g) %s\n", TypeInfo<S>::kName,
                  fault.index, fault.value, fault.flagged ? "not flagged" : "wrongly flagged");
      ++failures;
    }
  }
  const Comparison same = Compare(want.data(), want.data(), want.size(), tol);
  if (same.mismatches != 0 || same.identical != static_cast<int64_t>(want.size())) ++failures;
  std::printf("comparison self-check %-9s %s\n", TypeInfo<S>::kName, failures ? "FAIL" : "ok");
  g_failures += failures;
}

// The storage forms' launcher checks that need no device: each must answer
// with its own message before any launch (without a GPU a launch fails too, so
// the message is what tells them apart).
bool StorageLauncherChecks() {
  float fake[8];
  Quantizer bad_bits;
  bad_bits.bits = 5;
  Kind silu, leaky_relu;
  const std::vector<float> slope = {0.1f, INFINITY, 0.0f};
  if (!ResolveActivation("silu", {}, &silu).empty() ||
      !ResolveActivation("relu", slope, &leaky_relu).empty()) {
    return false;
  }
  auto says = [](const char* error, const char* text) {
    const bool ok = error != nullptr && std::strstr(error, text) != nullptr;
    if (!ok) std::printf("launcher check: expected '%s', got '%s'\n", text, error ? error : "");
    return ok;
  };
  gpu::ForwardArgs forward{silu, nullptr, ElementType::kFloat32, gpu::DerivativeStorage::kQuantized,
                           10, fake, fake, fake};
  gpu::BackwardArgs backward{ElementType::kBFloat16, gpu::DerivativeStorage::kQuantized, 10,
                             fake, fake, fake};
  bool ok = says(gpu::LaunchFusedForward(forward, nullptr), "needs a quantizer");
  ok &= says(gpu::LaunchFusedBackward(backward, nullptr), "needs a quantizer");
  forward.quantizer = backward.quantizer = &bad_bits;
  ok &= says(gpu::LaunchFusedForward(forward, nullptr), "bits per code");
  ok &= says(gpu::LaunchFusedBackward(backward, nullptr), "bits per code");
  backward.storage = gpu::DerivativeStorage::kFromOutput;
  backward.kind = silu;
  ok &= says(gpu::LaunchFusedBackward(backward, nullptr), "cannot be recovered");
  backward.kind = leaky_relu;
  backward.params = slope.data();
  ok &= says(gpu::LaunchFusedBackward(backward, nullptr), "cannot be recovered");
  forward.storage = gpu::DerivativeStorage::kFromOutput;
  forward.derivative = nullptr;  // allowed: y only
  forward.x = nullptr;
  ok &= says(gpu::LaunchFusedForward(forward, nullptr), "null tensor pointer");
  return ok;
}

int SelfCheck(const std::vector<Case>& cases) {
  std::printf("gpu_check --self-check: kernels' per-thread code run on the CPU, no GPU used\n");
  ForEachType([](auto s) { SelfCheckComparison<decltype(s)>(); });
  // Launcher argument checks that need no device.
  gpu::ForwardArgs args{};
  args.kind = cases[0].kind;
  args.params = cases[0].params.data();
  args.type = ElementType::kFloat32;
  args.n = 0;
  int launcher_failures = 0;
  launcher_failures += gpu::LaunchFusedForward(args, nullptr) != nullptr;  // n = 0: no-op
  args.n = -1;
  launcher_failures += gpu::LaunchFusedForward(args, nullptr) == nullptr;
  args.n = 10;
  launcher_failures += gpu::LaunchFusedForward(args, nullptr) == nullptr;  // null pointers
  launcher_failures += !StorageLauncherChecks();
  std::printf("launcher argument checks %s\n", launcher_failures ? "FAIL" : "ok");
  g_failures += launcher_failures;
  SelfCheckCodeComparison();
  PrintAccuracyHeader("per-thread kernel code on the CPU vs CPU reference (exact match required)");
  std::printf("(output: y/d/x = forward y, forward f', backward dx; vK+offset/threads)\n");
  ForEachType([&](auto s) { SelfCheckType<decltype(s)>(cases); });
  PrintAccuracyHeader("storage forms' per-thread code on the CPU vs CPU references (exact match; "
                      "codes byte for byte)");
  std::printf("(output: y only = ActivationForward; dx from y = ActivationGradFromOutput; "
              "<quantizer> y/code/dx = FusedActivationQuantized y and codes, "
              "ActivationGradQuantized dx; over 1, 37 and 64 threads, aligned and unaligned, "
              "and in place)\n");
  ForEachType([&](auto s) { SelfCheckStorageType<decltype(s)>(cases); });
  std::printf("\nself-check: %s (%d failures)\n", g_failures ? "FAIL" : "PASS", g_failures);
  return g_failures ? 1 : 0;
}

#endif  // !defined(__CUDA_ARCH__)

// ------------------------------------------------------------ GPU accuracy

#define CUDA_OK(call)                                                                     \
  do {                                                                                    \
    const cudaError_t status_ = (call);                                                   \
    if (status_ != cudaSuccess) {                                                         \
      std::fprintf(stderr, "gpu_check: %s failed: %s (%s:%d)\n", #call,                   \
                   cudaGetErrorString(status_), __FILE__, __LINE__);                      \
      std::exit(2);                                                                       \
    }                                                                                     \
  } while (0)

void LaunchOk(const char* error, const char* what) {
  if (error != nullptr) {
    std::fprintf(stderr, "gpu_check: %s launch failed: %s\n", what, error);
    std::exit(2);
  }
}

template <typename S>
struct DeviceBuffer {
  explicit DeviceBuffer(size_t n) : size(n) { CUDA_OK(cudaMalloc(&data, (n + 16) * sizeof(S))); }
  ~DeviceBuffer() { cudaFree(data); }
  void Upload(const S* host, size_t n, size_t offset = 0) {
    CUDA_OK(cudaMemcpy(data + offset, host, n * sizeof(S), cudaMemcpyHostToDevice));
  }
  std::vector<S> Download(size_t n, size_t offset = 0) const {
    std::vector<S> host(n);
    CUDA_OK(cudaMemcpy(host.data(), data + offset, n * sizeof(S), cudaMemcpyDeviceToHost));
    return host;
  }
  size_t size;
  S* data = nullptr;
};

template <typename S>
void AccuracyType(const std::vector<Case>& cases) {
  const Tolerance tol = g_tolerances[TypeInfo<S>::kName];
  const std::vector<S> x = DenseInputs<S>();
  const int64_t n = static_cast<int64_t>(x.size());
  const std::vector<S> dy = RandomGradients<S>(n);
  DeviceBuffer<S> x_dev(n), y_dev(n), d_dev(n), dy_dev(n), dx_dev(n);
  std::vector<S> want_y(n), want_d(n), want_dx(n);
  for (const Case& c : cases) {
    CpuForward(c, x.data(), want_y.data(), want_d.data(), n);
    CpuBackward(dy.data(), want_d.data(), want_dx.data(), n);
    gpu::ForwardArgs forward{c.kind, c.params.data(), TypeInfo<S>::kType,
                             gpu::DerivativeStorage::kExact, n, nullptr, nullptr, nullptr};
    gpu::BackwardArgs backward{TypeInfo<S>::kType, gpu::DerivativeStorage::kExact, n,
                               nullptr, nullptr, nullptr};
    Comparison y_all, d_all, dx_all;
    // offset 0: 16-byte packs; offset 1: the unaligned one-element path.
    for (int64_t offset : {0, 1}) {
      const int64_t m = n - offset;
      x_dev.Upload(x.data() + offset, m, offset);
      dy_dev.Upload(dy.data() + offset, m, offset);
      d_dev.Upload(want_d.data() + offset, m, offset);
      forward.n = backward.n = m;
      forward.x = x_dev.data + offset;
      forward.y = y_dev.data + offset;
      forward.derivative = d_dev.data + offset;
      backward.dy = dy_dev.data + offset;
      backward.derivative = d_dev.data + offset;  // the reference f', so dx is checked alone
      backward.dx = dx_dev.data + offset;
      LaunchOk(gpu::LaunchFusedBackward(backward, nullptr), "backward");
      LaunchOk(gpu::LaunchFusedForward(forward, nullptr), "forward");
      CUDA_OK(cudaDeviceSynchronize());
      y_all.Merge(Compare(y_dev.Download(m, offset).data(), want_y.data() + offset, m, tol));
      d_all.Merge(Compare(d_dev.Download(m, offset).data(), want_d.data() + offset, m, tol));
      dx_all.Merge(Compare(dx_dev.Download(m, offset).data(), want_dx.data() + offset, m, tol));
    }
    // In place, as when TF forwards x's buffer to y.
    x_dev.Upload(x.data(), n);
    forward.n = n;
    forward.x = forward.y = x_dev.data;
    forward.derivative = d_dev.data;
    LaunchOk(gpu::LaunchFusedForward(forward, nullptr), "forward in place");
    CUDA_OK(cudaDeviceSynchronize());
    y_all.Merge(Compare(x_dev.Download(n).data(), want_y.data(), n, tol));
    Report<S>("y", c.label, y_all);
    Report<S>("f'", c.label, d_all);
    Report<S>("dx=dy*f'", c.label, dx_all);
  }
}

// The storage forms on the GPU against the CPU references, over the same inputs
// as AccuracyType: y within tolerance (aligned, unaligned, in place); codes byte
// for byte up to CompareCodes' one-step differences (counted and reported);
// the backward passes from the CPU's y / codes within tolerance (the same
// arithmetic: expected bit-exact). Unaligned runs shift the element pointers by
// one element and the codes by one byte, so the element-wise and byte-wise
// paths run on the same elements.
template <typename S>
void StorageAccuracyType(const std::vector<Case>& cases) {
  using C = typename ComputeType<S>::type;
  const Tolerance tol = g_tolerances[TypeInfo<S>::kName];
  const std::vector<S> x = DenseInputs<S>();
  const int64_t n = static_cast<int64_t>(x.size());
  const std::vector<S> dy = RandomGradients<S>(n);
  DeviceBuffer<S> x_dev(n), y_dev(n), dy_dev(n), dx_dev(n), y_in_dev(n);
  DeviceBuffer<uint8_t> code_dev(PackedBytes(n, 16) + 16);
  std::vector<S> want_y(n), want_dx(n);
  std::vector<C> derivative(n);
  dy_dev.Upload(dy.data(), n);
  for (const Case& c : cases) {
    // ActivationForward / ActivationGradFromOutput.
    CpuForwardOnly(c, x.data(), want_y.data(), n);
    gpu::ForwardArgs forward{c.kind, c.params.data(), TypeInfo<S>::kType,
                             gpu::DerivativeStorage::kFromOutput, n, nullptr, nullptr, nullptr};
    Comparison y_only;
    for (int64_t offset : {0, 1}) {
      const int64_t m = n - offset;
      x_dev.Upload(x.data() + offset, m, offset);
      forward.n = m;
      forward.x = x_dev.data + offset;
      forward.y = y_dev.data + offset;
      LaunchOk(gpu::LaunchFusedForward(forward, nullptr), "forward y only");
      CUDA_OK(cudaDeviceSynchronize());
      y_only.Merge(Compare(y_dev.Download(m, offset).data(), want_y.data() + offset, m, tol));
    }
    Report<S>("y only", c.label, y_only);
    if (HasDerivativeFromOutput(c)) {
      CpuBackwardFromOutput(c, dy.data(), want_y.data(), want_dx.data(), n);
      y_in_dev.Upload(want_y.data(), n);
      gpu::BackwardArgs backward{TypeInfo<S>::kType, gpu::DerivativeStorage::kFromOutput, n,
                                 dy_dev.data, y_in_dev.data, dx_dev.data, c.kind,
                                 c.params.data()};
      LaunchOk(gpu::LaunchFusedBackward(backward, nullptr), "backward from y");
      CUDA_OK(cudaDeviceSynchronize());
      Report<S>("dx from y", c.label, Compare(dx_dev.Download(n).data(), want_dx.data(), n, tol));
    }

    // FusedActivationQuantized / ActivationGradQuantized, every quantizer.
    CpuForwardCompute(c, x.data(), want_y.data(), derivative.data(), n);
    Comparison quantized_y, quantized_dx;
    for (const StorageCase& sc : StorageCases(c, derivative)) {
      const Quantizer& q = sc.q;
      const int64_t bytes = PackedBytes(n, q.bits);
      std::vector<uint8_t> want_code(bytes);
      CpuQuantize(q, x.data(), derivative.data(), want_code.data(), n);
      CpuQuantizedBackward(q, dy.data(), want_code.data(), want_dx.data(), n);
      gpu::ForwardArgs qforward{c.kind, c.params.data(), TypeInfo<S>::kType,
                                gpu::DerivativeStorage::kQuantized, n, nullptr, nullptr, nullptr,
                                &q};
      gpu::BackwardArgs qbackward{TypeInfo<S>::kType, gpu::DerivativeStorage::kQuantized, n,
                                  nullptr, nullptr, nullptr};
      qbackward.quantizer = &q;
      Comparison codes;
      for (int64_t offset : {0, 1}) {
        x_dev.Upload(x.data(), n, offset);
        dy_dev.Upload(dy.data(), n, offset);
        qforward.x = x_dev.data + offset;
        qforward.y = y_dev.data + offset;
        qforward.derivative = code_dev.data + offset;
        LaunchOk(gpu::LaunchFusedForward(qforward, nullptr), "quantized forward");
        CUDA_OK(cudaDeviceSynchronize());
        quantized_y.Merge(Compare(y_dev.Download(n, offset).data(), want_y.data(), n, tol));
        codes.Merge(CompareCodes(code_dev.Download(bytes, offset).data(), want_code.data(), q,
                                 derivative.data(), n, tol));
        code_dev.Upload(want_code.data(), bytes, offset);  // decode the CPU's codes
        qbackward.dy = dy_dev.data + offset;
        qbackward.derivative = code_dev.data + offset;
        qbackward.dx = dx_dev.data + offset;
        LaunchOk(gpu::LaunchFusedBackward(qbackward, nullptr), "quantized backward");
        CUDA_OK(cudaDeviceSynchronize());
        quantized_dx.Merge(Compare(dx_dev.Download(n, offset).data(), want_dx.data(), n, tol));
      }
      // In place (y = x).
      x_dev.Upload(x.data(), n);
      qforward.x = qforward.y = x_dev.data;
      qforward.derivative = code_dev.data;
      LaunchOk(gpu::LaunchFusedForward(qforward, nullptr), "quantized forward in place");
      CUDA_OK(cudaDeviceSynchronize());
      quantized_y.Merge(Compare(x_dev.Download(n).data(), want_y.data(), n, tol));
      codes.Merge(CompareCodes(code_dev.Download(bytes).data(), want_code.data(), q,
                               derivative.data(), n, tol));
      Report<S>(("code " + sc.label).c_str(), c.label, codes);
    }
    dy_dev.Upload(dy.data(), n);
    Report<S>("quantized y", c.label, quantized_y);
    Report<S>("quantized dx", c.label, quantized_dx);
  }
}

// ------------------------------------------------------------- bandwidth

template <typename S>
__global__ void InitUniform(S* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t h = static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    x[i] = static_cast<S>(static_cast<float>((h >> 40) * (12.0 / 16777216.0) - 6.0));
  }
}

__global__ void CopyKernel(const uint4* in, uint4* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = in[i];
  }
}

// Median time in ms of `reps` runs of fn on the default stream.
template <typename Fn>
double MedianMs(Fn fn, int reps = 10) {
  cudaEvent_t start, stop;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&stop));
  for (int i = 0; i < 2; ++i) fn();
  std::vector<float> times;
  for (int i = 0; i < reps; ++i) {
    CUDA_OK(cudaEventRecord(start));
    fn();
    CUDA_OK(cudaEventRecord(stop));
    CUDA_OK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  CUDA_OK(cudaGetLastError());
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

struct Bandwidth {
  double memcpy_gbs, kernel_gbs;
  double Reference() const { return std::max(memcpy_gbs, kernel_gbs); }
};

Bandwidth CopyBandwidth(void* a, void* b, size_t bytes) {
  int sms = 0;
  CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const double memcpy_ms = MedianMs([&] {
    CUDA_OK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
  });
  const int64_t packs = bytes / 16;
  const double kernel_ms = MedianMs([&] {
    CopyKernel<<<sms * 8, 256>>>(static_cast<const uint4*>(a), static_cast<uint4*>(b), packs);
  });
  return {2.0 * bytes / memcpy_ms / 1e6, 2.0 * bytes / kernel_ms / 1e6};
}

bool IsTarget(const std::string& name, const char* dtype) {
  return (name == "silu" || name == "gelu" || name == "mish") &&
         (std::strcmp(dtype, "float32") == 0 || std::strcmp(dtype, "bfloat16") == 0);
}

int g_below_target = 0;

template <typename S>
void BenchType(const std::vector<Case>& cases, int64_t n, void* a, void* b, void* c,
               const Bandwidth& copy) {
  S* x = static_cast<S*>(a);
  S* y = static_cast<S*>(b);
  S* d = static_cast<S*>(c);
  InitUniform<<<1024, 256>>>(x, n);
  CUDA_OK(cudaDeviceSynchronize());
  const double bytes = 3.0 * n * sizeof(S);
  const double reference = copy.Reference();
  gpu::BackwardArgs backward{TypeInfo<S>::kType, gpu::DerivativeStorage::kExact, n, y, d, x};
  // Backward reads y as dy, d as f' and writes x: run it after the forward cases.
  for (const Case& cs : cases) {
    gpu::ForwardArgs forward{cs.kind, cs.params.data(), TypeInfo<S>::kType,
                             gpu::DerivativeStorage::kExact, n, x, y, d};
    const double ms = MedianMs([&] { LaunchOk(gpu::LaunchFusedForward(forward, nullptr), "forward"); });
    const double gbs = bytes / ms / 1e6;
    const bool target = IsTarget(Info(cs.kind).name, TypeInfo<S>::kName);
    const bool below = target && gbs < 0.8 * reference;
    g_below_target += below;
    std::printf("%-26s %-9s %-9s %9.3f %9.1f %7.1f%% %s\n", cs.label.c_str(), TypeInfo<S>::kName,
                "forward", ms, gbs, 100.0 * gbs / reference,
                target ? (below ? "BELOW 80% TARGET" : ">= 80% target") : "");
  }
  const double ms = MedianMs([&] { LaunchOk(gpu::LaunchFusedBackward(backward, nullptr), "backward"); });
  const double gbs = bytes / ms / 1e6;
  const bool below = (std::strcmp(TypeInfo<S>::kName, "float32") == 0 ||
                      std::strcmp(TypeInfo<S>::kName, "bfloat16") == 0) && gbs < 0.8 * reference;
  g_below_target += below;
  std::printf("%-26s %-9s %-9s %9.3f %9.1f %7.1f%% %s\n", "(any activation)", TypeInfo<S>::kName,
              "backward", ms, gbs, 100.0 * gbs / reference,
              below ? "BELOW 80% TARGET" : "");
}

// GB/s of the quantized pair for silu, gelu and mish at bits4 (buckets, FewBit
// tables) and uint8 (uniform8 over the tables' f' range): what
// derivative="bits4" / "uint8" run. The forward moves x, y and the codes, the
// backward dy, the codes and dx; "of copy" as for the exact form (no target).
template <typename S>
void StorageBenchType(const std::vector<Case>& cases, int64_t n, void* a, void* b, void* c,
                      const Bandwidth& copy) {
  static_assert(sizeof(S) <= 4, "a holds x and dx");
  S* x = static_cast<S*>(a);
  S* dx = x + n;  // a holds n doubles
  S* y = static_cast<S*>(b);
  uint8_t* code = static_cast<uint8_t*>(c);
  InitUniform<<<1024, 256>>>(x, n);
  CUDA_OK(cudaDeviceSynchronize());
  for (const Case& cs : cases) {
    const std::string name = Info(cs.kind).name;
    if (name != "silu" && name != "gelu" && name != "mish") continue;
    for (const StorageCase& sc : StorageCases(cs, std::vector<float>())) {
      if (sc.label != "bits4" && sc.label != "uint8") continue;
      const double bytes = 2.0 * n * sizeof(S) + PackedBytes(n, sc.q.bits);
      gpu::ForwardArgs forward{cs.kind, cs.params.data(), TypeInfo<S>::kType,
                               gpu::DerivativeStorage::kQuantized, n, x, y, code, &sc.q};
      gpu::BackwardArgs backward{TypeInfo<S>::kType, gpu::DerivativeStorage::kQuantized, n,
                                 y, code, dx};
      backward.quantizer = &sc.q;
      const double forward_ms = MedianMs([&] {
        LaunchOk(gpu::LaunchFusedForward(forward, nullptr), "quantized forward");
      });
      const double backward_ms = MedianMs([&] {
        LaunchOk(gpu::LaunchFusedBackward(backward, nullptr), "quantized backward");
      });
      for (const auto& [pass, ms] : {std::make_pair("fwd ", forward_ms),
                                     std::make_pair("bwd ", backward_ms)}) {
        const double gbs = bytes / ms / 1e6;
        std::printf("%-26s %-9s %-9s %9.3f %9.1f %7.1f%%\n", cs.label.c_str(), TypeInfo<S>::kName,
                    (std::string(pass) + sc.label).c_str(), ms, gbs, 100.0 * gbs / copy.Reference());
      }
    }
  }
}

void Bench(const std::vector<Case>& cases, int64_t n) {
  void *a, *b, *c;
  const size_t bytes = n * sizeof(double);
  CUDA_OK(cudaMalloc(&a, bytes));
  CUDA_OK(cudaMalloc(&b, bytes));
  CUDA_OK(cudaMalloc(&c, bytes));
  CUDA_OK(cudaMemset(a, 0, bytes));
  CUDA_OK(cudaMemset(b, 0, bytes));
  CUDA_OK(cudaMemset(c, 0, bytes));
  const Bandwidth copy = CopyBandwidth(a, b, n * sizeof(float));
  std::printf("\nBandwidth at %lld elements (GB/s = bytes read + written / time; forward moves "
              "x, y, f', backward dy, f', dx)\n", static_cast<long long>(n));
  std::printf("device copy of %lld float32: cudaMemcpy D2D %.1f GB/s, copy kernel %.1f GB/s "
              "-> reference %.1f GB/s\n", static_cast<long long>(n), copy.memcpy_gbs,
              copy.kernel_gbs, copy.Reference());
  std::printf("%-26s %-9s %-9s %9s %9s %8s\n", "activation", "dtype", "pass", "ms", "GB/s",
              "of copy");
  BenchType<float>(cases, n, a, b, c, copy);
  BenchType<__nv_bfloat16>(cases, n, a, b, c, copy);
  BenchType<__half>(cases, n, a, b, c, copy);
  BenchType<double>(cases, n, a, b, c, copy);
  std::printf("quantized storage of f' (FusedActivationQuantized fwd: x, y, codes; "
              "ActivationGradQuantized bwd: dy, codes, dx)\n");
  StorageBenchType<float>(cases, n, a, b, c, copy);
  StorageBenchType<__nv_bfloat16>(cases, n, a, b, c, copy);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
}

int Main(int argc, char** argv) {
  bool self_check = false, bench = true, require_target = false;
  int64_t bench_elements = int64_t{256} << 20;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "gpu_check: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--self-check") self_check = true;
    else if (arg == "--no-bench") bench = false;
    else if (arg == "--require-target") require_target = true;
    else if (arg == "--bench-elements") bench_elements = std::atoll(value().c_str());
    else if (arg == "--only") only = value();
    else if (arg == "--tolerances") {
      if (!ParseTolerances(value())) return 2;
    } else {
      std::fprintf(stderr, "gpu_check: unknown argument %s (see the top of gpu_check.cu)\n",
                   arg.c_str());
      return 2;
    }
  }
  std::vector<Case> cases;
  if (!BuildCases(only, &cases)) {
    std::fprintf(stderr, "gpu_check: no activation to check\n");
    return 2;
  }
  std::printf("tolerances:");
  for (const auto& [name, tol] : g_tolerances) std::printf(" %s rtol=%g atol=%g", name.c_str(), tol.rtol, tol.atol);
  std::printf("\n");
  if (self_check) return SelfCheck(cases);

  int device = 0, driver = 0, runtime = 0;
  CUDA_OK(cudaGetDevice(&device));
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, device));
  CUDA_OK(cudaDriverGetVersion(&driver));
  CUDA_OK(cudaRuntimeGetVersion(&runtime));
  std::printf("device %d: %s, sm_%d%d, %d SMs, %.1f GiB; driver %d, runtime %d\n", device,
              prop.name, prop.major, prop.minor, prop.multiProcessorCount,
              prop.totalGlobalMem / 1073741824.0, driver, runtime);

  PrintAccuracyHeader("GPU vs CPU implementation (same headers), aligned + unaligned + in-place");
  ForEachType([&](auto s) { AccuracyType<decltype(s)>(cases); });
  PrintAccuracyHeader("storage forms: GPU vs CPU implementation (same headers), aligned + "
                      "unaligned + in-place");
  std::printf("(y only / dx from y: ActivationForward / ActivationGradFromOutput; code <q>: "
              "FusedActivationQuantized codes, equal byte for byte up to counted one-step "
              "differences; quantized y / dx: over every quantizer, dx from the CPU's codes)\n");
  ForEachType([&](auto s) { StorageAccuracyType<decltype(s)>(cases); });
  std::printf("\naccuracy: %s (%d failing rows)\n", g_failures ? "FAIL" : "PASS", g_failures);
  if (bench) Bench(cases, bench_elements);
  if (bench) {
    std::printf("\nbandwidth target (>= 80%% of copy for silu/gelu/mish float32/bfloat16, both "
                "passes): %s\n", g_below_target ? "MISSED" : "met");
  }
  return g_failures || (require_target && g_below_target) ? 1 : 0;
}

}  // namespace check
}  // namespace nestad

int main(int argc, char** argv) { return nestad::check::Main(argc, argv); }
