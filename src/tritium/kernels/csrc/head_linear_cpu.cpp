// CPU kernels of the embedding / LM head ops (tritium.kernels.head_ops):
//
//   block_linear(x, codes, scale, bits):  y = x·Wᵀ, W in GGUF-style blocks of 32 with one fp16 scale d
//       bits 8 (q8_0):  w = d·q,        q int8, 32 bytes a block
//       bits 4 (q4_0):  w = d·(q − 8),  q in 0..15, 16 bytes a block (byte j: value j low, value j+16 high)
//   linear_16bit(x, weight):              y = x·Wᵀ, W stored in fp16 or bf16
//
// At batch 1 the head matvec reads the whole vocabulary matrix once per token, so it is bound by memory:
// each weight is decoded to fp32 in registers right after its load and multiplied with the fp32
// activation (no activation rounding: the result equals the fp32 reference on the dequantized weights
// up to summation order). Many rows (prefill, evaluation) decode the matrix tile by tile to fp32 and
// hand the GEMM to ATen.
//
// Every matvec exists three times: portable C++, AVX2 + FMA + F16C, and AVX-512 (F + BW). The vector
// versions are compiled through __attribute__((target(...))), so one build runs on any x86-64; which
// one runs is chosen at run time from the CPU's flags (tritium.kernels.head_cpu sets it through
// tritium_head_cpu::set_isa, and tests force each path in turn).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TRITIUM_X86 1
#else
#define TRITIUM_X86 0
#endif

#include <atomic>
#include <cstdint>
#include <cstring>

