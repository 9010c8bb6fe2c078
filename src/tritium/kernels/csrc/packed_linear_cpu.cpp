// CPU kernel of tritium::packed_linear.
//
//   y[m, n] = Σ_g scale[n,g]·(x_g · d[n,g] − zero[n,g]·Σx_g) + shift[n,g]·Σx_g
//
// where d are the base-`radix` digits stored k to a byte, group by group (tritium.pack).
//
// Few rows (decode, batch 1): a lookup table. Each byte covers k activations and can
// take only radix^k values (243 for 5 trits), so for every byte position c we first
// tabulate T[b][c] = Σ_i digit_i(b)·x[k·c + i] for all b — radix^k·in/k additions,
// vectorised across c — and then each output row costs one table load and one add per
// byte (in/5 for ternary) instead of in multiply-adds. The activations stay in float,
// so the result equals the float reference up to summation order.
// Many rows (prefill): decode the weight once to float and hand the GEMM to ATen.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace tritium_cpu {

constexpr int64_t kLookupMaxRows = 4;  // above this, decode + GEMM is faster than one table per row

struct Digits {
  int64_t radix, k, values;  // k digits per byte, radix^k byte values in use
};

Digits digits_for(int64_t radix) {
  TORCH_CHECK(radix >= 2 && radix <= 256, "packed_linear: radix must be in 2..256, got ", radix);
  int64_t k = 1, values = radix;
  while (values * radix <= 256) {
    values *= radix;
    ++k;
  }
  return {radix, k, values};
}

struct Problem {
  int64_t rows, out, in, groups, bytes_per_group, group_size;
  Digits dg;
  float implicit_zero;
  const uint8_t* packed;
  const float* scale;
  const float* zero;   // may be null: implicit_zero
  const float* shift;  // may be null
};

inline int64_t group_length(const Problem& p, int64_t g) {
  return std::min(p.group_size, p.in - g * p.group_size);
}

// y[n] for one activation row x, with the table in `table` ([values][chunks]).
void lookup_row(const Problem& p, const float* x, float* y, std::vector<float>& table, std::vector<float>& xs) {
  const int64_t chunks = p.groups * p.bytes_per_group, k = p.dg.k, radix = p.dg.radix;
  // Deinterleave: xs[i][c] is the activation under digit i of byte c (0 under padding).
  xs.assign(k * chunks, 0.f);
  std::vector<float> group_sum(p.groups, 0.f);
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t len = group_length(p, g), base = g * p.group_size;
    float s = 0.f;
    for (int64_t j = 0; j < len; ++j) {
      const float v = x[base + j];
      xs[(j % k) * chunks + g * p.bytes_per_group + j / k] = v;
      s += v;
    }
    group_sum[g] = s;
  }
  table.resize(p.dg.values * chunks);
  float* T = table.data();
  at::parallel_for(0, chunks, 256, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) T[c] = 0.f;
    int64_t span = 1;
    for (int64_t i = 0; i < k; ++i) {
      const float* xi = xs.data() + i * chunks;
      for (int64_t d = 1; d < radix; ++d) {
        const float fd = static_cast<float>(d);
        for (int64_t j = 0; j < span; ++j) {
          float* dst = T + (j + d * span) * chunks;
          const float* src = T + j * chunks;
#pragma omp simd
          for (int64_t c = c0; c < c1; ++c) dst[c] = src[c] + fd * xi[c];
        }
      }
      span *= radix;
    }
  });
  const int64_t bpg = p.bytes_per_group;
  at::parallel_for(0, p.out, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float acc_row = 0.f;
      for (int64_t g = 0; g < p.groups; ++g) {
        const uint8_t* b = p.packed + (n * p.groups + g) * bpg;
        const float* Tg = T + g * bpg;
        // Four partial sums break the add latency chain.
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
        int64_t j = 0;
        for (; j + 4 <= bpg; j += 4) {
          a0 += Tg[b[j] * chunks + j];
          a1 += Tg[b[j + 1] * chunks + j + 1];
          a2 += Tg[b[j + 2] * chunks + j + 2];
          a3 += Tg[b[j + 3] * chunks + j + 3];
        }
        for (; j < bpg; ++j) a0 += Tg[b[j] * chunks + j];
        const int64_t q = n * p.groups + g;
        const float dot = (a0 + a1) + (a2 + a3);
        const float z = p.zero ? p.zero[q] : p.implicit_zero;
        acc_row += p.scale[q] * (dot - z * group_sum[g]);
        if (p.shift) acc_row += p.shift[q] * group_sum[g];
      }
      y[n] = acc_row;
    }
  });
}

