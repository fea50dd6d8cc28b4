// Fused batch normalization + activation, free of TensorFlow (the TF ops in
// batch_norm_activation_ops.cc and the XLA FFI handlers run these loops).
//
// z is viewed as [outer, channels, inner] (the normalized axis in the middle);
// per channel c, with mean/variance the batch statistics (training) or the
// moving ones (inference):
//   scale = gamma * rsqrt(variance + epsilon),  shift = beta - mean * scale
//   x = z * scale + shift                        (tf.nn.batch_normalization's formula)
//   y = f(x)                                     (f from kernels/activations/)
// The backward pass keeps only z and the per-channel statistics: it recomputes
// x and f'(x) from them (the same functor, no second f'), with
//   g = dy * f'(x),  x_hat = (z - mean) * rsqrt(variance + epsilon)
//   dbeta = sum g,   dgamma = sum g * x_hat      (sums over outer and inner)
//   dz = scale * (g - dbeta / M - x_hat * dgamma / M)   (training: batch statistics)
//   dz = scale * g                                      (inference: fixed statistics)
// Sums accumulate in double over a partition of the rows fixed by the shape
// alone, so results do not depend on the number of threads.
#ifndef NESTAD_KERNELS_BATCH_NORM_ACTIVATION_H_
#define NESTAD_KERNELS_BATCH_NORM_ACTIVATION_H_

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu_loops.h"
#include "fused_activation.h"

namespace nestad {

struct NormLayout {
  int64_t outer = 1, channels = 1, inner = 1;

  int64_t per_channel() const { return outer * inner; }  // M, the elements of one channel
  bool channels_last() const { return inner == 1; }
};

// "" and *layout for z of dimensions dims[0 .. rank) normalized along `axis` (negative:
// from the end), else what is wrong. `shape` is z's shape as printed in errors.
inline std::string MakeNormLayout(const int64_t* dims, int rank, int axis,
                                  const std::string& shape, NormLayout* layout) {
  if (rank < 1 || axis < -rank || axis >= rank) {
    return "axis " + std::to_string(axis) + " is out of range for z of shape " + shape;
  }
  const int a = axis < 0 ? axis + rank : axis;
  layout->outer = 1;
  layout->inner = 1;
  for (int i = 0; i < a; ++i) layout->outer *= dims[i];
  for (int i = a + 1; i < rank; ++i) layout->inner *= dims[i];
  layout->channels = dims[a];
  return "";
}

// The per-channel inputs, in the ops' order.
constexpr const char* kChannelInputNames[] = {"gamma", "beta", "mean", "variance"};

// "" if a per-channel input (rank `rank`, `size` elements) fits the layout, else what is wrong.
inline std::string CheckChannelInput(const char* name, int rank, int64_t size, int axis,
                                     const NormLayout& layout, const std::string& shape) {
  if (rank == 1 && size == layout.channels) return "";
  return std::string(name) + " must be a vector of z's size along axis " + std::to_string(axis) +
         " (" + std::to_string(layout.channels) + "), got shape " + shape;
}

// Per-channel affine transform of the normalization, in the compute type C.
template <typename C, typename U>
NESTAD_HD void ChannelAffine(U gamma, U beta, U mean, U variance, float epsilon, C& scale,
                             C& shift, C& inv_std) {
  inv_std = C(1) / Sqrt(static_cast<C>(variance) + static_cast<C>(epsilon));
  scale = inv_std * static_cast<C>(gamma);
  shift = static_cast<C>(beta) - static_cast<C>(mean) * scale;
}

// g = dy * f'(x) for x = z * scale + shift; NaN x gives NaN.
template <typename Functor, typename C>
NESTAD_HD C ActivationGradAt(const Functor& f, C z, C scale, C shift, C dy) {
  const C x = z * scale + shift;
  C y, d;
  f(x, y, d);
  return dy * (x != x ? x : d);
}

// ---- rows: `n` elements of one channel (kPerElement false) or one element of
// each of `n` channels (kPerElement true: channels-last, per-channel arrays) ----

template <bool kPerElement>
NESTAD_HD int64_t ChannelOf(int64_t j) { return kPerElement ? j : 0; }

template <bool kPerElement, typename Functor, typename S, typename C>
NESTAD_CPU_CLONES void NormForwardRow(const Functor f, const S* z, S* y, const C* scale,
                                      const C* shift, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const int64_t c = ChannelOf<kPerElement>(j);
    const C x = static_cast<C>(z[j]) * scale[c] + shift[c];
    C yc, dc;
    f(x, yc, dc);
    y[j] = static_cast<S>(x != x ? x : yc);
  }
}

