// CPU kernel of tritium::packed_linear (and of tritium::packed_linear_a8 and tritium::linear_half_weight).
//
//   y[m, n] = Σ_g scale[n,g]·(x_g · d[n,g] − zero[n,g]·Σx_g) + shift[n,g]·Σx_g
//
// where d are the base-`radix` digits stored k to a byte, group by group (tritium.pack).
//
// One build holds three paths and picks one at run time (tritium.kernels.cpu sets it from the CPU's
// flags, or TRITIUM_CPU_PATH forces one). The file is compiled for the baseline ISA, not -march=native:
// each SIMD function carries its own target attribute, so the library loads on any x86-64 CPU and only
// the chosen path's instructions run. (A lambda does not inherit its enclosing function's target, so
// every SIMD loop that runs under at::parallel_for lives in a named target function the lambda calls.)
//
// * avx512: the bit-plane layout (tritium.kernels.cpu.bit_planes) with float tables looked up by vpermps:
//   exact up to summation order.
// * avx2: the same bit planes, looked up by vpshufb. vpshufb indexes 16 bytes, not floats, so the
//   activations are quantized to int8 (absmax per row and block of ≤ 128 activations inside a group),
//   the 16 subset sums of every 4 activations go in a byte table as two bytes (low, high), and the
//   integer dot products are exact; the result equals the float reference on the int8-rounded
//   activations up to summation order (tritium.kernels.reference.round_activations_int8 gives them).
//   A row with a non-finite activation takes the exact float lookup instead, so NaN and inf propagate.
// * portable: a float lookup table per byte position (few rows), no intrinsics.
// Every path decodes the weight once to float and hands the GEMM to ATen for many rows (prefill).
//
// packed_linear_a8 quantizes the activations to int8 per token itself and multiplies them with the weight
// digits in integers (its own layout, its own section below): VNNI on the avx512 path where the CPU has it,
// vpmaddubsw on avx2, plain loops on portable. Every path gives the same codes as the fake-quant reference.
//
// Threads: at::parallel_for runs in torch's own OpenMP pool (tritium.kernels.cpu links the OpenMP
// runtime torch loaded, so the two never run separate pools). A matrix too small to pay for a wake-up,
// or any matrix while other processes keep the cores busy, stays on the calling thread, so no call
// waits at a join for a worker the scheduler has not run: see kMinWeightsPerThread and machine_has_room.
#include <torch/extension.h>
#include <ATen/Parallel.h>

// -DTRITIUM_NO_SIMD (in TRITIUM_CPU_KERNEL_FLAGS) builds only the portable path, as on a CPU of another architecture.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(TRITIUM_NO_SIMD)
#define TRITIUM_X86 1
#include <immintrin.h>
#define TRITIUM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TRITIUM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#else
#define TRITIUM_X86 0
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>
#if defined(__linux__)
#include <unistd.h>
#endif

namespace tritium_cpu {

constexpr int64_t kLookupMaxRows = 4;  // above this, decode + GEMM is faster than one lookup table per row
constexpr int64_t kPlanesMaxRows = 32;  // the bit-plane paths stay ahead of decode + GEMM up to about here
// Work a second thread must get before it is woken. Idle, a fork/join costs a few µs; on a loaded machine
// the caller can wait a whole scheduler slice (ms) at the join for a worker that is not running, which
// made one 576×576 call take 7.9 ms where fp32 took 92 µs. A matrix below this stays on the calling
// thread: ~1M weights is tens of µs of work on the SIMD paths.
constexpr int64_t kMinWeightsPerThread = int64_t{1} << 20;

inline int64_t grain_for(int64_t weights_per_item) {
  return std::max<int64_t>(1, kMinWeightsPerThread / std::max<int64_t>(1, weights_per_item));
}

// Whether the machine has a free core for each of torch's other threads. A fork on a machine whose cores
// other processes keep busy waits at the join for a worker the scheduler has not run yet (measured: a
// 576×3072 call at 2 threads took 20 ms instead of 30 µs beside busy processes), so then the work stays
// on the calling thread. "Busy" is the other processes' CPU time — the machine's busy time from /proc/stat
// minus this process's own — over the last ~200 ms; this process's spinning workers do not count.
// Linux only; elsewhere every machine has room.
struct LoadProbe {
  std::mutex lock;
  std::atomic<int64_t> next_ns{0};
  std::atomic<bool> room{true};
  std::atomic<double> other_cores{0.0};
  int64_t last_ns = -1;
  double last_busy_s = 0.0, last_self_s = 0.0;
};
LoadProbe g_load;
constexpr int64_t kLoadWindowNs = 200 * 1000 * 1000;

inline int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Busy seconds of all CPUs since boot (/proc/stat: user nice system idle iowait irq softirq steal), or < 0.
double machine_busy_seconds() {
#if defined(__linux__)
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return -1.0;
  unsigned long long v[8] = {0};
  const int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                            &v[6], &v[7]);
  std::fclose(f);
  if (n < 4) return -1.0;
  static const double tick = 1.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
  return static_cast<double>(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) * tick;  // steal: CPU another VM took
#else
  return -1.0;
#endif
}

double process_cpu_seconds() {
  return static_cast<double>(std::clock()) / CLOCKS_PER_SEC;
}

bool machine_has_room(int64_t threads) {
  const int64_t now = monotonic_ns();
  if (now < g_load.next_ns.load(std::memory_order_relaxed)) return g_load.room.load(std::memory_order_relaxed);
  std::unique_lock<std::mutex> guard(g_load.lock, std::try_to_lock);
  if (!guard.owns_lock()) return g_load.room.load(std::memory_order_relaxed);  // another thread is measuring
  const double busy = machine_busy_seconds(), self = process_cpu_seconds();
  if (busy >= 0.0 && g_load.last_ns >= 0) {
    const double wall = static_cast<double>(now - g_load.last_ns) * 1e-9;
    const double others = std::max(0.0, (busy - g_load.last_busy_s) - (self - g_load.last_self_s)) / wall;
    const double cpus = static_cast<double>(std::max<long>(1, sysconf(_SC_NPROCESSORS_ONLN)));
    g_load.other_cores.store(others, std::memory_order_relaxed);
    // Half a core of slack: the tick counts are coarse (10 ms) and a shell or a logger is no load.
    g_load.room.store(others <= cpus - static_cast<double>(threads) + 0.5, std::memory_order_relaxed);
  }
  g_load.last_ns = now;
  g_load.last_busy_s = busy;
  g_load.last_self_s = self;
  g_load.next_ns.store(now + kLoadWindowNs, std::memory_order_relaxed);
  return g_load.room.load(std::memory_order_relaxed);
}

// at::parallel_for, but on the calling thread where a fork cannot pay: too little work (grain) or no free
// cores for torch's other threads.
template <class F>
void parallel_rows(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t threads = at::get_num_threads();
  if (end - begin <= grain || threads <= 1 || at::in_parallel_region() || !machine_has_room(threads)) {
    if (begin < end) f(begin, end);
    return;
  }
  at::parallel_for(begin, end, grain, f);
}

// ---------------------------------------------------------------------------------- paths
enum Path : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kPathNames[] = {"portable", "avx2", "avx512"};

bool cpu_supports(int path) {
  if (path == kPortable) return true;
#if TRITIUM_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (path == kAvx2) return avx2;
  if (path == kAvx512)
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#endif
  return false;
}

int best_supported_path() {
  for (int path : {kAvx512, kAvx2})
    if (cpu_supports(path)) return path;
  return kPortable;
}

std::atomic<int> g_path{-1};  // -1: not chosen yet (Python chooses at load; direct users get the best)

int current_path() {
  int path = g_path.load(std::memory_order_relaxed);
  if (path < 0) {
    path = best_supported_path();
    g_path.store(path, std::memory_order_relaxed);
  }
  return path;
}

int path_from_name(const std::string& name) {
  for (int path : {kPortable, kAvx2, kAvx512})
    if (name == kPathNames[path]) return path;
  TORCH_CHECK(false, "tritium CPU kernel: unknown path '", name, "': choose avx512, avx2 or portable");
  return kPortable;
}

// ---------------------------------------------------------------------------------- shared data
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

// The bit-plane layout (both SIMD paths read it): planes[row_block][g][b][q][16], B planes with
// digit = Σ_b 2^b·bit_b; bit i of byte (q, lane r) is bit b of the digit of weight 8q + i of group g,
// row 16·row_block + r. Rows and groups are zero-padded.
constexpr int64_t kRowsPerBlock = 16;

// ---------------------------------------------------------------------------------- portable: lookup table
// Few rows (decode, batch 1). Each byte covers k activations and can take only radix^k values (243 for
// 5 trits), so for every byte position c we first tabulate T[c][b] = Σ_i digit_i(b)·x[k·c + i] for all b
// — radix^k·in/k additions — and then each output row costs one table load and one add per byte (in/5
// for ternary) instead of in multiply-adds. The activations stay in float.
constexpr int64_t kTableStride = 256;  // floats per byte position: every byte value has a slot
constexpr int64_t kTileBytes = 32;     // byte positions per L1-resident table tile (32 KB)