namespace tritium_head {

constexpr int64_t kBlock = 32;
constexpr int64_t kMatvecMaxRows = 8;      // above this, decode tiles + GEMM is faster
constexpr int64_t kTileFloats = 1 << 22;   // 16 MB of decoded fp32 weights per GEMM tile

enum Isa : int64_t { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
std::atomic<int64_t> g_isa{kPortable};  // set from Python at load time; portable until then

enum Kind { kQ8 = 0, kQ4 = 1, kF16 = 2, kBF16 = 3 };

inline float half_to_float(uint16_t bits) { return c10::detail::fp16_ieee_to_fp32_value(bits); }
inline float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// One output row against one activation row. `w` is the row's codes (or 16-bit weights), `d` its scales.
using RowDot = float (*)(const void* w, const uint16_t* d, const float* x, int64_t cols);

// ---------------------------------------------------------------------------------- portable
float dot_q8_portable(const void* w, const uint16_t* d, const float* x, int64_t cols) {
  const int8_t* q = static_cast<const int8_t*>(w);
  float acc = 0.f;
  for (int64_t b = 0; b < cols / kBlock; ++b) {
    float s = 0.f;
    for (int64_t j = 0; j < kBlock; ++j) s += static_cast<float>(q[b * kBlock + j]) * x[b * kBlock + j];
    acc += half_to_float(d[b]) * s;
  }
  return acc;
}

float dot_q4_portable(const void* w, const uint16_t* d, const float* x, int64_t cols) {
  const uint8_t* q = static_cast<const uint8_t*>(w);
  float acc = 0.f;
  for (int64_t b = 0; b < cols / kBlock; ++b) {
    const uint8_t* qb = q + b * (kBlock / 2);
    const float* xb = x + b * kBlock;
    float s = 0.f;
    for (int64_t j = 0; j < kBlock / 2; ++j) {
      s += static_cast<float>(static_cast<int>(qb[j] & 0x0F) - 8) * xb[j];
      s += static_cast<float>(static_cast<int>(qb[j] >> 4) - 8) * xb[j + kBlock / 2];
    }
    acc += half_to_float(d[b]) * s;
  }
  return acc;
}

float dot_f16_portable(const void* w, const uint16_t*, const float* x, int64_t cols) {
  const uint16_t* h = static_cast<const uint16_t*>(w);
  float acc = 0.f;
  for (int64_t k = 0; k < cols; ++k) acc += half_to_float(h[k]) * x[k];
  return acc;
}

float dot_bf16_portable(const void* w, const uint16_t*, const float* x, int64_t cols) {
  const uint16_t* h = static_cast<const uint16_t*>(w);
  float acc = 0.f;
  for (int64_t k = 0; k < cols; ++k) acc += bf16_to_float(h[k]) * x[k];
  return acc;
}

#if TRITIUM_X86
// ---------------------------------------------------------------------------------- AVX2 + FMA + F16C
#define TRITIUM_AVX2 __attribute__((target("avx2,fma,f16c")))

TRITIUM_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

TRITIUM_AVX2 inline __m256 i8x8_to_ps(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

TRITIUM_AVX2 float dot_q8_avx2(const void* w, const uint16_t* d, const float* x, int64_t cols) {
  const int8_t* q = static_cast<const int8_t*>(w);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (int64_t b = 0; b < cols / kBlock; ++b) {
    const int8_t* qb = q + b * kBlock;
    const float* xb = x + b * kBlock;
    __m256 s0 = _mm256_mul_ps(i8x8_to_ps(qb), _mm256_loadu_ps(xb));
    __m256 s1 = _mm256_mul_ps(i8x8_to_ps(qb + 8), _mm256_loadu_ps(xb + 8));
    s0 = _mm256_fmadd_ps(i8x8_to_ps(qb + 16), _mm256_loadu_ps(xb + 16), s0);
    s1 = _mm256_fmadd_ps(i8x8_to_ps(qb + 24), _mm256_loadu_ps(xb + 24), s1);
    const __m256 scale = _mm256_set1_ps(_cvtsh_ss(d[b]));
    acc0 = _mm256_fmadd_ps(scale, s0, acc0);  // two chains: the next block's FMAs need not wait
    acc1 = _mm256_fmadd_ps(scale, s1, acc1);
  }
  return hsum256(_mm256_add_ps(acc0, acc1));
}

TRITIUM_AVX2 float dot_q4_avx2(const void* w, const uint16_t* d, const float* x, int64_t cols) {
  const uint8_t* q = static_cast<const uint8_t*>(w);
  const __m128i low_mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (int64_t b = 0; b < cols / kBlock; ++b) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * (kBlock / 2)));
    // values 0..15 (low nibbles) and 16..31 (high nibbles), each minus 8, as signed bytes
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(v, low_mask), eight);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), low_mask), eight);
    const float* xb = x + b * kBlock;
    __m256 s0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), _mm256_loadu_ps(xb));
    __m256 s1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), _mm256_loadu_ps(xb + 8));
    s0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), _mm256_loadu_ps(xb + 16), s0);
    s1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), _mm256_loadu_ps(xb + 24), s1);
    const __m256 scale = _mm256_set1_ps(_cvtsh_ss(d[b]));
    acc0 = _mm256_fmadd_ps(scale, s0, acc0);
    acc1 = _mm256_fmadd_ps(scale, s1, acc1);
  }
  return hsum256(_mm256_add_ps(acc0, acc1));
}

TRITIUM_AVX2 float dot_f16_avx2(const void* w, const uint16_t*, const float* x, int64_t cols) {
  const uint16_t* h = static_cast<const uint16_t*>(w);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= cols; k += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + k))),
                           _mm256_loadu_ps(x + k), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + k + 8))),
                           _mm256_loadu_ps(x + k + 8), acc1);
  }
  for (; k + 8 <= cols; k += 8)
    acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + k))),
                           _mm256_loadu_ps(x + k), acc0);
  float acc = hsum256(_mm256_add_ps(acc0, acc1));
  for (; k < cols; ++k) acc += _cvtsh_ss(h[k]) * x[k];
  return acc;
}

TRITIUM_AVX2 inline __m256 bf16x8_to_ps(const uint16_t* p) {
  // bf16 is the top half of an fp32: widen to 32 bits and shift into place
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}

