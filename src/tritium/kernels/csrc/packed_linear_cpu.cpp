// CPU kernel of tritium::packed_linear.
//
//   y[m, n] = Σ_g scale[n,g]·(x_g · d[n,g] − zero[n,g]·Σx_g) + shift[n,g]·Σx_g
//
// where d are the base-`radix` digits stored k to a byte, group by group (tritium.pack).
//
// Few rows (decode, batch 1): a lookup table. Each byte covers k activations and can
// take only radix^k values (243 for 5 trits), so for every byte position c we first
// tabulate T[c][b] = Σ_i digit_i(b)·x[k·c + i] for all b — radix^k·in/k additions —
// and then each output row costs one table load and one add per byte (in/5 for
// ternary) instead of in multiply-adds. Building the table is vectorised (AVX2/AVX-512
// by -march=native); rows are split over OpenMP threads. The activations stay in float,
// so the result equals the float reference up to summation order.
// Many rows (prefill): decode the weight once to float and hand the GEMM to ATen.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <limits>
#include <vector>

namespace tritium_cpu {

constexpr int64_t kLookupMaxRows = 4;  // above this, decode + GEMM is faster than one lookup table per row
constexpr int64_t kPlanesMaxRows = 32;  // the bit-plane path stays ahead of decode + GEMM up to about here

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

// Per-group parameters read in their stored dtype (fp16, bf16 or fp32), so no converted copy is made per call.
struct GroupParam {
  const void* data = nullptr;
  at::ScalarType type = at::kFloat;
  explicit operator bool() const { return data != nullptr; }
  float operator[](int64_t q) const {
    switch (type) {
      case at::kHalf: return static_cast<float>(static_cast<const at::Half*>(data)[q]);
      case at::kBFloat16: return static_cast<float>(static_cast<const at::BFloat16*>(data)[q]);
      default: return static_cast<const float*>(data)[q];
    }
  }
};

struct Problem {
  int64_t rows, out, in, groups, bytes_per_group, group_size;
  Digits dg;
  float implicit_zero;
  const uint8_t* packed;
  GroupParam scale;
  GroupParam zero;   // may be empty: implicit_zero
  GroupParam shift;  // may be empty: no shift
};

inline int64_t group_length(const Problem& p, int64_t g) {
  return std::min(p.group_size, p.in - g * p.group_size);
}

constexpr int64_t kTableStride = 256;  // floats per byte position: every byte value has a slot
constexpr int64_t kTileBytes = 32;     // byte positions per L1-resident table tile (32 KB)

// Sum of table[j * 256 + bytes[j]] over j < n: one load per byte of weights. (AVX-512
// gathers measured slower than these scalar loads here; the table tile is in L1.)
inline float gather_sum(const float* table, const uint8_t* bytes, int64_t n) {
  int64_t j = 0;
  // Four partial sums break the add latency chain.
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
  for (; j + 4 <= n; j += 4) {
    a0 += table[j * kTableStride + bytes[j]];
    a1 += table[(j + 1) * kTableStride + bytes[j + 1]];
    a2 += table[(j + 2) * kTableStride + bytes[j + 2]];
    a3 += table[(j + 3) * kTableStride + bytes[j + 3]];
  }
  for (; j < n; ++j) a0 += table[j * kTableStride + bytes[j]];
  return (a0 + a1) + (a2 + a3);
}

// y[n] for one activation row x. The table is [byte position][256]; scratch buffers persist per thread.
void lookup_row(const Problem& p, const float* x, float* y) {
  const int64_t chunks = p.groups * p.bytes_per_group, k = p.dg.k, radix = p.dg.radix;
  thread_local std::vector<float> table, xs, group_sum;
  // xs[c][i] is the activation under digit i of byte c (0 under padding).
  xs.assign(chunks * k, 0.f);
  group_sum.assign(p.groups, 0.f);
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t len = group_length(p, g), base = g * p.group_size;
    float s = 0.f;
    float* dst = xs.data() + g * p.bytes_per_group * k;
    for (int64_t j = 0; j < len; ++j) {
      dst[j] = x[base + j];
      s += x[base + j];
    }
    group_sum[g] = s;
  }
  if (static_cast<int64_t>(table.size()) < chunks * kTableStride) table.resize(chunks * kTableStride);
  // Lambdas below run on other threads: they must see this thread's buffers through pointers,
  // since a thread_local named inside them would resolve to the worker's own (empty) copy.
  float* T = table.data();
  const float* X = xs.data();
  const float* sums = group_sum.data();
  at::parallel_for(0, chunks, 128, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float* t = T + c * kTableStride;
      t[0] = 0.f;
      int64_t span = 1;
      for (int64_t i = 0; i < k; ++i) {
        const float xi = X[c * k + i];
        for (int64_t d = 1; d < radix; ++d) {
          const float v = static_cast<float>(d) * xi;
          float* dst = t + d * span;
#pragma omp simd
          for (int64_t j = 0; j < span; ++j) dst[j] = t[j] + v;
        }
        span *= radix;
      }
      // Bytes past radix^k are no valid code (a corrupt buffer): make them poison the result
      // with NaN instead of reading a stale slot that looks like a number.
      for (int64_t b = span; b < kTableStride; ++b) t[b] = std::numeric_limits<float>::quiet_NaN();
    }
  });
  // Rows split across threads; within a thread, byte positions go in tiles whose table
  // slice (kTileBytes KB) stays in L1 while every row of the thread reads it.
  const int64_t bpg = p.bytes_per_group;
  at::parallel_for(0, p.out, std::max<int64_t>(16, (int64_t{1} << 18) / p.in), [&](int64_t n0, int64_t n1) {
    thread_local std::vector<float> dots, acc;
    dots.assign(n1 - n0, 0.f);
    acc.assign(n1 - n0, 0.f);
    for (int64_t g = 0; g < p.groups; ++g) {
      std::fill(dots.begin(), dots.end(), 0.f);
      for (int64_t b0 = 0; b0 < bpg; b0 += kTileBytes) {
        const int64_t nb = std::min(kTileBytes, bpg - b0);
        const float* Tt = T + (g * bpg + b0) * kTableStride;
        for (int64_t n = n0; n < n1; ++n)
          dots[n - n0] += gather_sum(Tt, p.packed + (n * p.groups + g) * bpg + b0, nb);
      }
      const float gsum = sums[g];
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t q = n * p.groups + g;
        const float z = p.zero ? p.zero[q] : p.implicit_zero;
        acc[n - n0] += p.scale[q] * (dots[n - n0] - z * gsum) + (p.shift ? p.shift[q] * gsum : 0.f);
      }
    }
    for (int64_t n = n0; n < n1; ++n) y[n] = acc[n - n0];
  });
}