// Sum of table[j * 256 + bytes[j]] over j < n: one load per byte of weights.
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

// The plain C++ loops below are compiled three times: as they are, and inlined into an avx2 and an avx512
// target function, so that the compiler vectorizes them for the path that runs (the file itself is built
// for the baseline ISA). Only the path's own copy ever executes.
#define TRITIUM_INLINE inline __attribute__((always_inline))

// Tables of byte positions c0..c1: T[c][b] = Σ_i digit_i(b)·X[c·k + i].
TRITIUM_INLINE void fill_tables_body(float* T, const float* X, int64_t k, int64_t radix, int64_t c0, int64_t c1) {
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
}

// The float weight rows n0..n1: w = scale·(digit − zero) + shift, digit[b·k + i] = digit i of byte b.
TRITIUM_INLINE void dequantize_rows_body(const Problem& p, const float* digit, float* W, int64_t n0, int64_t n1) {
  const int64_t k = p.dg.k;
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
}

void fill_tables_portable(float* T, const float* X, int64_t k, int64_t radix, int64_t c0, int64_t c1) {
  fill_tables_body(T, X, k, radix, c0, c1);
}
void dequantize_rows_portable(const Problem& p, const float* digit, float* W, int64_t n0, int64_t n1) {
  dequantize_rows_body(p, digit, W, n0, n1);
}
#if TRITIUM_X86
TRITIUM_TARGET_AVX2 void fill_tables_avx2(float* T, const float* X, int64_t k, int64_t radix, int64_t c0, int64_t c1) {
  fill_tables_body(T, X, k, radix, c0, c1);
}
TRITIUM_TARGET_AVX512 void fill_tables_avx512(float* T, const float* X, int64_t k, int64_t radix, int64_t c0, int64_t c1) {
  fill_tables_body(T, X, k, radix, c0, c1);
}
TRITIUM_TARGET_AVX2 void dequantize_rows_avx2(const Problem& p, const float* digit, float* W, int64_t n0, int64_t n1) {
  dequantize_rows_body(p, digit, W, n0, n1);
}
TRITIUM_TARGET_AVX512 void dequantize_rows_avx512(const Problem& p, const float* digit, float* W, int64_t n0, int64_t n1) {
  dequantize_rows_body(p, digit, W, n0, n1);
}
#endif

void fill_tables(int path, float* T, const float* X, int64_t k, int64_t radix, int64_t c0, int64_t c1) {
#if TRITIUM_X86
  if (path == kAvx512) return fill_tables_avx512(T, X, k, radix, c0, c1);
  if (path == kAvx2) return fill_tables_avx2(T, X, k, radix, c0, c1);
#endif
  fill_tables_portable(T, X, k, radix, c0, c1);
}

void dequantize_rows(int path, const Problem& p, const float* digit, float* W, int64_t n0, int64_t n1) {
#if TRITIUM_X86
  if (path == kAvx512) return dequantize_rows_avx512(p, digit, W, n0, n1);
  if (path == kAvx2) return dequantize_rows_avx2(p, digit, W, n0, n1);
#endif
  dequantize_rows_portable(p, digit, W, n0, n1);
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
  const int path = current_path();
  parallel_rows(0, chunks, grain_for(p.dg.values * 4), [&](int64_t c0, int64_t c1) {
    fill_tables(path, T, X, k, radix, c0, c1);
  });
  // Rows split across threads; within a thread, byte positions go in tiles whose table
  // slice (kTileBytes KB) stays in L1 while every row of the thread reads it.
  const int64_t bpg = p.bytes_per_group;
  parallel_rows(0, p.out, grain_for(p.in), [&](int64_t n0, int64_t n1) {
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
  const int path = current_path();
  const float* D = digit.data();
  at::parallel_for(0, p.out, 16, [&](int64_t n0, int64_t n1) { dequantize_rows(path, p, D, W, n0, n1); });
  return w;
}

#if TRITIUM_X86
// block_params for the SIMD paths: the same values, but fp16 converted by F16C 8 at a time. c10::Half's
// portable conversion costs ~15 instructions a value, which with groups of 64 took more time than the
// lookups themselves (48 values per 16 rows and group).
TRITIUM_TARGET_AVX2 inline void param_rows(const GroupParam& par, float missing, int64_t first, int64_t stride,
                                           int64_t nrows, float* dst) {
  if (!par) {
    for (int64_t r = 0; r < kRowsPerBlock; ++r) dst[r] = r < nrows ? missing : 0.f;
    return;
  }
  switch (par.type) {
    case at::kHalf: {
      // Built in registers (vpinsrw), not in a stack array read back as one vector: 16 narrow stores then a wide
      // load of the same bytes cannot be forwarded and stall.
      const uint16_t* src = static_cast<const uint16_t*>(par.data) + first;
      auto at = [&](int64_t r) { return static_cast<short>(r < nrows ? src[r * stride] : 0); };
      const __m128i lo = _mm_setr_epi16(at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7));
      const __m128i hi = _mm_setr_epi16(at(8), at(9), at(10), at(11), at(12), at(13), at(14), at(15));
      _mm256_store_ps(dst, _mm256_cvtph_ps(lo));
      _mm256_store_ps(dst + 8, _mm256_cvtph_ps(hi));
      return;
    }
    case at::kBFloat16: {
      const uint16_t* src = static_cast<const uint16_t*>(par.data) + first;
      for (int64_t r = 0; r < kRowsPerBlock; ++r) {
        const uint32_t bits = r < nrows ? static_cast<uint32_t>(src[r * stride]) << 16 : 0u;  // bf16: the top half
        std::memcpy(dst + r, &bits, sizeof(bits));
      }
      return;
    }
    default: {
      const float* src = static_cast<const float*>(par.data) + first;
      for (int64_t r = 0; r < kRowsPerBlock; ++r) dst[r] = r < nrows ? src[r * stride] : 0.f;
    }
  }
}

TRITIUM_TARGET_AVX2 inline void block_params_simd(const Problem& p, int64_t row0, int64_t nrows, int64_t g, float* sc,
                                                  float* zr, float* sh) {
  const int64_t first = row0 * p.groups + g;
  param_rows(p.scale, 0.f, first, p.groups, nrows, sc);
  param_rows(p.zero, p.implicit_zero, first, p.groups, nrows, zr);
  param_rows(p.shift, 0.f, first, p.groups, nrows, sh);
}

// ---------------------------------------------------------------------------------- avx512: float bit planes
// For every 4 activations a 16-float table holds all 16 subset sums, so one vpermps looks up
// 4 weights × 16 rows at once; the table and the sums stay in float.
struct Avx512Tables {
  const float* table;  // [groups][2·nq][16]
  const float* sums;   // [groups]
};

template <int B>
TRITIUM_TARGET_AVX512 void planes_blocks_avx512(const Problem& p, const uint8_t* planes, int64_t nq,
                                                const Avx512Tables& t, float* y, int64_t k0, int64_t k1) {
  const int64_t groups = p.groups;
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
      const float* tg = t.table + g * nq * 32;
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
      alignas(64) float sc[16], zr[16], sh[16];
      block_params_simd(p, row0, nrows, g, sc, zr, sh);
      const __m512 gsum = _mm512_set1_ps(t.sums[g]);
      // scale·(dot − zero·Σx) + shift·Σx
      out_acc = _mm512_fmadd_ps(_mm512_load_ps(sc), _mm512_fnmadd_ps(_mm512_load_ps(zr), gsum, dot), out_acc);
      out_acc = _mm512_fmadd_ps(_mm512_load_ps(sh), gsum, out_acc);
    }
    alignas(64) float res[16];
    _mm512_store_ps(res, out_acc);
    for (int64_t r = 0; r < nrows; ++r) y[row0 + r] = res[r];
  }
}

// Table of half-byte h of group g: lane b holds Σ_i bit_i(b)·x_i over its 4 activations, built as 4 FMAs
// against the constant bit patterns of the lane numbers.
TRITIUM_TARGET_AVX512 void tables_avx512(const Problem& p, int64_t nq, const float* x, float* T, float* sums) {
  __m512 bit_pattern[4];
  for (int i = 0; i < 4; ++i) {
    alignas(64) float lanes[16];
    for (int b = 0; b < 16; ++b) lanes[b] = static_cast<float>((b >> i) & 1);
    bit_pattern[i] = _mm512_load_ps(lanes);
  }
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t len = group_length(p, g), base = g * p.group_size;
    float s = 0.f;
    for (int64_t j = 0; j < len; ++j) s += x[base + j];
    sums[g] = s;
    for (int64_t h = 0; h < nq * 2; ++h) {
      __m512 t = _mm512_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        const int64_t j = 4 * h + i;
        if (j < len) t = _mm512_fmadd_ps(_mm512_set1_ps(x[base + j]), bit_pattern[i], t);
      }
      _mm512_storeu_ps(T + (g * nq * 2 + h) * 16, t);
    }
  }
}