template <bool kPerElement, typename Functor, typename S, typename C>
NESTAD_CPU_CLONES void NormBackwardRow(const Functor f, const S* dy, const S* z, S* dz,
                                       const C* scale, const C* shift, const C* mean,
                                       const C* inv_std, const C* mean_g, const C* mean_gx,
                                       int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const int64_t c = ChannelOf<kPerElement>(j);
    const C zc = static_cast<C>(z[j]);
    const C g = ActivationGradAt(f, zc, scale[c], shift[c], static_cast<C>(dy[j]));
    const C x_hat = (zc - mean[c]) * inv_std[c];
    dz[j] = static_cast<S>(scale[c] * (g - mean_g[c] - x_hat * mean_gx[c]));
  }
}

// Channels-last sums: sum[j] += z[j], sum_sq[j] += z[j]^2 over one row of n channels.
template <typename S>
NESTAD_CPU_CLONES void StatsRowPerChannel(const S* z, double* sum, double* sum_sq, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const double v = static_cast<double>(z[j]);
    sum[j] += v;
    sum_sq[j] += v * v;
  }
}

template <typename Functor, typename S, typename C>
NESTAD_CPU_CLONES void GradSumsRowPerChannel(const Functor f, const S* dy, const S* z,
                                             const C* scale, const C* shift, const C* mean,
                                             const C* inv_std, double* sum_g, double* sum_gx,
                                             int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const C zc = static_cast<C>(z[j]);
    const C g = ActivationGradAt(f, zc, scale[j], shift[j], static_cast<C>(dy[j]));
    const C x_hat = (zc - mean[j]) * inv_std[j];
    sum_g[j] += static_cast<double>(g);
    sum_gx[j] += static_cast<double>(g * x_hat);
  }
}

// One channel's sums over a row of n of its elements, in kLanes partial sums
// (the loop then vectorizes without reassociating a single running sum).
constexpr int kLanes = 8;

template <typename S>
NESTAD_CPU_CLONES void StatsRowOneChannel(const S* z, double* sum, double* sum_sq, int64_t n) {
  double s[kLanes] = {}, q[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double v = static_cast<double>(z[j + l]);
      s[l] += v;
      q[l] += v * v;
    }
  }
  for (; j < n; ++j) {
    const double v = static_cast<double>(z[j]);
    s[0] += v;
    q[0] += v * v;
  }
  for (int l = 0; l < kLanes; ++l) {
    *sum += s[l];
    *sum_sq += q[l];
  }
}

template <typename Functor, typename S, typename C>
NESTAD_CPU_CLONES void GradSumsRowOneChannel(const Functor f, const S* dy, const S* z, C scale,
                                             C shift, C mean, C inv_std, double* sum_g,
                                             double* sum_gx, int64_t n) {
  double s[kLanes] = {}, q[kLanes] = {};
  auto add = [&](int l, int64_t j) {
    const C zc = static_cast<C>(z[j]);
    const C g = ActivationGradAt(f, zc, scale, shift, static_cast<C>(dy[j]));
    s[l] += static_cast<double>(g);
    q[l] += static_cast<double>(g * ((zc - mean) * inv_std));
  };
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) add(l, j + l);
  }
  for (; j < n; ++j) add(0, j);
  for (int l = 0; l < kLanes; ++l) {
    *sum_g += s[l];
    *sum_gx += q[l];
  }
}

// ---- per-channel reductions over [outer, channels, inner] ----

