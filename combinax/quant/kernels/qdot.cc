// combinax's quantized matrix-vector product, an XLA FFI handler for the CPU (combinax/quant/kernels/__init__.py
// compiles it with the system compiler against the running jaxlib's FFI headers and registers it).
//
//   y (rows, n) = x (rows, k) . W,   W stored as combinax.quant.QuantizedArray stores a Dense kernel:
//   values (n, groups, group) int8, or (n, groups, group / 2) uint8 holding two 4-bit values a byte (the group's
//   first half in the low nibbles, its second half in the high ones), scale (n, groups) float16, and for q4_1 an
//   offset (n, groups) float16.
//
// Why: XLA:CPU dequantizes each weight into a float32 temporary before its dot, so a decoding step reads each
// weight once as integers, writes it as float32 and reads it again. Here each weight byte is read once and turned
// into arithmetic in registers. Two arithmetics, chosen by the caller:
//   - float activations: the weights are widened to float32 in registers and multiplied with x as it is: the
//     dequantized path's arithmetic (a different order of the same float32 sums);
//   - int8 activations (llama.cpp's Q8_0 x Q8_0 / Q4_x x Q8_0): each row of x is quantized in blocks of 32 (one
//     float scale a block, values rounded half away from zero), and each block's dot is an exact int32 sum
//     (AVX-512 VNNI's vpdpbusd, or AVX2's maddubs), scaled after.
// One binary carries an AVX-512 VNNI, an AVX2 and a portable version of each loop, chosen once at run time.
// The output rows are shared among XLA's intra-op threads in chunks (Ctx<ThreadPool>).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define COMBINAX_X86 1
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Kind : int32_t { kInt8 = 0, kQ4 = 1, kQ4_1 = 2 };
constexpr int64_t kBlock = 32;   // activation block of the int8 arithmetic (Q8_0's)