template <int B>
void planes_row_avx512(const Problem& p, const uint8_t* planes, int64_t nq, const float* x, float* y) {
  thread_local std::vector<float> table_buf, sums_buf;
  if (static_cast<int64_t>(table_buf.size()) < p.groups * nq * 32) table_buf.resize(p.groups * nq * 32);
  if (static_cast<int64_t>(sums_buf.size()) < p.groups) sums_buf.resize(p.groups);
  tables_avx512(p, nq, x, table_buf.data(), sums_buf.data());
  const Avx512Tables t{table_buf.data(), sums_buf.data()};
  const int64_t blocks = (p.out + kRowsPerBlock - 1) / kRowsPerBlock;
  parallel_rows(0, blocks, grain_for(kRowsPerBlock * p.in), [&](int64_t k0, int64_t k1) {
    planes_blocks_avx512<B>(p, planes, nq, t, y, k0, k1);
  });
}

// ---------------------------------------------------------------------------------- avx2: int8 bit planes
// Per activation row, prepared once (prepare_row_avx2):
//   * int8 activations, one scale per block of ≤ kActBlock activations of a group (absmax / 127);
//   * for each step of 16 activations (two plane bytes, q and q+1: quads 4j..4j+3), four 32-byte tables:
//       [0] low bytes  of the subset sums of quad 4j   | quad 4j+2    (read by the low nibbles)
//       [1] high bytes of the same                                   (low nibbles)
//       [2] low bytes  of quad 4j+1                    | quad 4j+3    (high nibbles)
//       [3] high bytes of the same                                   (high nibbles)
//     A subset sum of 4 int8 values lies in [−508, 508]: it needs 10 bits, so each is split into its
//     low byte and its high byte, and vpunpck{l,h}bw of the two looked-up bytes rebuilds the int16.
// Then a 32-byte load of one plane (bytes q and q+1 of 16 rows: one row per byte, lane 0 = q, lane 1
// = q+1) and 4 vpshufb look up 16 weights × 16 rows of that plane.
constexpr int64_t kActBlock = 128;  // activations per int8 scale; keeps each int16 lane within range

struct Avx2Tables {
  const uint8_t* table;       // [groups][steps][128]
  const float* block_scale;   // [groups][blocks_per_group]
  const float* sums;          // [groups]: Σ of the int8-rounded activations, in float
  int64_t steps, blocks_per_group;
};

// Subset sums of 4 int8 activations: entry m (0..15) = Σ_{i: bit i of m} x_i, as 16 low bytes | 16 high bytes.
TRITIUM_TARGET_AVX2 inline __m256i quad_table(const int8_t* x4) {
  // vpmaddubsw: int16 lane m = bit0(m)·x0 + bit1(m)·x1 (and bits 2, 3 against x2, x3).
  const __m256i bits01 = _mm256_setr_epi8(0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1,
                                          0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 1);
  const __m256i bits23 = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0,
                                          0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  int16_t x01, x23;
  std::memcpy(&x01, x4, 2);
  std::memcpy(&x23, x4 + 2, 2);
  const __m256i v = _mm256_add_epi16(_mm256_maddubs_epi16(bits01, _mm256_set1_epi16(x01)),
                                     _mm256_maddubs_epi16(bits23, _mm256_set1_epi16(x23)));
  // Per lane: 8 low bytes then 8 high bytes; then gather the lanes' low halves and high halves.
  return _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, split), 0xD8);
}

// Quantizes one row and builds its tables; false if the row holds a non-finite value.
TRITIUM_TARGET_AVX2 bool prepare_row_avx2(const Problem& p, const Avx2Tables& t, const float* x, uint8_t* table,
                                          float* block_scale, float* sums, int8_t* xq) {
  const int64_t padded = t.steps * 16;
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t len = group_length(p, g), base = g * p.group_size;
    std::memset(xq, 0, padded);
    float group_sum = 0.f;
    for (int64_t kb = 0; kb < t.blocks_per_group; ++kb) {
      const int64_t start = kb * kActBlock, n = std::min(kActBlock, len - start);
      float& scale = block_scale[g * t.blocks_per_group + kb];
      scale = 0.f;
      if (n <= 0) continue;
      const float* xb = x + base + start;
      const __m256 sign = _mm256_set1_ps(-0.f);
      __m256 vmax = _mm256_setzero_ps(), vsum = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(xb + i);
        vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v));
        vsum = _mm256_add_ps(vsum, v);
      }
      alignas(32) float lanes[8], lane_sums[8];
      _mm256_store_ps(lanes, vmax);
      _mm256_store_ps(lane_sums, vsum);
      float amax = 0.f, check = 0.f;
      for (int l = 0; l < 8; ++l) {
        amax = std::max(amax, lanes[l]);
        check += lane_sums[l];
      }
      for (; i < n; ++i) {
        amax = std::max(amax, std::fabs(xb[i]));
        check += xb[i];
      }
      // vmaxps drops a NaN operand, so NaN is caught through the plain sum (a huge finite row that
      // overflows the sum merely takes the exact path too).
      if (!std::isfinite(amax) || !std::isfinite(check)) return false;
      if (amax == 0.f) continue;
      scale = amax / 127.f;
      const __m256 inv = _mm256_set1_ps(127.f / amax);
      __m256i isum = _mm256_setzero_si256();
      int8_t* dst = xq + start;
      for (i = 0; i < n; i += 8) {
        __m256 v;
        if (i + 8 <= n) {
          v = _mm256_loadu_ps(xb + i);
        } else {
          alignas(32) int32_t mask[8];
          for (int l = 0; l < 8; ++l) mask[l] = i + l < n ? -1 : 0;
          v = _mm256_maskload_ps(xb + i, _mm256_load_si256(reinterpret_cast<const __m256i*>(mask)));
        }
        // Rounds to nearest even (the default MXCSR mode), as torch.round does.
        const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(v, inv));
        isum = _mm256_add_epi32(isum, q);
        const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + i), _mm_packs_epi16(q16, q16));
      }
      alignas(32) int32_t isums[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(isums), isum);
      int32_t total = 0;
      for (int l = 0; l < 8; ++l) total += isums[l];
      group_sum += scale * static_cast<float>(total);
    }
    sums[g] = group_sum;
    uint8_t* tg = table + g * t.steps * 128;
    for (int64_t j = 0; j < t.steps; ++j) {
      const int8_t* xj = xq + j * 16;
      const __m256i r0 = quad_table(xj), r1 = quad_table(xj + 4), r2 = quad_table(xj + 8), r3 = quad_table(xj + 12);
      __m256i* dst = reinterpret_cast<__m256i*>(tg + j * 128);
      _mm256_storeu_si256(dst + 0, _mm256_permute2x128_si256(r0, r2, 0x20));
      _mm256_storeu_si256(dst + 1, _mm256_permute2x128_si256(r0, r2, 0x31));
      _mm256_storeu_si256(dst + 2, _mm256_permute2x128_si256(r1, r3, 0x20));
      _mm256_storeu_si256(dst + 3, _mm256_permute2x128_si256(r1, r3, 0x31));
    }
  }
  return true;
}

// One plane step: bytes q, q+1 of one plane for 16 rows (32 bytes; 16 if q+1 is past the group), looked
// up in the step's 4 tables; adds each row's int16 partial sum (lanes: rows 0-7 / rows 8-15).
TRITIUM_TARGET_AVX2 inline void plane_step(const __m256i* tq, const uint8_t* codes, bool both, __m256i& acc_lo,
                                           __m256i& acc_hi) {
  const __m256i low_nibble = _mm256_set1_epi8(0x0F);
  const __m256i idx = both ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes))
                           : _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  const __m256i lo = _mm256_and_si256(idx, low_nibble);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(idx, 4), low_nibble);
  const __m256i a_low = _mm256_shuffle_epi8(_mm256_loadu_si256(tq + 0), lo);
  const __m256i a_high = _mm256_shuffle_epi8(_mm256_loadu_si256(tq + 1), lo);
  const __m256i c_low = _mm256_shuffle_epi8(_mm256_loadu_si256(tq + 2), hi);
  const __m256i c_high = _mm256_shuffle_epi8(_mm256_loadu_si256(tq + 3), hi);
  acc_lo = _mm256_add_epi16(acc_lo, _mm256_add_epi16(_mm256_unpacklo_epi8(a_low, a_high), _mm256_unpacklo_epi8(c_low, c_high)));
  acc_hi = _mm256_add_epi16(acc_hi, _mm256_add_epi16(_mm256_unpackhi_epi8(a_low, a_high), _mm256_unpackhi_epi8(c_low, c_high)));
}

// 8 rows' int32 sums of an int16 register whose two lanes hold the same 8 rows.
TRITIUM_TARGET_AVX2 inline __m256i widen_lanes(__m256i acc) {
  return _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc)),
                          _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc, 1)));
}