// Calls row_sums(row, a, b) for every row, accumulating into per-channel a[c], b[c]
// (zeroed here). Channels-last rows are split into chunks whose number depends only
// on the shape; each chunk sums into its own buffer, and chunks are added in order.
template <typename ParallelFor, typename RowSums>
void ChannelSums(const ParallelFor& pf, const NormLayout& l, int64_t cost_per_element,
                 RowSums row_sums, double* a, double* b) {
  const int64_t channels = l.channels;
  std::fill(a, a + channels, 0.0);
  std::fill(b, b + channels, 0.0);
  if (l.per_channel() == 0 || channels == 0) return;
  if (l.channels_last()) {
    const int64_t rows = l.outer;
    const int64_t chunks = std::max<int64_t>(
        1, std::min<int64_t>({rows, 64, rows * channels / (16 * kBlock)}));
    std::vector<double> partial(static_cast<size_t>(2 * chunks * channels), 0.0);
    pf(chunks, (rows / chunks + 1) * channels * cost_per_element,
       [&](int64_t first, int64_t last) {
         for (int64_t k = first; k < last; ++k) {
           double* pa = partial.data() + 2 * k * channels;
           double* pb = pa + channels;
           for (int64_t row = k * rows / chunks; row < (k + 1) * rows / chunks; ++row) {
             row_sums(row, pa, pb);
           }
         }
       });
    for (int64_t k = 0; k < chunks; ++k) {
      const double* pa = partial.data() + 2 * k * channels;
      const double* pb = pa + channels;
      for (int64_t c = 0; c < channels; ++c) {
        a[c] += pa[c];
        b[c] += pb[c];
      }
    }
    return;
  }
  pf(channels, l.per_channel() * cost_per_element, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      for (int64_t o = 0; o < l.outer; ++o) row_sums(o * channels + c, a + c, b + c);
    }
  });
}

// Calls row_fn(row) for every row of the layout (channels-last: `outer` rows of
// all channels; else `outer * channels` rows of one channel each).
template <typename ParallelFor, typename RowFn>
void ForRows(const ParallelFor& pf, const NormLayout& l, int64_t cost_per_element, RowFn row_fn) {
  const int64_t rows = l.channels_last() ? l.outer : l.outer * l.channels;
  const int64_t row_length = l.channels_last() ? l.channels : l.inner;
  if (rows == 0 || row_length == 0) return;
  pf(rows, row_length * cost_per_element, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) row_fn(row);
  });
}

// ---- the two ops ----

// Per-channel scale, shift, mean and inv_std in the compute type C.
template <typename C>
struct ChannelTerms {
  std::vector<C> scale, shift, mean, inv_std;

  template <typename U>
  ChannelTerms(int64_t channels, const U* gamma, const U* beta, const U* mean_in,
               const U* variance, float epsilon)
      : scale(channels), shift(channels), mean(channels), inv_std(channels) {
    for (int64_t c = 0; c < channels; ++c) {
      ChannelAffine(gamma[c], beta[c], mean_in[c], variance[c], epsilon, scale[c], shift[c],
                    inv_std[c]);
      mean[c] = static_cast<C>(mean_in[c]);
    }
  }
};