TRITIUM_AVX2 float dot_bf16_avx2(const void* w, const uint16_t*, const float* x, int64_t cols) {
  const uint16_t* h = static_cast<const uint16_t*>(w);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= cols; k += 16) {
    acc0 = _mm256_fmadd_ps(bf16x8_to_ps(h + k), _mm256_loadu_ps(x + k), acc0);
    acc1 = _mm256_fmadd_ps(bf16x8_to_ps(h + k + 8), _mm256_loadu_ps(x + k + 8), acc1);
  }
  for (; k + 8 <= cols; k += 8) acc0 = _mm256_fmadd_ps(bf16x8_to_ps(h + k), _mm256_loadu_ps(x + k), acc0);
  float acc = hsum256(_mm256_add_ps(acc0, acc1));
  for (; k < cols; ++k) acc += bf16_to_float(h[k]) * x[k];
  return acc;
}

// ---------------------------------------------------------------------------------- AVX-512 (F + BW)
#define TRITIUM_AVX512 __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))

TRITIUM_AVX512 float dot_q8_avx512(const void* w, const uint16_t* d, const float* x, int64_t cols) {
  const int8_t* q = static_cast<const int8_t*>(w);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (int64_t b = 0; b < cols / kBlock; ++b) {
    const int8_t* qb = q + b * kBlock;
    const float* xb = x + b * kBlock;
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qb))));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qb + 16))));
    const __m512 scale = _mm512_set1_ps(_cvtsh_ss(d[b]));
    acc0 = _mm512_fmadd_ps(scale, _mm512_mul_ps(lo, _mm512_loadu_ps(xb)), acc0);
    acc1 = _mm512_fmadd_ps(scale, _mm512_mul_ps(hi, _mm512_loadu_ps(xb + 16)), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

TRITIUM_AVX512 float dot_q4_avx512(const void* w, const uint16_t* d, const float* x, int64_t cols) {
  const uint8_t* q = static_cast<const uint8_t*>(w);
  const __m128i low_mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (int64_t b = 0; b < cols / kBlock; ++b) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * (kBlock / 2)));
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(v, low_mask), eight);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), low_mask), eight);
    const float* xb = x + b * kBlock;
    const __m512 scale = _mm512_set1_ps(_cvtsh_ss(d[b]));
    acc0 = _mm512_fmadd_ps(scale, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), _mm512_loadu_ps(xb)), acc0);
    acc1 = _mm512_fmadd_ps(scale, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), _mm512_loadu_ps(xb + 16)), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

TRITIUM_AVX512 float dot_f16_avx512(const void* w, const uint16_t*, const float* x, int64_t cols) {
  const uint16_t* h = static_cast<const uint16_t*>(w);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= cols; k += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + k))),
                           _mm512_loadu_ps(x + k), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + k + 16))),
                           _mm512_loadu_ps(x + k + 16), acc1);
  }
  for (; k + 16 <= cols; k += 16)
    acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + k))),
                           _mm512_loadu_ps(x + k), acc0);
  float acc = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; k < cols; ++k) acc += _cvtsh_ss(h[k]) * x[k];
  return acc;
}

TRITIUM_AVX512 inline __m512 bf16x16_to_ps(const uint16_t* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

TRITIUM_AVX512 float dot_bf16_avx512(const void* w, const uint16_t*, const float* x, int64_t cols) {
  const uint16_t* h = static_cast<const uint16_t*>(w);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= cols; k += 32) {
    acc0 = _mm512_fmadd_ps(bf16x16_to_ps(h + k), _mm512_loadu_ps(x + k), acc0);
    acc1 = _mm512_fmadd_ps(bf16x16_to_ps(h + k + 16), _mm512_loadu_ps(x + k + 16), acc1);
  }
  for (; k + 16 <= cols; k += 16) acc0 = _mm512_fmadd_ps(bf16x16_to_ps(h + k), _mm512_loadu_ps(x + k), acc0);
  float acc = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; k < cols; ++k) acc += bf16_to_float(h[k]) * x[k];
  return acc;
}
#endif  // TRITIUM_X86