template <int B>
TRITIUM_TARGET_AVX2 void planes_blocks_avx2(const Problem& p, const uint8_t* planes, int64_t nq, const Avx2Tables& t,
                                            float* y, int64_t k0, int64_t k1) {
  const int64_t groups = p.groups;
  for (int64_t blk = k0; blk < k1; ++blk) {
    const int64_t row0 = blk * kRowsPerBlock, nrows = std::min(kRowsPerBlock, p.out - row0);
    __m256 out_lo = _mm256_setzero_ps(), out_hi = _mm256_setzero_ps();  // rows 0-7, rows 8-15
    if (blk + 1 < k1) {  // as on the avx512 path: the next block's codes into L2 while this one computes
      const char* next = reinterpret_cast<const char*>(planes + ((blk + 1) * groups * B) * nq * 16);
      const int64_t bytes = groups * B * nq * 16;
      for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(next + off, _MM_HINT_T1);
    }
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* w = planes + ((blk * groups + g) * B) * nq * 16;
      const uint8_t* tg = t.table + g * t.steps * 128;
      __m256 dot_lo = _mm256_setzero_ps(), dot_hi = _mm256_setzero_ps();
      for (int64_t kb = 0; kb < t.blocks_per_group; ++kb) {
        const int64_t q0 = kb * (kActBlock / 8), q1 = std::min(nq, q0 + kActBlock / 8);
        if (q0 >= q1) break;
        __m256i block_lo = _mm256_setzero_si256(), block_hi = _mm256_setzero_si256();
        // Planes in pairs (2k, 2k+1): one table load serves both, and the pair combines in int16 as
        // acc_2k + 2·acc_2k+1. Bounds: a step adds ≤ 2·508 to a lane, a block has ≤ 8 steps, so a plane's
        // lane stays ≤ 8128 and a pair's ≤ 3·8128 = 24384 < 2^15; the two lanes add in int32.
        for (int pair = 0; pair < (B + 1) / 2; ++pair) {
          const bool two = 2 * pair + 1 < B;
          __m256i a_lo = _mm256_setzero_si256(), a_hi = _mm256_setzero_si256();
          __m256i b_lo = _mm256_setzero_si256(), b_hi = _mm256_setzero_si256();
          const uint8_t* wa = w + (2 * pair) * nq * 16;
          const uint8_t* wb = wa + nq * 16;
          for (int64_t q = q0; q < q1; q += 2) {
            const __m256i* tq = reinterpret_cast<const __m256i*>(tg + (q / 2) * 128);
            plane_step(tq, wa + q * 16, q + 1 < q1, a_lo, a_hi);
            if (two) plane_step(tq, wb + q * 16, q + 1 < q1, b_lo, b_hi);
          }
          __m256i pair_lo = widen_lanes(_mm256_add_epi16(a_lo, _mm256_slli_epi16(b_lo, 1)));
          __m256i pair_hi = widen_lanes(_mm256_add_epi16(a_hi, _mm256_slli_epi16(b_hi, 1)));
          block_lo = _mm256_add_epi32(block_lo, _mm256_slli_epi32(pair_lo, 2 * pair));
          block_hi = _mm256_add_epi32(block_hi, _mm256_slli_epi32(pair_hi, 2 * pair));
        }
        // |block sum| ≤ 128·127·15 < 2^24: exact in float.
        const __m256 s = _mm256_set1_ps(t.block_scale[g * t.blocks_per_group + kb]);
        dot_lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_lo), s, dot_lo);
        dot_hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_hi), s, dot_hi);
      }
      // scale·dot + (shift − scale·zero)·Σx, reading only the parameters the layer has.
      const int64_t first = row0 * groups + g;
      alignas(32) float sc[16], extra[16];
      param_rows(p.scale, 0.f, first, groups, nrows, sc);
      const __m256 sc_lo = _mm256_load_ps(sc), sc_hi = _mm256_load_ps(sc + 8);
      __m256 zr_lo = _mm256_set1_ps(p.implicit_zero), zr_hi = zr_lo;
      if (p.zero) {
        param_rows(p.zero, 0.f, first, groups, nrows, extra);
        zr_lo = _mm256_load_ps(extra);
        zr_hi = _mm256_load_ps(extra + 8);
      }
      __m256 off_lo = _mm256_mul_ps(sc_lo, zr_lo), off_hi = _mm256_mul_ps(sc_hi, zr_hi);  // negated below
      if (p.shift) {
        param_rows(p.shift, 0.f, first, groups, nrows, extra);
        off_lo = _mm256_sub_ps(off_lo, _mm256_load_ps(extra));
        off_hi = _mm256_sub_ps(off_hi, _mm256_load_ps(extra + 8));
      }
      const __m256 gsum = _mm256_set1_ps(t.sums[g]);
      out_lo = _mm256_fnmadd_ps(off_lo, gsum, _mm256_fmadd_ps(sc_lo, dot_lo, out_lo));
      out_hi = _mm256_fnmadd_ps(off_hi, gsum, _mm256_fmadd_ps(sc_hi, dot_hi, out_hi));
    }
    alignas(32) float res[16];
    _mm256_store_ps(res, out_lo);
    _mm256_store_ps(res + 8, out_hi);
    for (int64_t r = 0; r < nrows; ++r) y[row0 + r] = res[r];
  }
}

template <int B>
void planes_row_avx2(const Problem& p, const uint8_t* planes, int64_t nq, const float* x, float* y) {
  const int64_t steps = (nq + 1) / 2, blocks_per_group = (p.group_size + kActBlock - 1) / kActBlock;
  thread_local std::vector<uint8_t> table_buf;
  thread_local std::vector<float> scale_buf, sums_buf;
  thread_local std::vector<int8_t> xq_buf;
  table_buf.resize(std::max<size_t>(table_buf.size(), p.groups * steps * 128));
  scale_buf.resize(std::max<size_t>(scale_buf.size(), p.groups * blocks_per_group));
  sums_buf.resize(std::max<size_t>(sums_buf.size(), p.groups));
  xq_buf.resize(std::max<size_t>(xq_buf.size(), steps * 16));
  const Avx2Tables t{table_buf.data(), scale_buf.data(), sums_buf.data(), steps, blocks_per_group};
  if (!prepare_row_avx2(p, t, x, table_buf.data(), scale_buf.data(), sums_buf.data(), xq_buf.data())) {
    lookup_row(p, x, y);  // a non-finite activation: the exact float path propagates it as the reference does
    return;
  }
  const int64_t blocks = (p.out + kRowsPerBlock - 1) / kRowsPerBlock;
  parallel_rows(0, blocks, grain_for(kRowsPerBlock * p.in), [&](int64_t k0, int64_t k1) {
    planes_blocks_avx2<B>(p, planes, nq, t, y, k0, k1);
  });
}

// ---------------------------------------------------------------------------------- fp16 weights, SIMD rows
TRITIUM_TARGET_AVX512 void half_rows_avx512(const uint16_t* W, const float* X, float* Y, int64_t rows, int64_t in,
                                            int64_t out, int64_t n0, int64_t n1) {
  const int64_t full = in / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (in - full)) - 1u);
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
}

TRITIUM_TARGET_AVX2 void half_rows_avx2(const uint16_t* W, const float* X, float* Y, int64_t rows, int64_t in,
                                        int64_t out, int64_t n0, int64_t n1) {
  const int64_t full = in / 8 * 8, rest = in - full;
  alignas(32) int32_t mask_lanes[8];
  for (int l = 0; l < 8; ++l) mask_lanes[l] = l < rest ? -1 : 0;
  const __m256i tail_mask = _mm256_load_si256(reinterpret_cast<const __m256i*>(mask_lanes));
  for (int64_t m = 0; m < rows; ++m) {
    const float* xr = X + m * in;
    const __m256 x_tail = rest ? _mm256_maskload_ps(xr + full, tail_mask) : _mm256_setzero_ps();
    for (int64_t n = n0; n < n1; ++n) {
      const uint16_t* wr = W + n * in;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int64_t k = 0;
      for (; k + 16 <= full; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + k))),
                             _mm256_loadu_ps(xr + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + k + 8))),
                             _mm256_loadu_ps(xr + k + 8), a1);
      }
      for (; k < full; k += 8)
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + k))),
                             _mm256_loadu_ps(xr + k), a0);
      if (rest) {  // no masked 16-bit load in AVX2: copy the last few weights into a zeroed block
        alignas(16) uint16_t last[8] = {0};
        std::memcpy(last, wr + full, rest * sizeof(uint16_t));
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(last))), x_tail, a1);
      }
      const __m256 s = _mm256_add_ps(a0, a1);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      Y[m * out + n] = _mm_cvtss_f32(h);
    }
  }
}
#endif  // TRITIUM_X86