// BatchNormActivation. training: batch_mean / batch_variance (biased, like
// tf.nn.moments) are computed from z, then used; else mean / variance are used
// and copied to them. U is the statistics type (float, or double for double z).
template <typename S, typename U, typename ParallelFor>
void RunBatchNormActivation(const ParallelFor& pf, Kind kind, const float* params,
                            const NormLayout& l, float epsilon, bool training, const S* z,
                            const U* gamma, const U* beta, const U* mean, const U* variance,
                            S* y, U* batch_mean, U* batch_variance) {
  using C = typename ComputeType<S>::type;
  const int64_t channels = l.channels;
  if (training) {
    std::vector<double> sum(channels), sum_sq(channels);
    ChannelSums(pf, l, 2, [&](int64_t row, double* a, double* b) {
      if (l.channels_last()) {
        StatsRowPerChannel(z + row * channels, a, b, channels);
      } else {
        StatsRowOneChannel(z + row * l.inner, a, b, l.inner);
      }
    }, sum.data(), sum_sq.data());
    const double count = static_cast<double>(l.per_channel());
    for (int64_t c = 0; c < channels; ++c) {
      const double m = sum[c] / count;
      batch_mean[c] = static_cast<U>(m);
      batch_variance[c] = static_cast<U>(std::max(0.0, sum_sq[c] / count - m * m));
    }
  } else {
    std::copy(mean, mean + channels, batch_mean);
    std::copy(variance, variance + channels, batch_variance);
  }
  const ChannelTerms<C> t(channels, gamma, beta, batch_mean, batch_variance, epsilon);
  ForRows(pf, l, 30, [&](int64_t row) {
    VisitActivation(kind, params, [&](auto f) {
      if (l.channels_last()) {
        const int64_t offset = row * channels;
        NormForwardRow<true>(f, z + offset, y + offset, t.scale.data(), t.shift.data(), channels);
      } else {
        const int64_t c = row % channels, offset = row * l.inner;
        NormForwardRow<false>(f, z + offset, y + offset, t.scale.data() + c, t.shift.data() + c,
                              l.inner);
      }
      return 0;
    });
  });
}

// BatchNormActivationGrad: (dz, dgamma, dbeta) from dy, z and the statistics the
// forward pass used (its batch_mean / batch_variance outputs when training).
template <typename S, typename U, typename ParallelFor>
void RunBatchNormActivationGrad(const ParallelFor& pf, Kind kind, const float* params,
                                const NormLayout& l, float epsilon, bool training, const S* dy,
                                const S* z, const U* gamma, const U* beta, const U* mean,
                                const U* variance, S* dz, U* dgamma, U* dbeta) {
  using C = typename ComputeType<S>::type;
  const int64_t channels = l.channels;
  const ChannelTerms<C> t(channels, gamma, beta, mean, variance, epsilon);
  std::vector<double> sum_g(channels), sum_gx(channels);
  ChannelSums(pf, l, 35, [&](int64_t row, double* a, double* b) {
    VisitActivation(kind, params, [&](auto f) {
      if (l.channels_last()) {
        const int64_t offset = row * channels;
        GradSumsRowPerChannel(f, dy + offset, z + offset, t.scale.data(), t.shift.data(),
                              t.mean.data(), t.inv_std.data(), a, b, channels);
      } else {
        const int64_t c = row % channels, offset = row * l.inner;
        GradSumsRowOneChannel(f, dy + offset, z + offset, t.scale[c], t.shift[c], t.mean[c],
                              t.inv_std[c], a, b, l.inner);
      }
      return 0;
    });
  }, sum_g.data(), sum_gx.data());
  std::vector<C> mean_g(channels, C(0)), mean_gx(channels, C(0));
  const double count = static_cast<double>(l.per_channel());
  for (int64_t c = 0; c < channels; ++c) {
    dbeta[c] = static_cast<U>(sum_g[c]);
    dgamma[c] = static_cast<U>(sum_gx[c]);
    if (training) {
      mean_g[c] = static_cast<C>(sum_g[c] / count);
      mean_gx[c] = static_cast<C>(sum_gx[c] / count);
    }
  }
  ForRows(pf, l, 35, [&](int64_t row) {
    VisitActivation(kind, params, [&](auto f) {
      if (l.channels_last()) {
        const int64_t offset = row * channels;
        NormBackwardRow<true>(f, dy + offset, z + offset, dz + offset, t.scale.data(),
                              t.shift.data(), t.mean.data(), t.inv_std.data(), mean_g.data(),
                              mean_gx.data(), channels);
      } else {
        const int64_t c = row % channels, offset = row * l.inner;
        NormBackwardRow<false>(f, dy + offset, z + offset, dz + offset, t.scale.data() + c,
                               t.shift.data() + c, t.mean.data() + c, t.inv_std.data() + c,
                               mean_g.data() + c, mean_gx.data() + c, l.inner);
      }
      return 0;
    });
  });
}

}  // namespace nestad

#endif  // NESTAD_KERNELS_BATCH_NORM_ACTIVATION_H_