RowDot pick(Kind kind, int64_t isa) {
#if TRITIUM_X86
  if (isa == kAvx512) {
    switch (kind) {
      case kQ8: return dot_q8_avx512;
      case kQ4: return dot_q4_avx512;
      case kF16: return dot_f16_avx512;
      default: return dot_bf16_avx512;
    }
  }
  if (isa == kAvx2) {
    switch (kind) {
      case kQ8: return dot_q8_avx2;
      case kQ4: return dot_q4_avx2;
      case kF16: return dot_f16_avx2;
      default: return dot_bf16_avx2;
    }
  }
#endif
  switch (kind) {
    case kQ8: return dot_q8_portable;
    case kQ4: return dot_q4_portable;
    case kF16: return dot_f16_portable;
    default: return dot_bf16_portable;
  }
}

struct Matrix {
  Kind kind;
  const uint8_t* data;  // row-major codes or 16-bit weights
  int64_t row_bytes;
  const uint16_t* scale;  // fp16 bits [rows, blocks]; null for 16-bit weights
  int64_t rows, cols;
};

// Rows [n0, n1) as fp32 into dst [n1 - n0, cols].
void decode_rows(const Matrix& w, int64_t n0, int64_t n1, float* dst) {
  const int64_t blocks = w.cols / kBlock;
  at::parallel_for(n0, n1, 64, [&](int64_t a, int64_t b) {
    for (int64_t n = a; n < b; ++n) {
      float* out = dst + (n - n0) * w.cols;
      const uint8_t* row = w.data + n * w.row_bytes;
      switch (w.kind) {
        case kQ8: {
          const int8_t* q = reinterpret_cast<const int8_t*>(row);
          for (int64_t blk = 0; blk < blocks; ++blk) {
            const float d = half_to_float(w.scale[n * blocks + blk]);
            for (int64_t j = 0; j < kBlock; ++j) out[blk * kBlock + j] = d * static_cast<float>(q[blk * kBlock + j]);
          }
          break;
        }
        case kQ4: {
          for (int64_t blk = 0; blk < blocks; ++blk) {
            const float d = half_to_float(w.scale[n * blocks + blk]);
            const uint8_t* qb = row + blk * (kBlock / 2);
            for (int64_t j = 0; j < kBlock / 2; ++j) {
              out[blk * kBlock + j] = d * static_cast<float>(static_cast<int>(qb[j] & 0x0F) - 8);
              out[blk * kBlock + j + kBlock / 2] = d * static_cast<float>(static_cast<int>(qb[j] >> 4) - 8);
            }
          }
          break;
        }
        case kF16: {
          const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
          for (int64_t k = 0; k < w.cols; ++k) out[k] = half_to_float(h[k]);
          break;
        }
        default: {
          const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
          for (int64_t k = 0; k < w.cols; ++k) out[k] = bf16_to_float(h[k]);
        }
      }
    }
  });
}

at::Tensor run(const at::Tensor& x, const Matrix& w) {
  TORCH_CHECK(x.size(-1) == w.cols, "head op: the input has ", x.size(-1), " features, the weight expects ", w.cols);
  const at::Tensor xf = x.reshape({-1, w.cols}).to(at::kFloat).contiguous();
  const int64_t m_rows = xf.size(0);
  at::Tensor y = at::empty({m_rows, w.rows}, at::kFloat);
  if (m_rows <= kMatvecMaxRows) {
    const RowDot dot = pick(w.kind, g_isa.load(std::memory_order_relaxed));
    const float* X = xf.data_ptr<float>();
    float* Y = y.data_ptr<float>();
    const int64_t blocks = w.cols / kBlock;
    // A thread pays off with ~64K weights of work (a few µs); each weight row stays in L1 across the x rows.
    const int64_t grain = std::max<int64_t>(16, (int64_t{1} << 16) / std::max<int64_t>(w.cols, 1));
    at::parallel_for(0, w.rows, grain, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const void* row = w.data + n * w.row_bytes;
        const uint16_t* d = w.scale ? w.scale + n * blocks : nullptr;
        for (int64_t m = 0; m < m_rows; ++m) Y[m * w.rows + n] = dot(row, d, X + m * w.cols, w.cols);
      }
    });
  } else {
    const int64_t tile = std::max<int64_t>(1, kTileFloats / std::max<int64_t>(w.cols, 1));
    at::Tensor decoded = at::empty({std::min(tile, w.rows), w.cols}, at::kFloat);
    for (int64_t n0 = 0; n0 < w.rows; n0 += tile) {
      const int64_t n1 = std::min(w.rows, n0 + tile);
      at::Tensor part = decoded.narrow(0, 0, n1 - n0);
      decode_rows(w, n0, n1, part.data_ptr<float>());
      y.narrow(1, n0, n1 - n0).copy_(at::mm(xf, part.t()));
    }
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = w.rows;
  return y.reshape(shape).to(x.scalar_type());
}