#if defined(__AVX512F__)
// ---------------------------------------------------------------------------------- bit planes
// The fast path where AVX-512 exists. The weights come re-laid out (tritium.kernels.cpu.bit_planes)
// as B bit planes, digit = Σ_b 2^b·bit_b, with 16 output rows interleaved:
//   planes[row_block][g][b][q][16]: bit i of byte (q, lane r) is bit b of the digit of
//   weight 8q + i of group g, row 16·row_block + r.
// For every 4 activations a 16-float table holds all 16 subset sums, so one vpermps looks up
// 4 weights × 16 rows at once; the table and the sums stay in float.
constexpr int64_t kRowsPerBlock = 16;

template <int B>
void planes_row(const Problem& p, const uint8_t* planes, int64_t bytes_per_plane, const float* x, float* y) {
  const int64_t groups = p.groups, nq = bytes_per_plane;
  thread_local std::vector<float> table_buf, sums_buf;
  if (static_cast<int64_t>(table_buf.size()) < groups * nq * 32) table_buf.resize(groups * nq * 32);
  if (static_cast<int64_t>(sums_buf.size()) < groups) sums_buf.resize(groups);
  __m512 bit_pattern[4];
  for (int i = 0; i < 4; ++i) {
    alignas(64) float lanes[16];
    for (int b = 0; b < 16; ++b) lanes[b] = static_cast<float>((b >> i) & 1);
    bit_pattern[i] = _mm512_load_ps(lanes);
  }
  float* T = table_buf.data();
  float* sums = sums_buf.data();
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t len = group_length(p, g), base = g * p.group_size;
    float s = 0.f;
    for (int64_t j = 0; j < len; ++j) s += x[base + j];
    sums[g] = s;
    // Table of half-byte h: lane b holds Σ_i bit_i(b)·x_i over its 4 activations, built as 4 FMAs
    // against the constant bit patterns of the lane numbers.
    for (int64_t h = 0; h < nq * 2; ++h) {
      __m512 t = _mm512_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        const int64_t j = 4 * h + i;
        if (j < len) t = _mm512_fmadd_ps(_mm512_set1_ps(x[base + j]), bit_pattern[i], t);
      }
      _mm512_storeu_ps(T + (g * nq * 2 + h) * 16, t);
    }
  }
  const int64_t blocks = (p.out + kRowsPerBlock - 1) / kRowsPerBlock;
  // A thread only pays off with enough work to hide the fork/join (a few µs): ~256K weights each.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / (kRowsPerBlock * p.in));
  at::parallel_for(0, blocks, grain, [&](int64_t k0, int64_t k1) {
    for (int64_t blk = k0; blk < k1; ++blk) {
      const int64_t row0 = blk * kRowsPerBlock, nrows = std::min(kRowsPerBlock, p.out - row0);
      __m512 out_acc = _mm512_setzero_ps();
      // In a decode step each matrix is read once, from memory: ask for the next block's codes (into L2)
      // while this one computes, or the loads stall the lookups (~20% of a SmolLM2 decode step's matmul time).
      if (blk + 1 < k1) {
        const char* next = reinterpret_cast<const char*>(planes + ((blk + 1) * groups * B) * nq * 16);
        const int64_t bytes = groups * B * nq * 16;
        for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(next + off, _MM_HINT_T1);
      }
      for (int64_t g = 0; g < groups; ++g) {
        __m512 lo[B], hi[B];
        for (int b = 0; b < B; ++b) lo[b] = hi[b] = _mm512_setzero_ps();
        const uint8_t* w = planes + ((blk * groups + g) * B) * nq * 16;
        const float* tg = T + g * nq * 32;
        for (int64_t q = 0; q < nq; ++q) {
          const __m512 t_lo = _mm512_loadu_ps(tg + q * 32), t_hi = _mm512_loadu_ps(tg + q * 32 + 16);
          for (int b = 0; b < B; ++b) {
            const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + (b * nq + q) * 16)));
            lo[b] = _mm512_add_ps(lo[b], _mm512_permutexvar_ps(idx, t_lo));  // vpermps reads index bits 0-3
            hi[b] = _mm512_add_ps(hi[b], _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), t_hi));
          }
        }
        __m512 dot = _mm512_add_ps(lo[0], hi[0]);
        for (int b = 1; b < B; ++b) dot = _mm512_fmadd_ps(_mm512_set1_ps(static_cast<float>(1 << b)), _mm512_add_ps(lo[b], hi[b]), dot);
        alignas(64) float sc[16] = {0}, zr[16] = {0}, sh[16] = {0};
        for (int64_t r = 0; r < nrows; ++r) {
          const int64_t q = (row0 + r) * groups + g;
          sc[r] = p.scale[q];
          zr[r] = p.zero ? p.zero[q] : p.implicit_zero;
          sh[r] = p.shift ? p.shift[q] : 0.f;
        }
        const __m512 gsum = _mm512_set1_ps(sums[g]);
        // scale·(dot − zero·Σx) + shift·Σx
        out_acc = _mm512_fmadd_ps(_mm512_load_ps(sc), _mm512_fnmadd_ps(_mm512_load_ps(zr), gsum, dot), out_acc);
        out_acc = _mm512_fmadd_ps(_mm512_load_ps(sh), gsum, out_acc);
      }
      alignas(64) float res[16];
      _mm512_store_ps(res, out_acc);
      for (int64_t r = 0; r < nrows; ++r) y[row0 + r] = res[r];
    }
  });
}