// ---------------------------------------------------------------------------------- int8 activations (a8)
// tritium::packed_linear_a8: each token x is quantized to int8 codes exactly as
// tritium.quant.activations.quantize_activations does on ActivationGrid(bits=8, group="token"):
//   s = max(clip·max|x| / 127, 1e-8),  q = clamp(nearbyint(x / s), −128, 127)
// (float32 throughout, a true division, round half to even). Then per row n and group g the integer dot
// product D = Σ digit·q and the code sum Q = Σ q are exact, and
//   y[n] = s · Σ_g ( scale[n,g]·(D − zero[n,g]·Q) + shift[n,g]·Q ),
// which is the reference on the fake-quant activations s·q, up to float summation order.
//
// The weights come in their own layout (tritium.kernels.cpu.a8_layout): digits of B = 2 bits (radix ≤ 4:
// ternary, 2-bit) or B = 4 bits (radix ≤ 16), P = 8 / B of them a byte, as [row_block][g][chunk][16 rows][4
// bytes]: byte i of row r holds the digits of weights c·4P + 4s + i in bits B·s (s < P). One 64-byte chunk is
// 16 rows × 4 bytes, which is one int32 lane per row: (byte >> B·s) & mask gives each lane the 4 digits of
// weights 4s..4s+3, and the 4 codes of those weights, broadcast to every lane, multiply them as
// unsigned × signed bytes summed into the lane (vpdpbusd; vpmaddubsw + vpmaddwd on AVX2). Digits ≤ 15 and
// codes ≥ −128 keep vpmaddubsw's int16 pairs within ±3840, far from saturation. Every row's sums stay in
// its own lane, so a group ends without a horizontal reduction, and a chunk's weights serve several tokens.
// Groups are zero-padded to whole chunks (digit 0 and code 0), rows to whole blocks.
#if TRITIUM_X86
#define TRITIUM_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#endif

constexpr float kActScaleEps = 1e-8f;  // tritium.quant.activations.ACTIVATION_SCALE_EPS, as float32
constexpr int64_t kA8ChunkBytes = 64;  // 16 rows × 4 bytes

bool cpu_supports_vnni() {
#if TRITIUM_X86
  static const bool vnni = [] {
    __builtin_cpu_init();
    return cpu_supports(kAvx512) && __builtin_cpu_supports("avx512vnni");
  }();
  return vnni;
#else
  return false;
#endif
}

struct A8Acts {
  const int8_t* q;      // [tokens][groups][group_stride = chunks · 4P codes], zero-padded
  const int32_t* sums;  // [tokens][groups]: Σ q per group
  const float* scale;   // [tokens]
  int64_t tokens, stride;
};

struct A8Weights {
  const uint8_t* w;  // [blocks][groups][chunks][16][4]
  int64_t chunks;
};

inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---- quantizing a token. Each path returns the scale, or NaN where x holds a non-finite value (then its
// codes stay 0 and the caller writes NaN to its outputs, as the reference's all-NaN fake-quant row gives).
inline float a8_scale(float amax, float clip) {
  const float scale = amax * clip / 127.f;  // (max|x|·clip) / 127, both float32 roundings as torch does them
  return scale < kActScaleEps ? kActScaleEps : scale;
}

float quantize_token_portable(const Problem& p, int64_t group_stride, float clip, const float* x, int8_t* q,
                              int32_t* sums) {
  float amax = 0.f;
  for (int64_t j = 0; j < p.in; ++j) {
    if (!std::isfinite(x[j])) return std::numeric_limits<float>::quiet_NaN();
    amax = std::max(amax, std::fabs(x[j]));
  }
  const float s = a8_scale(amax, clip);
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t len = group_length(p, g), base = g * p.group_size;
    int8_t* dst = q + g * group_stride;
    int32_t total = 0;
    for (int64_t j = 0; j < len; ++j) {
      const float v = std::min(127.f, std::max(-128.f, x[base + j] / s));  // clamp first: same as after rounding
      const int32_t c = static_cast<int32_t>(std::nearbyint(v));
      dst[j] = static_cast<int8_t>(c);
      total += c;
    }
    sums[g] = total;
  }
  return s;
}

#if TRITIUM_X86
TRITIUM_TARGET_AVX2 float quantize_token_avx2(const Problem& p, int64_t group_stride, float clip, const float* x, int8_t* q,
                                              int32_t* sums) {
  const __m256 sign = _mm256_set1_ps(-0.f), zero = _mm256_setzero_ps();
  __m256 vmax = zero, poison = zero;  // poison: Σ x·0, NaN iff some x is NaN or ±inf
  int64_t j = 0;
  for (; j + 8 <= p.in; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v));
    poison = _mm256_add_ps(poison, _mm256_mul_ps(v, zero));
  }
  alignas(32) float lanes[8], bad[8];
  _mm256_store_ps(lanes, vmax);
  _mm256_store_ps(bad, poison);
  float amax = 0.f, check = 0.f;
  for (int l = 0; l < 8; ++l) {
    amax = std::max(amax, lanes[l]);
    check += bad[l];
  }
  for (; j < p.in; ++j) {
    amax = std::max(amax, std::fabs(x[j]));
    check += x[j] * 0.f;
  }
  if (!std::isfinite(check)) return std::numeric_limits<float>::quiet_NaN();
  const float s = a8_scale(amax, clip);
  const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-128.f), hi = _mm256_set1_ps(127.f);
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t len = group_length(p, g), base = g * p.group_size;
    int8_t* dst = q + g * group_stride;  // a multiple of 8 ≥ len: the 8-byte stores stay inside the group
    __m256i total = _mm256_setzero_si256();
    for (int64_t i = 0; i < len; i += 8) {
      __m256 v;
      if (i + 8 <= len) {
        v = _mm256_loadu_ps(x + base + i);
      } else {
        alignas(32) int32_t mask[8];
        for (int l = 0; l < 8; ++l) mask[l] = i + l < len ? -1 : 0;
        v = _mm256_maskload_ps(x + base + i, _mm256_load_si256(reinterpret_cast<const __m256i*>(mask)));
      }
      // vcvtps2dq rounds half to even (the default MXCSR mode), as torch.round does.
      const __m256i c = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_div_ps(v, vs))));
      total = _mm256_add_epi32(total, c);
      const __m128i c16 = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + i), _mm_packs_epi16(c16, c16));
    }
    alignas(32) int32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), total);
    sums[g] = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
  }
  return s;
}

TRITIUM_TARGET_AVX512 float quantize_token_avx512(const Problem& p, int64_t group_stride, float clip, const float* x,
                                                  int8_t* q, int32_t* sums) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 vmax = zero, poison = zero;
  for (int64_t j = 0; j < p.in; j += 16) {
    const __mmask16 m = p.in - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (p.in - j)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + j);
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
    poison = _mm512_add_ps(poison, _mm512_mul_ps(v, zero));
  }
  if (!std::isfinite(_mm512_reduce_add_ps(poison))) return std::numeric_limits<float>::quiet_NaN();
  const float s = a8_scale(_mm512_reduce_max_ps(vmax), clip);
  const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-128.f), hi = _mm512_set1_ps(127.f);
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t len = group_length(p, g), base = g * p.group_size;
    int8_t* dst = q + g * group_stride;
    __m512i total = _mm512_setzero_si512();
    for (int64_t i = 0; i < len; i += 16) {
      const __mmask16 m = len - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (len - i)) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(m, x + base + i);
      const __m512i c = _mm512_cvtps_epi32(_mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_div_ps(v, vs))));
      total = _mm512_add_epi32(total, c);
      _mm512_mask_cvtepi32_storeu_epi8(dst + i, m, c);
    }
    sums[g] = _mm512_reduce_add_epi32(total);
  }
  return s;
}
#endif

// ---- the integer products, one block of 16 rows against T tokens (t0 .. t0+T−1).
// The per-group epilogue: out += scale·(D − zero·Q) + shift·Q; at the end out·s of each token.
template <int P>
void a8_block_portable(const Problem& p, const A8Weights& W, const A8Acts& a, int64_t blk, float* y) {
  constexpr int B = 8 / P, S = 4 * P;
  constexpr int mask = (1 << B) - 1;
  const int64_t row0 = blk * kRowsPerBlock, nrows = std::min(kRowsPerBlock, p.out - row0);
  for (int64_t t = 0; t < a.tokens; ++t) {
    float out[kRowsPerBlock] = {0.f};
    for (int64_t g = 0; g < p.groups; ++g) {
      const uint8_t* w = W.w + (blk * p.groups + g) * W.chunks * kA8ChunkBytes;
      const int8_t* xg = a.q + t * a.stride + g * W.chunks * S;
      int32_t acc[kRowsPerBlock] = {0};
      for (int64_t c = 0; c < W.chunks; ++c)
        for (int r = 0; r < kRowsPerBlock; ++r)
          for (int s = 0; s < P; ++s)
            for (int i = 0; i < 4; ++i)
              acc[r] += ((w[c * kA8ChunkBytes + r * 4 + i] >> (B * s)) & mask) * xg[c * S + 4 * s + i];
      const float Q = static_cast<float>(a.sums[t * p.groups + g]);
      for (int64_t r = 0; r < nrows; ++r) {
        const int64_t k = (row0 + r) * p.groups + g;
        const float z = p.zero ? p.zero[k] : p.implicit_zero;
        out[r] += p.scale[k] * (static_cast<float>(acc[r]) - z * Q) + (p.shift ? p.shift[k] * Q : 0.f);
      }
    }
    for (int64_t r = 0; r < nrows; ++r) y[t * p.out + row0 + r] = out[r] * a.scale[t];
  }
}