float HalfToFloat(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF, bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);                 // inf, nan
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);    // normal
  } else if (mantissa == 0) {
    bits = sign;                                                  // zero
  } else {                                                        // subnormal: normalise
    exponent = 113;
    while (!(mantissa & 0x400)) { mantissa <<= 1; --exponent; }
    bits = sign | (exponent << 23) | ((mantissa & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Problem {
  const float* x;            // (rows, k)
  const uint8_t* values;     // (n, groups, bytes_per_group)
  const void* scale;         // (n, groups), float16 (grouped) or float32 (one group a row, per channel)
  const void* offset;        // (n, groups), q4_1 only, the scale's dtype
  bool f32_scales;
  float* y;                  // (rows, n)
  int64_t rows, k, n, groups, group;
  Kind kind;
  // Prepared from x once per call:
  const float* group_sums;   // float arithmetic, 4-bit kinds: (rows, groups) sums of x over each group
  const int8_t* xq;          // int8 arithmetic: (rows, k) quantized x
  const float* xd;           // (rows, k / 32) the blocks' scales
  const float* xs;           // (rows, k / 32) scale * sum of the block's integers (for the 4-bit kinds' offsets)

  float Field(const void* field, int64_t j, int64_t g) const {
    const int64_t i = j * groups + g;
    return f32_scales ? static_cast<const float*>(field)[i] : HalfToFloat(static_cast<const uint16_t*>(field)[i]);
  }
  float Scale(int64_t j, int64_t g) const { return Field(scale, j, g); }
  int64_t group_bytes() const { return kind == kInt8 ? group : group / 2; }
  const uint8_t* row_values(int64_t j) const { return values + j * groups * group_bytes(); }
  // What a group adds per unit of sum(x) beyond scale * sum(q x): -8 scale (q4), the offset (q4_1), 0 (int8).
  float shift(int64_t j, int64_t g, float d) const {
    return kind == kQ4 ? -8.0f * d : kind == kQ4_1 ? Field(offset, j, g) : 0.0f;
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Portable loops: the reference every vector version is tested against (same sums, in the same blocks).

void FloatRowsPortable(const Problem& p, int64_t j0, int64_t j1) {
  const int64_t half = p.group / 2;
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* w = p.row_values(j);
    for (int64_t r = 0; r < p.rows; ++r) {
      const float* x = p.x + r * p.k;
      float acc = 0.0f;
      for (int64_t g = 0; g < p.groups; ++g) {
        const float d = p.Scale(j, g);
        const float* xg = x + g * p.group;
        float sum = 0.0f;
        if (p.kind == kInt8) {
          const int8_t* q = reinterpret_cast<const int8_t*>(w) + g * p.group;
          for (int64_t i = 0; i < p.group; ++i) sum += float(q[i]) * xg[i];
        } else {
          const uint8_t* q = w + g * half;
          for (int64_t i = 0; i < half; ++i) sum += float(q[i] & 0x0F) * xg[i] + float(q[i] >> 4) * xg[half + i];
        }
        acc += d * sum;
        if (p.kind != kInt8) acc += p.shift(j, g, d) * p.group_sums[r * p.groups + g];
      }
      p.y[r * p.n + j] = acc;
    }
  }
}

void IntRowsPortable(const Problem& p, int64_t j0, int64_t j1) {
  const int64_t blocks = p.k / kBlock, per_group = p.group / kBlock;
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* w = p.row_values(j);
    for (int64_t r = 0; r < p.rows; ++r) {
      const int8_t* xq = p.xq + r * p.k;
      float acc = 0.0f;
      for (int64_t t = 0; t < blocks; ++t) {
        const int64_t g = t / per_group;
        const float d = p.Scale(j, g);
        int32_t dot = 0;
        if (p.kind == kInt8) {
          const int8_t* q = reinterpret_cast<const int8_t*>(w) + t * kBlock;
          for (int64_t i = 0; i < kBlock; ++i) dot += int32_t(q[i]) * xq[t * kBlock + i];
        } else {   // 4-bit kinds have groups of 32: block t is group t
          const uint8_t* q = w + t * (kBlock / 2);
          for (int64_t i = 0; i < kBlock / 2; ++i)
            dot += int32_t(q[i] & 0x0F) * xq[t * kBlock + i] + int32_t(q[i] >> 4) * xq[t * kBlock + 16 + i];
        }
        acc += d * p.xd[r * blocks + t] * float(dot);
        if (p.kind != kInt8) acc += p.shift(j, g, d) * p.xs[r * blocks + t];
      }
      p.y[r * p.n + j] = acc;
    }
  }
}

#ifdef COMBINAX_X86
// ---------------------------------------------------------------------------------------------------------------
// AVX2 + FMA (+ F16C): 8 floats a register.

// A scale or offset by F16C's conversion: the software one (HalfToFloat), once per block of 32 weights, took as
// long as the block's arithmetic.
__attribute__((target("avx2,fma,f16c"))) inline float FieldF16c(const Problem& p, const void* field, int64_t j,
                                                               int64_t g) {
  const int64_t i = j * p.groups + g;
  return p.f32_scales ? static_cast<const float*>(field)[i] : _cvtsh_ss(static_cast<const uint16_t*>(field)[i]);
}

__attribute__((target("avx2,fma,f16c"))) inline float ShiftF16c(const Problem& p, int64_t j, int64_t g, float d) {
  return p.kind == kQ4 ? -8.0f * d : p.kind == kQ4_1 ? FieldF16c(p, p.offset, j, g) : 0.0f;
}

__attribute__((target("avx2,fma,f16c"))) inline float Sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 32 4-bit values of a group of 32 (16 bytes) as 32 bytes in element order: low nibbles, then high ones.
__attribute__((target("avx2,fma,f16c"))) inline __m256i Nibbles32(const uint8_t* q) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  const __m128i mask = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), _mm_and_si128(packed, mask));
}