bool planes_available() { return true; }
#else
bool planes_available() { return false; }
#endif

// The float weight [out, in]: w = scale·(digit − zero) + shift.
at::Tensor dequantize(const Problem& p) {
  at::Tensor w = at::empty({p.out, p.in}, at::kFloat);
  float* W = w.data_ptr<float>();
  const int64_t k = p.dg.k, radix = p.dg.radix;
  std::vector<float> digit(256 * k);
  for (int64_t b = 0; b < 256; ++b) {
    int64_t v = b;
    // As in the lookup table: a byte past radix^k is no code, so it turns its weights into NaN.
    for (int64_t i = 0; i < k; ++i, v /= radix)
      digit[b * k + i] = b < p.dg.values ? static_cast<float>(v % radix) : std::numeric_limits<float>::quiet_NaN();
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
                             int64_t radix, int64_t in_features, int64_t group_size, double implicit_zero,
                             const c10::optional<at::Tensor>& kernel_layout) {
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
    const auto type = t.scalar_type();
    return (type == at::kHalf || type == at::kBFloat16 || type == at::kFloat) ? t.contiguous()
                                                                               : t.to(at::kFloat).contiguous();
  };
  auto param = [](const at::Tensor& t) {
    return t.defined() ? GroupParam{t.data_ptr(), t.scalar_type()} : GroupParam{};
  };
  const at::Tensor s = as_params(scale, "scale");
  const at::Tensor z = zero.has_value() ? as_params(*zero, "zero") : at::Tensor();
  const at::Tensor t = shift.has_value() ? as_params(*shift, "shift") : at::Tensor();
  const at::Tensor pk = packed.contiguous();
  const at::Tensor xf = x.reshape({-1, in_features}).to(at::kFloat).contiguous();
  const int64_t rows = xf.size(0);
  Problem p{rows, out, in_features, groups, bpg, group_size, dg, static_cast<float>(implicit_zero),
            pk.data_ptr<uint8_t>(), param(s), param(z), param(t)};
  at::Tensor y;
  const bool use_planes = kernel_layout.has_value() && kernel_layout->defined() && planes_available();
  if (use_planes && rows <= kPlanesMaxRows) {
#if defined(__AVX512F__)
    const at::Tensor& pl = *kernel_layout;
    const int64_t n_planes = pl.dim() == 5 ? pl.size(2) : 0;
    TORCH_CHECK(pl.scalar_type() == at::kByte && pl.dim() == 5 && pl.is_contiguous() &&
                pl.size(0) == (out + kRowsPerBlock - 1) / kRowsPerBlock && pl.size(1) == groups &&
                pl.size(3) == (group_size + 7) / 8 && pl.size(4) == kRowsPerBlock && n_planes >= 1 && n_planes <= 4 &&
                (int64_t{1} << n_planes) >= radix,
                "packed_linear: kernel_layout ", pl.sizes(), " does not fit these packed codes: rebuild it with "
                "tritium.kernels.cpu.bit_planes");
    y = at::empty({rows, out}, at::kFloat);
    for (int64_t m = 0; m < rows; ++m) {
      const float* xr = xf.data_ptr<float>() + m * in_features;
      float* yr = y.data_ptr<float>() + m * out;
      const uint8_t* w = pl.data_ptr<uint8_t>();
      switch (n_planes) {
        case 1: planes_row<1>(p, w, pl.size(3), xr, yr); break;
        case 2: planes_row<2>(p, w, pl.size(3), xr, yr); break;
        case 3: planes_row<3>(p, w, pl.size(3), xr, yr); break;
        default: planes_row<4>(p, w, pl.size(3), xr, yr); break;
      }
    }
#endif
  } else if (rows <= kLookupMaxRows) {
    y = at::empty({rows, out}, at::kFloat);
    for (int64_t m = 0; m < rows; ++m) lookup_row(p, xf.data_ptr<float>() + m * in_features, y.data_ptr<float>() + m * out);
  } else {
    y = at::matmul(xf, dequantize(p).t());
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return y.reshape(shape).to(x.scalar_type());
}

// ---------------------------------------------------------------------------------- 16-bit weights
// y = x·Wᵀ with W stored in fp16 and everything else in fp32: the LM head of a packed model, whose
// weights are fp16 values on disk. Batch-1 decode reads the whole matrix per token, so reading
// 2 bytes per weight instead of 4 halves the time; the products and sums stay in fp32, so the
// result equals fp32 math on the same (fp16-valued) weights up to summation order.
at::Tensor linear_half_weight_cpu(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(weight.scalar_type() == at::kHalf && weight.dim() == 2,
              "linear_half_weight: the weight must be a 2-D float16 tensor, got ", weight.scalar_type(), " ",
              weight.sizes());
  const int64_t out = weight.size(0), in = weight.size(1);
  TORCH_CHECK(x.size(-1) == in, "linear_half_weight: input has ", x.size(-1), " features, the weight expects ", in);
  const at::Tensor xf = x.reshape({-1, in}).to(at::kFloat).contiguous();
  const int64_t rows = xf.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
#if defined(__AVX512F__)
  if (rows <= kLookupMaxRows) {
    const at::Tensor w = weight.contiguous();
    at::Tensor y = at::empty({rows, out}, at::kFloat);
    const uint16_t* W = reinterpret_cast<const uint16_t*>(w.data_ptr<at::Half>());
    const float* X = xf.data_ptr<float>();
    float* Y = y.data_ptr<float>();
    const int64_t full = in / 16 * 16;
    const __mmask16 tail = static_cast<__mmask16>((1u << (in - full)) - 1u);
    at::parallel_for(0, out, 512, [&](int64_t n0, int64_t n1) {
      for (int64_t m = 0; m < rows; ++m) {
        const float* xr = X + m * in;
        for (int64_t n = n0; n < n1; ++n) {
          const uint16_t* wr = W + n * in;
          __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
          int64_t k = 0;
          for (; k + 32 <= full; k += 32) {  // two accumulators hide the FMA latency
            a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + k))),
                                 _mm512_loadu_ps(xr + k), a0);
            a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + k + 16))),
                                 _mm512_loadu_ps(xr + k + 16), a1);
          }
          for (; k < full; k += 16)
            a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + k))),
                                 _mm512_loadu_ps(xr + k), a0);
          if (tail) {
            const __m256i h = _mm256_maskz_loadu_epi16(tail, wr + full);
            a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(h), _mm512_maskz_loadu_ps(tail, xr + full), a1);
          }
          Y[m * out + n] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        }
      }
    });
    return y.reshape(shape).to(x.scalar_type());
  }
#endif
  return at::matmul(xf, weight.to(at::kFloat).t()).reshape(shape).to(x.scalar_type());
}

}  // namespace tritium_cpu

TORCH_LIBRARY_IMPL(tritium, CPU, m) {
  m.impl("packed_linear", &tritium_cpu::packed_linear_cpu);
  m.impl("linear_half_weight", &tritium_cpu::linear_half_weight_cpu);
}

// Whether this build has the AVX-512 bit-plane path (callers skip building the layout otherwise).
TORCH_LIBRARY_FRAGMENT(tritium_cpu_info, m) {
  m.def("planes_available() -> bool", []() { return tritium_cpu::planes_available(); });
}