#if TRITIUM_X86
template <int P, int T>
TRITIUM_TARGET_AVX2 void a8_tile_avx2(const Problem& p, const A8Weights& W, const A8Acts& a, int64_t blk, int64_t t0,
                                      float* y) {
  constexpr int B = 8 / P, S = 4 * P;
  const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << B) - 1)), ones = _mm256_set1_epi16(1);
  const int64_t row0 = blk * kRowsPerBlock, nrows = std::min(kRowsPerBlock, p.out - row0);
  __m256 out_lo[T], out_hi[T];  // rows 0-7, rows 8-15
  for (int t = 0; t < T; ++t) out_lo[t] = out_hi[t] = _mm256_setzero_ps();
  for (int64_t g = 0; g < p.groups; ++g) {
    const uint8_t* w = W.w + (blk * p.groups + g) * W.chunks * kA8ChunkBytes;
    const int8_t* xg = a.q + t0 * a.stride + g * W.chunks * S;
    __m256i acc_lo[T], acc_hi[T];
    for (int t = 0; t < T; ++t) acc_lo[t] = acc_hi[t] = _mm256_setzero_si256();
    for (int64_t c = 0; c < W.chunks; ++c) {
      const __m256i w_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c * kA8ChunkBytes));
      const __m256i w_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c * kA8ChunkBytes + 32));
      __m256i d_lo[P], d_hi[P];
      for (int s = 0; s < P; ++s) {
        d_lo[s] = _mm256_and_si256(_mm256_srli_epi16(w_lo, B * s), mask);
        d_hi[s] = _mm256_and_si256(_mm256_srli_epi16(w_hi, B * s), mask);
      }
      for (int t = 0; t < T; ++t) {
        const int8_t* xc = xg + t * a.stride + c * S;
        // A chunk's int16 pairs add up to ≤ P·2·(2^B − 1)·128 ≤ 7680: no overflow before vpmaddwd widens them.
        __m256i sum_lo = _mm256_setzero_si256(), sum_hi = _mm256_setzero_si256();
        for (int s = 0; s < P; ++s) {
          const __m256i xb = _mm256_set1_epi32(load4(xc + 4 * s));
          sum_lo = _mm256_add_epi16(sum_lo, _mm256_maddubs_epi16(d_lo[s], xb));
          sum_hi = _mm256_add_epi16(sum_hi, _mm256_maddubs_epi16(d_hi[s], xb));
        }
        acc_lo[t] = _mm256_add_epi32(acc_lo[t], _mm256_madd_epi16(sum_lo, ones));
        acc_hi[t] = _mm256_add_epi32(acc_hi[t], _mm256_madd_epi16(sum_hi, ones));
      }
    }
    alignas(32) float sc[16], zr[16], sh[16];
    block_params_simd(p, row0, nrows, g, sc, zr, sh);
    const __m256 s_lo = _mm256_load_ps(sc), s_hi = _mm256_load_ps(sc + 8);
    const __m256 z_lo = _mm256_load_ps(zr), z_hi = _mm256_load_ps(zr + 8);
    const __m256 h_lo = _mm256_load_ps(sh), h_hi = _mm256_load_ps(sh + 8);
    for (int t = 0; t < T; ++t) {
      const __m256 Q = _mm256_set1_ps(static_cast<float>(a.sums[(t0 + t) * p.groups + g]));
      out_lo[t] = _mm256_fmadd_ps(h_lo, Q, _mm256_fmadd_ps(s_lo, _mm256_fnmadd_ps(z_lo, Q, _mm256_cvtepi32_ps(acc_lo[t])), out_lo[t]));
      out_hi[t] = _mm256_fmadd_ps(h_hi, Q, _mm256_fmadd_ps(s_hi, _mm256_fnmadd_ps(z_hi, Q, _mm256_cvtepi32_ps(acc_hi[t])), out_hi[t]));
    }
  }
  for (int t = 0; t < T; ++t) {
    const __m256 s = _mm256_set1_ps(a.scale[t0 + t]);
    alignas(32) float res[16];
    _mm256_store_ps(res, _mm256_mul_ps(out_lo[t], s));
    _mm256_store_ps(res + 8, _mm256_mul_ps(out_hi[t], s));
    std::memcpy(y + (t0 + t) * p.out + row0, res, nrows * sizeof(float));
  }
}

// The 16 rows' parameter of one group as one register (block_params_simd's values), for the VNNI kernel: its
// two 8-float halves written to the stack and read back as one 16-float vector could not be store-forwarded.
TRITIUM_TARGET_AVX512 inline __m512 param_vec512(const GroupParam& par, float missing, int64_t first, int64_t stride,
                                                 int64_t nrows) {
  const __mmask16 rows = static_cast<__mmask16>((1u << nrows) - 1u);
  if (!par) return _mm512_maskz_mov_ps(rows, _mm512_set1_ps(missing));
  if (par.type == at::kFloat) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int32_t>(stride)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), rows, idx, static_cast<const float*>(par.data) + first, 4);
  }
  const uint16_t* src = static_cast<const uint16_t*>(par.data) + first;
  auto at = [&](int64_t r) { return static_cast<short>(r < nrows ? src[r * stride] : 0); };
  const __m256i bits = _mm256_setr_epi16(at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8), at(9), at(10),
                                         at(11), at(12), at(13), at(14), at(15));
  if (par.type == at::kHalf) return _mm512_cvtph_ps(bits);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));  // bf16: the top half of a float
}

// One 64-byte chunk (16 rows × 4P weights) against T tokens: P vpdpbusd a token.
// * Many tokens (A = 1): plane s shifted down and masked, all planes into one sum per token; the tokens give the
//   independent vpdpbusd chains, and a tile of 8 shares each chunk's unpacking.
// * One or two tokens (A = 2P): plane s is masked in place, not shifted: its bytes are digit·2^(B·s) (≤ 192
//   ternary, ≤ 240 4-bit: still unsigned bytes), summed into its own acc[t][First + s], which the group's end
//   shifts back down by B·s, exactly (every term is a multiple of 2^(B·s)): one vpand a plane, and with every
//   other chunk (First = 0, P) apart too, 2P chains, so vpdpbusd's 5-cycle latency does not bound a batch-1 call.
//   A sum grows by ≤ 4·240·128 a chunk: int32 holds groups of up to 130K weights.
template <int P, int T, int A, int First>
TRITIUM_TARGET_VNNI TRITIUM_INLINE void a8_chunk_vnni(__m512i (&acc)[T][A], const uint8_t* w, const int8_t* x,
                                                      int64_t stride) {
  constexpr int B = 8 / P;
  const __m512i wv = _mm512_loadu_si512(w);
  for (int s = 0; s < P; ++s) {
    const __m512i d = A == 1 ? _mm512_and_si512(_mm512_srli_epi16(wv, B * s), _mm512_set1_epi8((1 << B) - 1))
                             : _mm512_and_si512(wv, _mm512_set1_epi8(static_cast<char>(((1 << B) - 1) << (B * s))));
    for (int t = 0; t < T; ++t)
      acc[t][A == 1 ? 0 : First + s] = _mm512_dpbusd_epi32(acc[t][A == 1 ? 0 : First + s], d,
                                                            _mm512_set1_epi32(load4(x + t * stride + 4 * s)));
  }
}