// Float arithmetic, up to 4 rows of x at once (each weight widened once for all of them).
template <int R>
__attribute__((target("avx2,fma,f16c"))) void FloatTileAvx2(const Problem& p, int64_t j, int64_t r0) {
  const uint8_t* w = p.row_values(j);
  __m256 acc[R];
  float tail[R];
  for (int r = 0; r < R; ++r) { acc[r] = _mm256_setzero_ps(); tail[r] = 0.0f; }
  for (int64_t g = 0; g < p.groups; ++g) {
    const float d = FieldF16c(p, p.scale, j, g);
    const __m256 dv = _mm256_set1_ps(d);
    __m256 sum[R];
    for (int r = 0; r < R; ++r) sum[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < p.group; b += kBlock) {
      __m256 wv[4];
      if (p.kind == kInt8) {
        const int8_t* q = reinterpret_cast<const int8_t*>(w) + g * p.group + b;
        for (int i = 0; i < 4; ++i)
          wv[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * i))));
      } else {
        const __m256i q = Nibbles32(w + g * (p.group / 2));
        const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
        wv[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
        wv[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
        wv[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
        wv[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
      }
      for (int r = 0; r < R; ++r) {
        const float* x = p.x + (r0 + r) * p.k + g * p.group + b;
        for (int i = 0; i < 4; ++i) sum[r] = _mm256_fmadd_ps(wv[i], _mm256_loadu_ps(x + 8 * i), sum[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_fmadd_ps(sum[r], dv, acc[r]);
      if (p.kind != kInt8) tail[r] += ShiftF16c(p, j, g, d) * p.group_sums[(r0 + r) * p.groups + g];
    }
  }
  for (int r = 0; r < R; ++r) p.y[(r0 + r) * p.n + j] = Sum8(acc[r]) + tail[r];
}

// |w| . sign(x, w) (the sign moved onto the signed side, as maddubs wants an unsigned one) summed in pairs of
// 16-bit products, then into 8 int32 lanes: exact (each pair's sum is at most 2 x 127 x 127 < 2^15).
__attribute__((target("avx2,fma,f16c"))) inline __m256i DotI8Avx2(__m256i w, __m256i x, bool w_unsigned) {
  const __m256i u = w_unsigned ? w : _mm256_sign_epi8(w, w);
  const __m256i s = w_unsigned ? x : _mm256_sign_epi8(x, w);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// The int8 arithmetic's tile, one body for both instruction sets: a function per target (the target attribute must
// differ, and GCC inlines nothing across targets), each with its own block dot.
#define COMBINAX_INT_TILE(NAME, TARGET, DOT)                                                                      \
  template <int R>                                                                                              \
  __attribute__((target(TARGET))) void NAME(const Problem& p, int64_t j, int64_t r0) {                          \
    const uint8_t* w = p.row_values(j);                                                                         \
    const int64_t blocks = p.k / kBlock, per_group = p.group / kBlock;                                          \
    __m256 acc[R];                                                                                              \
    float tail[R];                                                                                              \
    for (int r = 0; r < R; ++r) { acc[r] = _mm256_setzero_ps(); tail[r] = 0.0f; }                               \
    for (int64_t t = 0; t < blocks; ++t) {                                                                      \
      const int64_t g = t / per_group;                                                                          \
      const float d = FieldF16c(p, p.scale, j, g);                                                              \
      const bool four = p.kind != kInt8;                                                                        \
      const __m256i q = four ? Nibbles32(w + t * (kBlock / 2))                                                  \
                             : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + t * kBlock));            \
      const float c = four ? ShiftF16c(p, j, g, d) : 0.0f;                                                      \
      for (int r = 0; r < R; ++r) {                                                                             \
        const __m256i x =                                                                                       \
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.xq + (r0 + r) * p.k + t * kBlock));           \
        const __m256 dot = _mm256_cvtepi32_ps(DOT(q, x, four));                                                 \
        acc[r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(d * p.xd[(r0 + r) * blocks + t]), acc[r]);                 \
        if (four) tail[r] += c * p.xs[(r0 + r) * blocks + t];                                                   \
      }                                                                                                         \
    }                                                                                                           \
    for (int r = 0; r < R; ++r) p.y[(r0 + r) * p.n + j] = Sum8(acc[r]) + tail[r];                               \
  }

COMBINAX_INT_TILE(IntTileAvx2, "avx2,fma,f16c", DotI8Avx2)

// ---------------------------------------------------------------------------------------------------------------
// AVX-512 VNNI (on 256-bit registers, AVX512VL: vpdpbusd multiplies unsigned by signed bytes and adds the four
// products of each int32 lane in one instruction).

__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
inline __m256i DotI8Vnni(__m256i w, __m256i x, bool w_unsigned) {
  const __m256i u = w_unsigned ? w : _mm256_sign_epi8(w, w);
  const __m256i s = w_unsigned ? x : _mm256_sign_epi8(x, w);
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}

COMBINAX_INT_TILE(IntTileVnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", DotI8Vnni)
#undef COMBINAX_INT_TILE
#endif  // COMBINAX_X86

enum class Isa { kPortable, kAvx2, kVnni };

Isa Detect() {
#ifdef COMBINAX_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (avx2 && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vnni"))
    return Isa::kVnni;
  if (avx2) return Isa::kAvx2;
#endif
  return Isa::kPortable;
}

Isa ChosenIsa() {
  static const Isa isa = [] {
    const char* forced = std::getenv("COMBINAX_QDOT_ISA");   // tests compare the versions on one machine
    const Isa best = Detect();
    if (forced == nullptr) return best;
    const Isa asked = std::strcmp(forced, "portable") == 0 ? Isa::kPortable
                      : std::strcmp(forced, "avx2") == 0   ? Isa::kAvx2
                                                           : Isa::kVnni;
    return std::min(asked, best);
  }();
  return isa;
}

// Output rows j0..j1, every row of x, in tiles of up to 4 rows of x.
void RunRows(const Problem& p, bool int8_activations, int64_t j0, int64_t j1) {
  const Isa isa = ChosenIsa();
  if (isa == Isa::kPortable) {
    (int8_activations ? IntRowsPortable : FloatRowsPortable)(p, j0, j1);
    return;
  }
#ifdef COMBINAX_X86
  using TileFn = void (*)(const Problem&, int64_t, int64_t);
  TileFn tiles[5];
  if (!int8_activations) {
    tiles[1] = FloatTileAvx2<1>; tiles[2] = FloatTileAvx2<2>; tiles[3] = FloatTileAvx2<3>; tiles[4] = FloatTileAvx2<4>;
  } else if (isa == Isa::kVnni) {
    tiles[1] = IntTileVnni<1>; tiles[2] = IntTileVnni<2>; tiles[3] = IntTileVnni<3>; tiles[4] = IntTileVnni<4>;
  } else {
    tiles[1] = IntTileAvx2<1>; tiles[2] = IntTileAvx2<2>; tiles[3] = IntTileAvx2<3>; tiles[4] = IntTileAvx2<4>;
  }
  for (int64_t j = j0; j < j1; ++j)
    for (int64_t r = 0; r < p.rows; r += 4) tiles[std::min<int64_t>(4, p.rows - r)](p, j, r);
#endif
}

// Q8_0's quantization of one row of x: blocks of 32, scale max|x| / 127, values rounded half away from zero.
void QuantizeRow(const float* x, int64_t k, int8_t* q, float* d, float* s) {
  for (int64_t t = 0; t < k / kBlock; ++t) {
    const float* b = x + t * kBlock;
    float amax = 0.0f;
    for (int64_t i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(b[i]));
    const float scale = amax / 127.0f, inverse = scale != 0.0f ? 1.0f / scale : 0.0f;
    int32_t sum = 0;
    for (int64_t i = 0; i < kBlock; ++i) {
      const int32_t v = int32_t(std::round(b[i] * inverse));
      q[t * kBlock + i] = int8_t(v);
      sum += v;
    }
    d[t] = scale;
    s[t] = scale * float(sum);
  }
}

// Chunks of output rows shared by the calling thread and XLA's pool: each takes the next chunk until none are
// left, so a task the pool starts late finds nothing to do (and the caller never waits on one that has not begun).
struct Shared {
  std::atomic<int64_t> next{0}, done{0};
};

// values (layers, n, groups, bytes), scale and offset (layers, n, groups): a stack of weights, of which `layer` is
// the one multiplied. A layer of a scanned stack is read where it lies: sliced out first, as XLA would do for a
// custom call's operand, each weight was copied (0.9 MB for SmolLM2's feed-forward kernels) before being read.
ffi::Error QdotImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer values,
                    ffi::AnyBuffer scale, ffi::AnyBuffer offset, ffi::Buffer<ffi::S32> layer,
                    ffi::ResultBuffer<ffi::F32> y, int32_t kind, int32_t int8_activations) {
  const auto xd = x.dimensions(), vd = values.dimensions(), sd = scale.dimensions();
  if (xd.size() != 2 || vd.size() != 4 || sd.size() != 3 || layer.element_count() != 1)
    return ffi::Error::InvalidArgument("combinax_qdot: x (rows, k), values (layers, n, groups, bytes), scale "
                                       "(layers, n, groups), layer ()");
  if (kind < kInt8 || kind > kQ4_1) return ffi::Error::InvalidArgument("combinax_qdot: kind is 0, 1 or 2");
  Problem p{};
  p.kind = Kind(kind);
  p.rows = xd[0];
  p.k = xd[1];
  const int64_t layers = vd[0];
  p.n = vd[1];
  p.groups = vd[2];
  p.group = vd[3] * (kind == kInt8 ? 1 : 2);
  if (p.groups * p.group != p.k || sd[0] != layers || sd[1] != p.n || sd[2] != p.groups || p.group % kBlock ||
      (kind != kInt8 && p.group != kBlock))
    return ffi::Error::InvalidArgument("combinax_qdot: shapes disagree, or groups not of 32 (4-bit) / 32k (int8)");
  if (scale.element_type() != offset.element_type() ||
      (scale.element_type() != ffi::F16 && scale.element_type() != ffi::F32))
    return ffi::Error::InvalidArgument("combinax_qdot: scale and offset both float16 or both float32");
  // An index past the stack is clamped, as lax.dynamic_index_in_dim clamps it.
  const int64_t l = std::min<int64_t>(std::max<int64_t>(layer.typed_data()[0], 0), layers - 1);
  const int64_t scale_bytes = scale.element_type() == ffi::F32 ? 4 : 2;
  p.x = x.typed_data();
  p.values = static_cast<const uint8_t*>(values.untyped_data()) + l * p.n * p.groups * vd[3];
  p.f32_scales = scale_bytes == 4;
  p.scale = static_cast<const uint8_t*>(scale.untyped_data()) + l * p.n * p.groups * scale_bytes;
  p.offset = static_cast<const uint8_t*>(offset.untyped_data()) + l * p.n * p.groups * scale_bytes;
  p.y = y->typed_data();

  std::vector<float> group_sums, block_scales, block_sums;
  std::vector<int8_t> xq;
  if (int8_activations) {
    const int64_t blocks = p.k / kBlock;
    xq.resize(p.rows * p.k);
    block_scales.resize(p.rows * blocks);
    block_sums.resize(p.rows * blocks);
    for (int64_t r = 0; r < p.rows; ++r)
      QuantizeRow(p.x + r * p.k, p.k, xq.data() + r * p.k, block_scales.data() + r * blocks,
                  block_sums.data() + r * blocks);
    p.xq = xq.data();
    p.xd = block_scales.data();
    p.xs = block_sums.data();
  } else if (kind != kInt8) {
    group_sums.resize(p.rows * p.groups);
    for (int64_t r = 0; r < p.rows; ++r)
      for (int64_t g = 0; g < p.groups; ++g) {
        float s = 0.0f;
        for (int64_t i = 0; i < p.group; ++i) s += p.x[r * p.k + g * p.group + i];
        group_sums[r * p.groups + g] = s;
      }
    p.group_sums = group_sums.data();
  }

  // Chunks of about 32 KiB of weights (at least 8 output rows), so that 2 threads share even a 576 x 192 weight.
  const int64_t row_bytes = p.groups * p.group_bytes();
  const int64_t chunk = std::max<int64_t>(8, (32 << 10) / std::max<int64_t>(1, row_bytes));
  const int64_t chunks = (p.n + chunk - 1) / chunk;
  // The calling thread works too: XLA's pool has a thread per core, so one fewer helper keeps a thread per core.
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, chunks - 1);
  const bool int8 = int8_activations != 0;
  if (helpers <= 0) {
    RunRows(p, int8, 0, p.n);
    return ffi::Error::Success();
  }
  auto shared = std::make_shared<Shared>();
  auto work = [shared, p, int8, chunk, chunks]() {
    for (int64_t c; (c = shared->next.fetch_add(1)) < chunks;) {
      RunRows(p, int8, c * chunk, std::min(p.n, (c + 1) * chunk));
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));   // a copy each: Schedule owns it
  work();
  while (shared->done.load(std::memory_order_acquire) < chunks) {
#ifdef COMBINAX_X86
    _mm_pause();
#else
    std::this_thread::yield();
#endif
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CombinaxQdot, QdotImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("kind")
                                  .Attr<int32_t>("int8_activations"));

// Which vector version runs here: 0 portable, 1 AVX2, 2 AVX-512 VNNI (the Python side says it once).
extern "C" int CombinaxQdotIsa() { return static_cast<int>(ChosenIsa()); }