at::Tensor block_linear_cpu(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale, int64_t bits) {
  TORCH_CHECK(bits == 8 || bits == 4, "block_linear: bits must be 8 (q8_0) or 4 (q4_0), got ", bits);
  const int64_t code_bytes = bits == 8 ? kBlock : kBlock / 2;
  TORCH_CHECK(codes.dim() == 3 && codes.size(2) == code_bytes &&
                  codes.scalar_type() == (bits == 8 ? at::kChar : at::kByte),
              "block_linear: ", bits == 8 ? "q8_0 codes must be int8" : "q4_0 codes must be uint8", " [rows, blocks, ",
              code_bytes, "], got ", codes.scalar_type(), " ", codes.sizes());
  TORCH_CHECK(scale.scalar_type() == at::kHalf && scale.dim() == 2 && scale.size(0) == codes.size(0) &&
                  scale.size(1) == codes.size(1),
              "block_linear: the scales must be float16 [", codes.size(0), ", ", codes.size(1), "], got ",
              scale.scalar_type(), " ", scale.sizes());
  const at::Tensor c = codes.contiguous();
  const at::Tensor s = scale.contiguous();
  Matrix w{bits == 8 ? kQ8 : kQ4, static_cast<const uint8_t*>(c.data_ptr()), codes.size(1) * code_bytes,
           reinterpret_cast<const uint16_t*>(s.data_ptr<at::Half>()), codes.size(0), codes.size(1) * kBlock};
  return run(x, w);
}

at::Tensor linear_16bit_cpu(const at::Tensor& x, const at::Tensor& weight) {
  const auto type = weight.scalar_type();
  TORCH_CHECK((type == at::kHalf || type == at::kBFloat16) && weight.dim() == 2,
              "linear_16bit: the weight must be a 2-D float16 or bfloat16 tensor, got ", type, " ", weight.sizes());
  const at::Tensor wc = weight.contiguous();
  Matrix w{type == at::kHalf ? kF16 : kBF16, static_cast<const uint8_t*>(wc.data_ptr()), weight.size(1) * 2, nullptr,
           weight.size(0), weight.size(1)};
  return run(x, w);
}

}  // namespace tritium_head

TORCH_LIBRARY_IMPL(tritium, CPU, m) {
  m.impl("block_linear", &tritium_head::block_linear_cpu);
  m.impl("linear_16bit", &tritium_head::linear_16bit_cpu);
}

// Which matvec path runs: 0 portable, 1 AVX2 + FMA + F16C, 2 AVX-512. Python picks it from the CPU's flags.
TORCH_LIBRARY_FRAGMENT(tritium_head_cpu, m) {
  m.def("set_isa(int isa) -> ()", [](int64_t isa) {
    TORCH_CHECK(isa >= tritium_head::kPortable && isa <= tritium_head::kAvx512, "set_isa: unknown path ", isa);
#if !TRITIUM_X86
    TORCH_CHECK(isa == tritium_head::kPortable, "set_isa: this build has only the portable path");
#endif
    tritium_head::g_isa.store(isa);
  });
  m.def("get_isa() -> int", []() { return tritium_head::g_isa.load(); });
}