// The float weight [out, in]: w = scale·(digit − zero) + shift.
at::Tensor dequantize(const Problem& p) {
  at::Tensor w = at::empty({p.out, p.in}, at::kFloat);
  float* W = w.data_ptr<float>();
  const int64_t k = p.dg.k, radix = p.dg.radix;
  std::vector<float> digit(256 * k);
  for (int64_t b = 0; b < 256; ++b) {
    int64_t v = b;
    for (int64_t i = 0; i < k; ++i, v /= radix) digit[b * k + i] = static_cast<float>(v % radix);
  }
  at::parallel_for(0, p.out, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> buf(p.bytes_per_group * k);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t g = 0; g < p.groups; ++g) {
        const int64_t q = n * p.groups + g, len = group_length(p, g);
        const uint8_t* b = p.packed + q * p.bytes_per_group;
        for (int64_t j = 0; j < p.bytes_per_group; ++j)
          for (int64_t i = 0; i < k; ++i) buf[j * k + i] = digit[b[j] * k + i];
        const float s = p.scale[q], z = p.zero ? p.zero[q] : p.implicit_zero, t = p.shift ? p.shift[q] : 0.f;
        float* dst = W + n * p.in + g * p.group_size;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) dst[j] = s * (buf[j] - z) + t;
      }
    }
  });
  return w;
}

at::Tensor packed_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                             const c10::optional<at::Tensor>& zero, const c10::optional<at::Tensor>& shift,
                             int64_t radix, int64_t in_features, int64_t group_size, double implicit_zero) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3,
              "packed_linear: packed codes must be uint8 [out, groups, bytes_per_group], got ", packed.scalar_type(),
              " ", packed.sizes());
  TORCH_CHECK(x.size(-1) == in_features, "packed_linear: input has ", x.size(-1), " features, the layer expects ",
              in_features);
  TORCH_CHECK(group_size > 0 && in_features > 0, "packed_linear: in_features and group_size must be positive");
  const Digits dg = digits_for(radix);
  const int64_t out = packed.size(0), groups = packed.size(1), bpg = packed.size(2);
  TORCH_CHECK(groups == (in_features + group_size - 1) / group_size && bpg == (group_size + dg.k - 1) / dg.k,
              "packed_linear: packed codes ", packed.sizes(), " do not match in_features=", in_features,
              ", group_size=", group_size, ", radix=", radix);
  auto as_params = [&](const at::Tensor& t, const char* what) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == out && t.size(1) == groups, "packed_linear: ", what, " has shape ",
                t.sizes(), ", expected [", out, ", ", groups, "]");
    return t.to(at::kFloat).contiguous();
  };
  const at::Tensor s = as_params(scale, "scale");
  const at::Tensor z = zero.has_value() ? as_params(*zero, "zero") : at::Tensor();
  const at::Tensor t = shift.has_value() ? as_params(*shift, "shift") : at::Tensor();
  const at::Tensor pk = packed.contiguous();
  const at::Tensor xf = x.reshape({-1, in_features}).to(at::kFloat).contiguous();
  const int64_t rows = xf.size(0);
  Problem p{rows, out, in_features, groups, bpg, group_size, dg, static_cast<float>(implicit_zero),
            pk.data_ptr<uint8_t>(), s.data_ptr<float>(), z.defined() ? z.data_ptr<float>() : nullptr,
            t.defined() ? t.data_ptr<float>() : nullptr};
  at::Tensor y;
  if (rows <= kLookupMaxRows) {
    y = at::empty({rows, out}, at::kFloat);
    std::vector<float> table, xs;
    for (int64_t m = 0; m < rows; ++m)
      lookup_row(p, xf.data_ptr<float>() + m * in_features, y.data_ptr<float>() + m * out, table, xs);
  } else {
    y = at::matmul(xf, dequantize(p).t());
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return y.reshape(shape).to(x.scalar_type());
}

}  // namespace tritium_cpu

TORCH_LIBRARY_IMPL(tritium, CPU, m) { m.impl("packed_linear", &tritium_cpu::packed_linear_cpu); }