template <int P, int T>
TRITIUM_TARGET_VNNI void a8_tile_vnni(const Problem& p, const A8Weights& W, const A8Acts& a, int64_t blk, int64_t t0,
                                      float* y) {
  constexpr int S = 4 * P, A = T <= 2 ? 2 * P : 1;
  const int64_t row0 = blk * kRowsPerBlock, nrows = std::min(kRowsPerBlock, p.out - row0);
  __m512 out[T];
  for (int t = 0; t < T; ++t) out[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.groups; ++g) {
    const uint8_t* w = W.w + (blk * p.groups + g) * W.chunks * kA8ChunkBytes;
    const int8_t* xg = a.q + t0 * a.stride + g * W.chunks * S;
    __m512i acc[T][A];
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < A; ++i) acc[t][i] = _mm512_setzero_si512();
    int64_t c = 0;
    for (; c + 2 <= W.chunks; c += 2) {
      a8_chunk_vnni<P, T, A, 0>(acc, w + c * kA8ChunkBytes, xg + c * S, a.stride);
      a8_chunk_vnni<P, T, A, P>(acc, w + (c + 1) * kA8ChunkBytes, xg + (c + 1) * S, a.stride);
    }
    if (c < W.chunks) a8_chunk_vnni<P, T, A, 0>(acc, w + c * kA8ChunkBytes, xg + c * S, a.stride);
    const int64_t first = row0 * p.groups + g;
    const __m512 vs = param_vec512(p.scale, 0.f, first, p.groups, nrows);
    const __m512 vz = param_vec512(p.zero, p.implicit_zero, first, p.groups, nrows);
    const __m512 vh = param_vec512(p.shift, 0.f, first, p.groups, nrows);
    for (int t = 0; t < T; ++t) {
      __m512i dot = acc[t][0];
      for (int i = 1; i < A; ++i) dot = _mm512_add_epi32(dot, _mm512_srai_epi32(acc[t][i], (8 / P) * (i % P)));
      const __m512 Q = _mm512_set1_ps(static_cast<float>(a.sums[(t0 + t) * p.groups + g]));
      out[t] = _mm512_fmadd_ps(vh, Q, _mm512_fmadd_ps(vs, _mm512_fnmadd_ps(vz, Q, _mm512_cvtepi32_ps(dot)), out[t]));
    }
  }
  const __mmask16 m = static_cast<__mmask16>((1u << nrows) - 1u);
  for (int t = 0; t < T; ++t)
    _mm512_mask_storeu_ps(y + (t0 + t) * p.out + row0, m, _mm512_mul_ps(out[t], _mm512_set1_ps(a.scale[t0 + t])));
}
#endif

enum A8Kernel : int { kA8Portable = 0, kA8Avx2 = 1, kA8Vnni = 2 };

// The integer kernel a path runs: the avx512 path uses VNNI where the CPU has it, else the AVX2 kernel.
int a8_kernel_for(int path) {
  if (path == kAvx512 && cpu_supports_vnni()) return kA8Vnni;
  return path == kPortable ? kA8Portable : kA8Avx2;
}
const char* const kA8KernelNames[] = {"portable", "avx2 (vpmaddubsw)", "avx512 (vpdpbusd)"};

// Row blocks k0..k1 against every token, tokens in tiles of 8, 4, 2, 1 (VNNI) or 4, 2, 1 (AVX2).
template <int P>
void a8_blocks(int kernel, const Problem& p, const A8Weights& W, const A8Acts& a, float* y, int64_t k0, int64_t k1) {
  for (int64_t blk = k0; blk < k1; ++blk) {
    if (kernel == kA8Portable) {
      a8_block_portable<P>(p, W, a, blk, y);
      continue;
    }
#if TRITIUM_X86
    int64_t t = 0;
    if (kernel == kA8Vnni) {
      for (; t + 8 <= a.tokens; t += 8) a8_tile_vnni<P, 8>(p, W, a, blk, t, y);
      if (t + 4 <= a.tokens) a8_tile_vnni<P, 4>(p, W, a, blk, t, y), t += 4;
      if (t + 2 <= a.tokens) a8_tile_vnni<P, 2>(p, W, a, blk, t, y), t += 2;
      if (t < a.tokens) a8_tile_vnni<P, 1>(p, W, a, blk, t, y);
    } else {
      for (; t + 4 <= a.tokens; t += 4) a8_tile_avx2<P, 4>(p, W, a, blk, t, y);
      if (t + 2 <= a.tokens) a8_tile_avx2<P, 2>(p, W, a, blk, t, y), t += 2;
      if (t < a.tokens) a8_tile_avx2<P, 1>(p, W, a, blk, t, y);
    }
#endif
  }
}

// y [tokens, out] for xf [tokens, in]; planes_per_byte P = 2 (4-bit digits) or 4 (2-bit digits).
void a8_linear(const Problem& p, int64_t planes_per_byte, const A8Weights& W, float clip, const float* xf, float* y,
               int path) {
  const int64_t group_stride = W.chunks * 4 * planes_per_byte, stride = p.groups * group_stride, tokens = p.rows;
  std::vector<int8_t> q(tokens * stride, 0);
  std::vector<int32_t> sums(tokens * p.groups, 0);
  std::vector<float> scale(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* x = xf + t * p.in;
    int8_t* qt = q.data() + t * stride;
    int32_t* st = sums.data() + t * p.groups;
#if TRITIUM_X86
    if (path == kAvx512) scale[t] = quantize_token_avx512(p, group_stride, clip, x, qt, st);
    else if (path == kAvx2) scale[t] = quantize_token_avx2(p, group_stride, clip, x, qt, st);
    else
#endif
      scale[t] = quantize_token_portable(p, group_stride, clip, x, qt, st);
    if (std::isnan(scale[t])) {  // a non-finite token: zero codes through the kernel, NaN outputs below
      std::memset(qt, 0, stride);
      std::memset(st, 0, p.groups * sizeof(int32_t));
    }
  }
  const A8Acts a{q.data(), sums.data(), scale.data(), tokens, stride};
  const int kernel = a8_kernel_for(path);
  const int64_t blocks = (p.out + kRowsPerBlock - 1) / kRowsPerBlock;
  parallel_rows(0, blocks, grain_for(kRowsPerBlock * p.in * tokens), [&](int64_t k0, int64_t k1) {
    if (planes_per_byte == 2) a8_blocks<2>(kernel, p, W, a, y, k0, k1);
    else a8_blocks<4>(kernel, p, W, a, y, k0, k1);
  });
  for (int64_t t = 0; t < tokens; ++t)
    if (std::isnan(scale[t])) std::fill(y + t * p.out, y + (t + 1) * p.out, std::numeric_limits<float>::quiet_NaN());
}

// The codes and scales the active path's quantizer gives (for tests: they must equal quantize_activations).
std::tuple<at::Tensor, at::Tensor> a8_quantize(const at::Tensor& x, int64_t group_size, double clip_ratio) {
  const at::Tensor xf = x.reshape({-1, x.size(-1)}).to(at::kFloat).contiguous();
  const int64_t tokens = xf.size(0), in = xf.size(1);
  TORCH_CHECK(group_size > 0, "a8_quantize: group_size must be positive");
  Problem p{tokens, 0, in, (in + group_size - 1) / group_size, 0, group_size, Digits{2, 1, 2}, 0.f, nullptr,
            GroupParam{}, GroupParam{}, GroupParam{}};
  const int64_t group_stride = (group_size + 15) / 16 * 16;
  const int path = current_path();
  std::vector<int8_t> q(p.groups * group_stride);
  std::vector<int32_t> sums(p.groups);
  at::Tensor codes = at::empty({tokens, in}, at::kInt), scales = at::empty({tokens}, at::kFloat);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xt = xf.data_ptr<float>() + t * in;
    float s;
#if TRITIUM_X86
    if (path == kAvx512) s = quantize_token_avx512(p, group_stride, static_cast<float>(clip_ratio), xt, q.data(), sums.data());
    else if (path == kAvx2) s = quantize_token_avx2(p, group_stride, static_cast<float>(clip_ratio), xt, q.data(), sums.data());
    else
#endif
      s = quantize_token_portable(p, group_stride, static_cast<float>(clip_ratio), xt, q.data(), sums.data());
    scales.data_ptr<float>()[t] = s;
    int32_t* ct = codes.data_ptr<int32_t>() + t * in;
    for (int64_t g = 0; g < p.groups; ++g) {
      int32_t total = 0;
      for (int64_t j = 0; j < group_length(p, g); ++j) {
        ct[g * group_size + j] = q[g * group_stride + j];
        total += q[g * group_stride + j];
      }
      TORCH_CHECK(std::isnan(s) || total == sums[g], "a8_quantize: the code sum of group ", g, " is off");
    }
  }
  return {codes, scales};
}

// ---------------------------------------------------------------------------------- the ops
// The checked, contiguous inputs of packed_linear and packed_linear_a8, and the Problem that points into them.
struct Inputs {
  at::Tensor s, z, t, pk, xf;
  Problem p;
};

Inputs check_inputs(const char* op, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                    const c10::optional<at::Tensor>& zero, const c10::optional<at::Tensor>& shift, int64_t radix,
                    int64_t in_features, int64_t group_size, double implicit_zero) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3,
              op, ": packed codes must be uint8 [out, groups, bytes_per_group], got ", packed.scalar_type(),
              " ", packed.sizes());
  TORCH_CHECK(x.size(-1) == in_features, op, ": input has ", x.size(-1), " features, the layer expects ",
              in_features);
  TORCH_CHECK(group_size > 0 && in_features > 0, op, ": in_features and group_size must be positive");
  const Digits dg = digits_for(radix);
  const int64_t out = packed.size(0), groups = packed.size(1), bpg = packed.size(2);
  TORCH_CHECK(groups == (in_features + group_size - 1) / group_size && bpg == (group_size + dg.k - 1) / dg.k,
              op, ": packed codes ", packed.sizes(), " do not match in_features=", in_features,
              ", group_size=", group_size, ", radix=", radix);
  auto as_params = [&](const at::Tensor& t, const char* what) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == out && t.size(1) == groups, op, ": ", what, " has shape ",
                t.sizes(), ", expected [", out, ", ", groups, "]");
    const auto type = t.scalar_type();
    return (type == at::kHalf || type == at::kBFloat16 || type == at::kFloat) ? t.contiguous()
                                                                               : t.to(at::kFloat).contiguous();
  };
  auto param = [](const at::Tensor& t) {
    return t.defined() ? GroupParam{t.data_ptr(), t.scalar_type()} : GroupParam{};
  };
  Inputs in;
  in.s = as_params(scale, "scale");
  in.z = zero.has_value() ? as_params(*zero, "zero") : at::Tensor();
  in.t = shift.has_value() ? as_params(*shift, "shift") : at::Tensor();
  in.pk = packed.contiguous();
  in.xf = x.reshape({-1, in_features}).to(at::kFloat).contiguous();
  in.p = Problem{in.xf.size(0), out, in_features, groups, bpg, group_size, dg, static_cast<float>(implicit_zero),
                 in.pk.data_ptr<uint8_t>(), param(in.s), param(in.z), param(in.t)};
  return in;
}

at::Tensor packed_linear_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                             const c10::optional<at::Tensor>& zero, const c10::optional<at::Tensor>& shift,
                             int64_t radix, int64_t in_features, int64_t group_size, double implicit_zero,
                             const c10::optional<at::Tensor>& kernel_layout) {
  const Inputs in = check_inputs("packed_linear", x, packed, scale, zero, shift, radix, in_features, group_size,
                                 implicit_zero);
  const Problem& p = in.p;
  const at::Tensor& xf = in.xf;
  const int64_t rows = p.rows, out = p.out, groups = p.groups;
  at::Tensor y;
  const int path = current_path();
  const bool has_layout = kernel_layout.has_value() && kernel_layout->defined();
  if (has_layout && path != kPortable && rows <= kPlanesMaxRows) {
#if TRITIUM_X86
    const at::Tensor& pl = *kernel_layout;
    const int64_t n_planes = pl.dim() == 5 ? pl.size(2) : 0;
    TORCH_CHECK(pl.scalar_type() == at::kByte && pl.dim() == 5 && pl.is_contiguous() &&
                pl.size(0) == (out + kRowsPerBlock - 1) / kRowsPerBlock && pl.size(1) == groups &&
                pl.size(3) == (group_size + 7) / 8 && pl.size(4) == kRowsPerBlock && n_planes >= 1 && n_planes <= 4 &&
                (int64_t{1} << n_planes) >= radix,
                "packed_linear: kernel_layout ", pl.sizes(), " does not fit these packed codes: rebuild it with "
                "tritium.kernels.cpu.bit_planes");
    y = at::empty({rows, out}, at::kFloat);
    const uint8_t* w = pl.data_ptr<uint8_t>();
    const int64_t nq = pl.size(3);
    for (int64_t m = 0; m < rows; ++m) {
      const float* xr = xf.data_ptr<float>() + m * in_features;
      float* yr = y.data_ptr<float>() + m * out;
      if (path == kAvx512) {
        switch (n_planes) {
          case 1: planes_row_avx512<1>(p, w, nq, xr, yr); break;
          case 2: planes_row_avx512<2>(p, w, nq, xr, yr); break;
          case 3: planes_row_avx512<3>(p, w, nq, xr, yr); break;
          default: planes_row_avx512<4>(p, w, nq, xr, yr); break;
        }
      } else {
        switch (n_planes) {
          case 1: planes_row_avx2<1>(p, w, nq, xr, yr); break;
          case 2: planes_row_avx2<2>(p, w, nq, xr, yr); break;
          case 3: planes_row_avx2<3>(p, w, nq, xr, yr); break;
          default: planes_row_avx2<4>(p, w, nq, xr, yr); break;
        }
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

// x quantized per token to int8 (see the a8 section), integer products with the digits of a8_layout.
at::Tensor packed_linear_a8_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                                const c10::optional<at::Tensor>& zero, const c10::optional<at::Tensor>& shift,
                                int64_t radix, int64_t in_features, int64_t group_size, double implicit_zero,
                                double clip_ratio, const c10::optional<at::Tensor>& kernel_layout) {
  TORCH_CHECK(clip_ratio > 0.0 && clip_ratio <= 1.0, "packed_linear_a8: clip_ratio must be in (0, 1], got ",
              clip_ratio);
  TORCH_CHECK(radix >= 2 && radix <= 16, "packed_linear_a8: the int8-activation kernel takes digits of radix 2..16 "
              "(ternary, 2-, 3- and 4-bit codes), not radix ", radix);
  const Inputs in = check_inputs("packed_linear_a8", x, packed, scale, zero, shift, radix, in_features, group_size,
                                 implicit_zero);
  const Problem& p = in.p;
  const int64_t planes = radix <= 4 ? 4 : 2, span = 4 * planes, chunks = (group_size + span - 1) / span;
  TORCH_CHECK(kernel_layout.has_value() && kernel_layout->defined(), "packed_linear_a8: the CPU kernel reads its "
              "own weight layout: pass kernel_layout=tritium.kernels.cpu.a8_layout(packed, radix, in_features, "
              "group_size)");
  const at::Tensor& w = *kernel_layout;
  TORCH_CHECK(w.scalar_type() == at::kByte && w.is_contiguous() && w.dim() == 5 &&
              w.size(0) == (p.out + kRowsPerBlock - 1) / kRowsPerBlock && w.size(1) == p.groups &&
              w.size(2) == chunks && w.size(3) == kRowsPerBlock && w.size(4) == 4,
              "packed_linear_a8: kernel_layout ", w.sizes(), " does not fit these packed codes: rebuild it with "
              "tritium.kernels.cpu.a8_layout");
  at::Tensor y = at::empty({p.rows, p.out}, at::kFloat);
  a8_linear(p, planes, A8Weights{w.data_ptr<uint8_t>(), chunks}, static_cast<float>(clip_ratio),
            in.xf.data_ptr<float>(), y.data_ptr<float>(), current_path());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = p.out;
  return y.reshape(shape).to(x.scalar_type());
}

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
#if TRITIUM_X86
  const int path = current_path();
  if (rows <= kLookupMaxRows && path != kPortable) {
    const at::Tensor w = weight.contiguous();
    at::Tensor y = at::empty({rows, out}, at::kFloat);
    const uint16_t* W = reinterpret_cast<const uint16_t*>(w.data_ptr<at::Half>());
    const float* X = xf.data_ptr<float>();
    float* Y = y.data_ptr<float>();
    parallel_rows(0, out, grain_for(in), [&](int64_t n0, int64_t n1) {
      if (path == kAvx512) half_rows_avx512(W, X, Y, rows, in, out, n0, n1);
      else half_rows_avx2(W, X, Y, rows, in, out, n0, n1);
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
  m.impl("packed_linear_a8", &tritium_cpu::packed_linear_a8_cpu);
}

// Which path runs, and what this CPU can run (tritium.kernels.cpu wraps these).
TORCH_LIBRARY_FRAGMENT(tritium_cpu_info, m) {
  m.def("planes_available() -> bool", []() { return tritium_cpu::current_path() != tritium_cpu::kPortable; });
  m.def("path_supported(str path) -> bool", [](const std::string& name) {
    return tritium_cpu::cpu_supports(tritium_cpu::path_from_name(name));
  });
  m.def("set_path(str path) -> ()", [](const std::string& name) {
    const int path = tritium_cpu::path_from_name(name);
    TORCH_CHECK(tritium_cpu::cpu_supports(path), "tritium CPU kernel: this CPU cannot run the '", name, "' path");
    tritium_cpu::g_path.store(path, std::memory_order_relaxed);
  });
  // The integer kernel packed_linear_a8 runs on the active path, and the codes and scales its quantizer gives.
  m.def("a8_kernel() -> str", []() {
    return std::string(tritium_cpu::kA8KernelNames[tritium_cpu::a8_kernel_for(tritium_cpu::current_path())]);
  });
  m.def("a8_quantize(Tensor x, int group_size, float clip_ratio) -> (Tensor, Tensor)", &tritium_cpu::a8_quantize);
  m.def("active_path() -> str", []() { return std::string(tritium_cpu::kPathNames[tritium_cpu::current_path()]); });
  // The thread count of the OpenMP runtime this library's parallel regions use: it follows
  // torch.set_num_threads only if that runtime is torch's own.
  // The last measured CPU use of other processes (cores), and whether it leaves room for torch's threads.
  m.def("other_processes_cores() -> float", []() {
    tritium_cpu::machine_has_room(at::get_num_threads());
    return tritium_cpu::g_load.other_cores.load();
  });
  m.def("machine_has_room() -> bool", []() { return tritium_cpu::machine_has_room(at::get_num_threads()); });
  m.def("openmp_max_threads() -> int", []() -> int64_t {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
}
