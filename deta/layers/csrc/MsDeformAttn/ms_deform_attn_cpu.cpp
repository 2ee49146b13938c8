// CPU kernels of multi-scale deformable attention, forward and backward.
//
// Layout: value is (N, S, M, D), so the D channels of one head at one
// position form a contiguous row. Each sample computes its four bilinear
// weights once (bilinear_sample, shared with the CUDA kernel) and then runs
// one vector loop over the channels of its four corner rows. The loops are
// software-pipelined: the samples of the next (query, head) are gathered and
// their rows prefetched before the current one is computed, so that the row
// loads, which mostly miss L1, overlap instead of serialising.
//
// Determinism: the forward gives every (batch, query, head) output row to one
// thread. The backward gives every (batch, head) slice of grad_value to one
// thread, so the scatter into it is sequential and no two threads write the
// same element. Only when there are fewer (batch, head) slices than threads
// are the queries of a slice also split into chunks; each extra chunk
// accumulates into its own buffer and the buffers are added in chunk order.
// Results are therefore bit-reproducible on one machine (the AVX2 and the
// baseline builds round differently) for a given torch.get_num_threads().
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "ms_deform_attn.h"

// The fixed-channel helpers return vectors by value; they are always inlined,
// so the ABI note GCC emits for AVX-sized vectors does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// GCC/Clang vector extensions give the fixed-channel kernels explicit SIMD
// accumulators held in registers; other compilers use the generic loops.
#if defined(__GNUC__)
#define DETA_VECTOR_EXT 1
#else
#define DETA_VECTOR_EXT 0
#endif

// setup.py builds for the baseline ISA (SSE2 on x86-64). GCC additionally
// compiles the hot loops for x86-64-v3 (AVX2, FMA); cpu_kernel_isa() picks
// one per call: the AVX2 build where the CPU has it, unless
// $DETA_CPU_KERNEL_ISA says "baseline" (tests run both on one machine).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__)
#define DETA_HAVE_AVX2_BUILD 1
#define DETA_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#else
#define DETA_HAVE_AVX2_BUILD 0
#define DETA_TARGET_AVX2
#endif

// Helpers called from the cloned functions must be inlined into them to run
// with the clone's instruction set.
#if defined(__GNUC__)
#define DETA_INLINE inline __attribute__((always_inline))
#else
#define DETA_INLINE inline
#endif

namespace deta {
namespace {

struct Dims {
  int64_t batch; // N
  int64_t num_value; // S
  int64_t heads; // M
  int64_t channels; // D
  int64_t queries; // Lq
  int64_t levels; // L
  int64_t points; // P
};

Dims get_dims(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return Dims{
      value.size(0),
      value.size(1),
      value.size(2),
      value.size(3),
      sampling_loc.size(1),
      sampling_loc.size(3),
      sampling_loc.size(4)};
}

template <typename scalar_t>
struct Problem {
  Dims d;
  const scalar_t* value;
  const int64_t* shapes;
  const int64_t* starts;
  const scalar_t* loc;
  const scalar_t* attn;
  // Forward output, or the backward's grad_output.
  const scalar_t* grad_out;
  scalar_t* out;
  scalar_t* grad_value;
  scalar_t* grad_loc;
  scalar_t* grad_attn;
  // Backward: chunks per (batch, head) slice and their extra buffers.
  int64_t chunks;
  scalar_t* partial;
};

// Below this many queries per chunk, splitting a (batch, head) slice of the
// backward costs more (an extra grad_value buffer) than it balances.
constexpr int64_t kMinQueriesPerChunk = 256;

// How many queries ahead the backward prefetches its per-query input rows.
constexpr int64_t kPrefetchQueries = 4;

template <typename scalar_t>
DETA_INLINE void prefetch_row(
    const scalar_t* row,
    int64_t channels,
    bool write) {
  const char* p = reinterpret_cast<const char*>(row);
  const int64_t bytes = channels * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t b = 0; b < bytes; b += 64) {
    if (write) {
      __builtin_prefetch(p + b, 1);
    } else {
      __builtin_prefetch(p + b);
    }
  }
}

// Channel-loop kernels. kD > 0 fixes the channel count at compile time (it is
// a multiple of the vector width); kD == 0 handles any count.
template <typename scalar_t, int kD, bool kFixed = (kD > 0 && DETA_VECTOR_EXT)>
struct Rows;

template <typename scalar_t, int kD>
struct Rows<scalar_t, kD, false> {
  // Sum over samples of weight * corner row, for one (query, head).
  struct Accumulator {
    std::vector<scalar_t> acc;
    explicit Accumulator(int64_t channels) : acc(channels) {}
    DETA_INLINE void reset() {
      std::fill(acc.begin(), acc.end(), scalar_t(0));
    }
    DETA_INLINE void add(const scalar_t* const rows[4], const scalar_t w[4]) {
      const int64_t n = static_cast<int64_t>(acc.size());
      scalar_t* a = acc.data();
      const scalar_t *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) {
        a[c] += w[0] * r0[c] + w[1] * r1[c] + w[2] * r2[c] + w[3] * r3[c];
      }
    }
    DETA_INLINE void store(scalar_t* out) const {
      std::copy(acc.begin(), acc.end(), out);
    }
  };

  // dots[k] = <grad, rows[k]>; grad_rows[k] += w[k] * grad.
  static DETA_INLINE void backward(
      const scalar_t* const rows[4],
      scalar_t* const grad_rows[4],
      const scalar_t* grad,
      const scalar_t w[4],
      int64_t n,
      scalar_t dots[4]) {
    const scalar_t *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
    scalar_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
    for (int64_t c = 0; c < n; ++c) {
      d0 += grad[c] * r0[c];
      d1 += grad[c] * r1[c];
      d2 += grad[c] * r2[c];
      d3 += grad[c] * r3[c];
    }
    scalar_t *g0 = grad_rows[0], *g1 = grad_rows[1];
    scalar_t *g2 = grad_rows[2], *g3 = grad_rows[3];
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      g0[c] += w[0] * grad[c];
      g1[c] += w[1] * grad[c];
      g2[c] += w[2] * grad[c];
      g3[c] += w[3] * grad[c];
    }
    dots[0] = d0;
    dots[1] = d1;
    dots[2] = d2;
    dots[3] = d3;
  }
};

#if DETA_VECTOR_EXT
template <typename scalar_t, int kD>
struct Rows<scalar_t, kD, true> {
  typedef scalar_t V __attribute__((vector_size(32)));
  static constexpr int kLanes = 32 / sizeof(scalar_t);
  static constexpr int kVecs = kD / kLanes;
  static_assert(kD % kLanes == 0, "fixed channel count must fill vectors");

  static DETA_INLINE V load(const scalar_t* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  static DETA_INLINE void store(scalar_t* p, const V& v) {
    __builtin_memcpy(p, &v, sizeof(V));
  }
  static DETA_INLINE scalar_t sum(const V& v) {
    scalar_t s = 0;
    for (int i = 0; i < kLanes; ++i) {
      s += v[i];
    }
    return s;
  }

  struct Accumulator {
    V acc[kVecs];
    explicit Accumulator(int64_t) {}
    DETA_INLINE void reset() {
      for (int v = 0; v < kVecs; ++v) {
        acc[v] = V{};
      }
    }
    DETA_INLINE void add(const scalar_t* const rows[4], const scalar_t w[4]) {
      const V w0 = V{} + w[0], w1 = V{} + w[1], w2 = V{} + w[2],
              w3 = V{} + w[3];
#pragma GCC unroll 16
      for (int v = 0; v < kVecs; ++v) {
        const int c = v * kLanes;
        acc[v] += w0 * load(rows[0] + c) + w1 * load(rows[1] + c) +
            w2 * load(rows[2] + c) + w3 * load(rows[3] + c);
      }
    }
    DETA_INLINE void store(scalar_t* out) const {
#pragma GCC unroll 16
      for (int v = 0; v < kVecs; ++v) {
        Rows::store(out + v * kLanes, acc[v]);
      }
    }
  };

  static DETA_INLINE void backward(
      const scalar_t* const rows[4],
      scalar_t* const grad_rows[4],
      const scalar_t* grad,
      const scalar_t w[4],
      int64_t,
      scalar_t dots[4]) {
    V d[4] = {};
    const V w0 = V{} + w[0], w1 = V{} + w[1], w2 = V{} + w[2],
            w3 = V{} + w[3];
#pragma GCC unroll 16
    for (int v = 0; v < kVecs; ++v) {
      const int c = v * kLanes;
      const V g = load(grad + c);
      d[0] += g * load(rows[0] + c);
      d[1] += g * load(rows[1] + c);
      d[2] += g * load(rows[2] + c);
      d[3] += g * load(rows[3] + c);
      // Off-map corners all point at one scratch row; its content is never
      // read, so these stores may alias each other there.
      store(grad_rows[0] + c, load(grad_rows[0] + c) + w0 * g);
      store(grad_rows[1] + c, load(grad_rows[1] + c) + w1 * g);
      store(grad_rows[2] + c, load(grad_rows[2] + c) + w2 * g);
      store(grad_rows[3] + c, load(grad_rows[3] + c) + w3 * g);
    }
    for (int k = 0; k < 4; ++k) {
      dots[k] = sum(d[k]);
    }
  }
};
#endif

// The in-map samples of one (query, head) group: corner rows, weights and the
// fractional positions needed by the backward. Sized for all L * P samples.
template <typename scalar_t>
struct SampleBlock {
  using Row = const scalar_t*;
  int size = 0;
  std::vector<int64_t> sample; // flat index into attn / loc
  std::vector<int64_t> level;
  std::vector<std::array<Row, 4>> rows;
  std::vector<std::array<scalar_t*, 4>> grad_rows; // backward only
  std::vector<std::array<scalar_t, 4>> weight; // attention * bilinear weight
  std::vector<std::array<scalar_t, 4>> bilinear;
  std::vector<std::array<scalar_t, 3>> attn_lx_ly;

  explicit SampleBlock(int64_t capacity)
      : sample(capacity),
        level(capacity),
        rows(capacity),
        grad_rows(capacity),
        weight(capacity),
        bilinear(capacity),
        attn_lx_ly(capacity) {}
};

// Collects the in-map samples of `group` into blk and prefetches their corner
// rows (and, when grad_bm is given, their grad_value rows for writing).
template <typename scalar_t>
DETA_INLINE void gather_group(
    const Problem<scalar_t>& pb,
    int64_t group,
    const scalar_t* value_bm,
    const scalar_t* zeros,
    scalar_t* grad_bm,
    int64_t grad_stride,
    scalar_t* scratch,
    SampleBlock<scalar_t>& blk) {
  const int64_t channels = pb.d.channels;
  const int64_t row_stride = pb.d.heads * channels;
  blk.size = 0;
  for (int64_t l = 0; l < pb.d.levels; ++l) {
    for (int64_t p = 0; p < pb.d.points; ++p) {
      const int64_t i = (group * pb.d.levels + l) * pb.d.points + p;
      BilinearSample<scalar_t> s;
      if (!bilinear_sample(
              pb.loc[2 * i],
              pb.loc[2 * i + 1],
              pb.shapes[2 * l],
              pb.shapes[2 * l + 1],
              pb.starts[l],
              s)) {
        continue;
      }
      const int j = blk.size++;
      const scalar_t a = pb.attn[i];
      blk.sample[j] = i;
      blk.level[j] = l;
      blk.attn_lx_ly[j] = {a, s.lx, s.ly};
      for (int k = 0; k < 4; ++k) {
        const int64_t idx = s.index[k];
        // Off-map corners read a zero row (and write a scratch row), so the
        // channel loops need no branch.
        blk.rows[j][k] = idx >= 0 ? value_bm + idx * row_stride : zeros;
        blk.bilinear[j][k] = s.weight[k];
        blk.weight[j][k] = a * s.weight[k];
        prefetch_row(blk.rows[j][k], channels, false);
        if (grad_bm != nullptr) {
          blk.grad_rows[j][k] =
              idx >= 0 ? grad_bm + idx * grad_stride : scratch;
          prefetch_row(blk.grad_rows[j][k], channels, true);
        }
      }
    }
  }
}

// Groups (batch, query, head) [begin, end). Software-pipelined: the samples of
// the next group are gathered, and their rows prefetched, before the channel
// loops of the current one run, so the row loads overlap with arithmetic.
template <typename scalar_t, int kD>
DETA_INLINE void forward_range(
    const Problem<scalar_t>& pb,
    int64_t begin,
    int64_t end) {
  const Dims& d = pb.d;
  const int64_t row_stride = d.heads * d.channels;
  const std::vector<scalar_t> zeros(d.channels, scalar_t(0));
  typename Rows<scalar_t, kD>::Accumulator acc(d.channels);
  SampleBlock<scalar_t> blocks[2] = {
      SampleBlock<scalar_t>(d.levels * d.points),
      SampleBlock<scalar_t>(d.levels * d.points)};
  for (int64_t group = begin; group <= end; ++group) {
    SampleBlock<scalar_t>& next = blocks[group % 2];
    if (group < end) {
      const int64_t b = group / (d.queries * d.heads);
      const int64_t m = group % d.heads;
      const scalar_t* value_bm =
          pb.value + b * d.num_value * row_stride + m * d.channels;
      scalar_t* no_grad = nullptr;
      gather_group(
          pb, group, value_bm, zeros.data(), no_grad, 0, no_grad, next);
    }
    if (group > begin) {
      const SampleBlock<scalar_t>& blk = blocks[(group - 1) % 2];
      acc.reset();
      for (int j = 0; j < blk.size; ++j) {
        acc.add(blk.rows[j].data(), blk.weight[j].data());
      }
      acc.store(pb.out + (group - 1) * d.channels);
    }
  }
}

// Gradients of the gathered samples of one group whose grad_output row is
// `grad`; the value gradient goes to the block's grad rows.
template <typename scalar_t, int kD>
DETA_INLINE void backward_block(
    const Problem<scalar_t>& pb,
    const SampleBlock<scalar_t>& blk,
    const scalar_t* grad) {
  for (int j = 0; j < blk.size; ++j) {
    // dots[k] = <grad_output row, corner k row>. The sampled value is
    // sum_k bilinear_k * corner_k, so every gradient follows from these four.
    scalar_t dots[4];
    Rows<scalar_t, kD>::backward(
        blk.rows[j].data(),
        blk.grad_rows[j].data(),
        grad,
        blk.weight[j].data(),
        pb.d.channels,
        dots);
    const scalar_t* bw = blk.bilinear[j].data();
    const auto [a, lx, ly] = blk.attn_lx_ly[j];
    const scalar_t hx = scalar_t(1) - lx, hy = scalar_t(1) - ly;
    const int64_t i = blk.sample[j];
    const int64_t l = blk.level[j];
    pb.grad_attn[i] =
        bw[0] * dots[0] + bw[1] * dots[1] + bw[2] * dots[2] + bw[3] * dots[3];
    // x = loc_x * W - 0.5, so d/d(loc_x) = W * d/dx; likewise y and H.
    const scalar_t width = static_cast<scalar_t>(pb.shapes[2 * l + 1]);
    const scalar_t height = static_cast<scalar_t>(pb.shapes[2 * l]);
    pb.grad_loc[2 * i] =
        a * (hy * (dots[1] - dots[0]) + ly * (dots[3] - dots[2])) * width;
    pb.grad_loc[2 * i + 1] =
        a * (hx * (dots[2] - dots[0]) + lx * (dots[3] - dots[1])) * height;
  }
}

// Work units u = (slice, chunk) with slice = (batch, head): all queries of the
// chunk, scattering into the slice's grad_value or the chunk's own buffer.
// Pipelined over queries like forward_range.
template <typename scalar_t, int kD>
DETA_INLINE void backward_range(
    const Problem<scalar_t>& pb,
    int64_t begin,
    int64_t end) {
  const Dims& d = pb.d;
  const int64_t row_stride = d.heads * d.channels;
  const int64_t samples = d.levels * d.points;
  const std::vector<scalar_t> zeros(d.channels, scalar_t(0));
  std::vector<scalar_t> scratch(d.channels);
  SampleBlock<scalar_t> blocks[2] = {
      SampleBlock<scalar_t>(samples), SampleBlock<scalar_t>(samples)};
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t slice = unit / pb.chunks;
    const int64_t chunk = unit % pb.chunks;
    const int64_t b = slice / d.heads;
    const int64_t m = slice % d.heads;
    const scalar_t* value_bm =
        pb.value + b * d.num_value * row_stride + m * d.channels;
    scalar_t* grad_bm =
        pb.grad_value + b * d.num_value * row_stride + m * d.channels;
    int64_t grad_stride = row_stride;
    if (chunk > 0) {
      grad_bm = pb.partial +
          (slice * (pb.chunks - 1) + chunk - 1) * d.num_value * d.channels;
      grad_stride = d.channels;
    }
    const int64_t q_begin = chunk * d.queries / pb.chunks;
    const int64_t q_end = (chunk + 1) * d.queries / pb.chunks;
    for (int64_t q = q_begin; q <= q_end; ++q) {
      const int64_t group = (b * d.queries + q) * d.heads + m;
      if (q + kPrefetchQueries < q_end) {
        // This thread walks one head, so its loc/attn/grad_output rows are
        // strided by M; fetch those of a later query early.
        const int64_t ahead = group + kPrefetchQueries * d.heads;
        prefetch_row(pb.loc + 2 * ahead * samples, 2 * samples, false);
        prefetch_row(pb.attn + ahead * samples, samples, false);
        prefetch_row(pb.grad_out + ahead * d.channels, d.channels, false);
      }
      if (q < q_end) {
        // grad_loc/grad_attn are allocated uninitialised: zero the group's
        // rows here (off-map samples keep 0), while they are cache-hot.
        std::fill_n(
            pb.grad_loc + 2 * group * samples, 2 * samples, scalar_t(0));
        std::fill_n(pb.grad_attn + group * samples, samples, scalar_t(0));
        gather_group(
            pb,
            group,
            value_bm,
            zeros.data(),
            grad_bm,
            grad_stride,
            scratch.data(),
            blocks[q % 2]);
      }
      if (q > q_begin) {
        const int64_t previous = group - d.heads;
        backward_block<scalar_t, kD>(
            pb, blocks[(q - 1) % 2], pb.grad_out + previous * d.channels);
      }
    }
  }
}

// The two builds of each range function: the body is inlined into each, so it
// is compiled once for the baseline ISA and once for AVX2.
template <typename scalar_t, int kD>
void forward_range_baseline(const Problem<scalar_t>& pb, int64_t b, int64_t e) {
  forward_range<scalar_t, kD>(pb, b, e);
}

template <typename scalar_t, int kD>
DETA_TARGET_AVX2 void forward_range_avx2(
    const Problem<scalar_t>& pb,
    int64_t b,
    int64_t e) {
  forward_range<scalar_t, kD>(pb, b, e);
}

template <typename scalar_t, int kD>
void backward_range_baseline(
    const Problem<scalar_t>& pb,
    int64_t b,
    int64_t e) {
  backward_range<scalar_t, kD>(pb, b, e);
}

template <typename scalar_t, int kD>
DETA_TARGET_AVX2 void backward_range_avx2(
    const Problem<scalar_t>& pb,
    int64_t b,
    int64_t e) {
  backward_range<scalar_t, kD>(pb, b, e);
}

bool cpu_has_avx2() {
#if DETA_HAVE_AVX2_BUILD
  static const bool has = __builtin_cpu_supports("x86-64-v3");
  return has;
#else
  return false;
#endif
}

// Fixed-order sum of the extra chunk buffers into grad_value, for (slice,
// position) pairs [begin, end).
template <typename scalar_t>
void reduce_chunks(const Problem<scalar_t>& pb, int64_t begin, int64_t end) {
  const Dims& d = pb.d;
  for (int64_t js = begin; js < end; ++js) {
    const int64_t slice = js / d.num_value;
    const int64_t pos = js % d.num_value;
    const int64_t b = slice / d.heads;
    const int64_t m = slice % d.heads;
    scalar_t* dst = pb.grad_value +
        ((b * d.num_value + pos) * d.heads + m) * d.channels;
    for (int64_t k = 0; k < pb.chunks - 1; ++k) {
      const scalar_t* src = pb.partial +
          ((slice * (pb.chunks - 1) + k) * d.num_value + pos) * d.channels;
#pragma omp simd
      for (int64_t c = 0; c < d.channels; ++c) {
        dst[c] += src[c];
      }
    }
  }
}

// Calls f(std::integral_constant<int, kD>) with kD fixed for the common
// channel counts (DETA uses 32) and 0 for any other.
template <typename F>
void dispatch_channels(int64_t channels, const F& f) {
  switch (channels) {
#if DETA_VECTOR_EXT
    case 32:
      f(std::integral_constant<int, 32>());
      return;
    case 64:
      f(std::integral_constant<int, 64>());
      return;
#endif
    default:
      f(std::integral_constant<int, 0>());
  }
}

template <typename scalar_t>
Problem<scalar_t> make_problem(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight) {
  Problem<scalar_t> pb{};
  pb.d = get_dims(value, sampling_loc);
  pb.value = value.data_ptr<scalar_t>();
  pb.shapes = spatial_shapes.data_ptr<int64_t>();
  pb.starts = level_start_index.data_ptr<int64_t>();
  pb.loc = sampling_loc.data_ptr<scalar_t>();
  pb.attn = attn_weight.data_ptr<scalar_t>();
  pb.chunks = 1;
  return pb;
}

bool use_avx2_kernels() {
  return cpu_kernel_isa() == "avx2";
}

} // namespace

std::string cpu_kernel_isa() {
  // Read on every call (once per op call, not per element), so tests can
  // switch builds within one process.
  const char* requested = std::getenv("DETA_CPU_KERNEL_ISA");
  if (requested != nullptr && std::strcmp(requested, "baseline") == 0) {
    return "baseline";
  }
  return cpu_has_avx2() ? "avx2" : "baseline";
}

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight) {
  const Dims d = get_dims(value, sampling_loc);
  // Every element is written by the kernel.
  at::Tensor out =
      at::empty({d.batch, d.queries, d.heads * d.channels}, value.options());
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(
      value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
        Problem<scalar_t> pb = make_problem<scalar_t>(
            value,
            spatial_shapes,
            level_start_index,
            sampling_loc,
            attn_weight);
        pb.out = out.data_ptr<scalar_t>();
        const int64_t groups = d.batch * d.queries * d.heads;
        dispatch_channels(d.channels, [&](auto kd) {
          // A group is L * P * 4 * D multiply-adds (2.5k in DETA).
          constexpr int kD = decltype(kd)::value;
          const bool avx2 = use_avx2_kernels();
          at::parallel_for(0, groups, 128, [&](int64_t b, int64_t e) {
            if (avx2) {
              forward_range_avx2<scalar_t, kD>(pb, b, e);
            } else {
              forward_range_baseline<scalar_t, kD>(pb, b, e);
            }
          });
        });
      });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc,
    const at::Tensor& attn_weight,
    const at::Tensor& grad_output) {
  const Dims d = get_dims(value, sampling_loc);
  at::Tensor grad_value = at::zeros_like(value);
  // Zeroed group by group inside the kernel.
  at::Tensor grad_loc = at::empty_like(sampling_loc);
  at::Tensor grad_attn = at::empty_like(attn_weight);
  if (grad_output.numel() == 0 || grad_attn.numel() == 0) {
    return {grad_value, grad_loc.zero_(), grad_attn.zero_()};
  }
  const int64_t slices = d.batch * d.heads;
  const int64_t threads = at::get_num_threads();
  int64_t chunks = 1;
  if (slices < threads) {
    chunks = std::min(
        (threads + slices - 1) / slices,
        std::max<int64_t>(1, d.queries / kMinQueriesPerChunk));
  }
  // Chunk k >= 1 of a slice accumulates into its own (S, D) buffer.
  at::Tensor partial = chunks > 1
      ? at::zeros(
            {slices, chunks - 1, d.num_value, d.channels}, value.options())
      : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(
      value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
        Problem<scalar_t> pb = make_problem<scalar_t>(
            value,
            spatial_shapes,
            level_start_index,
            sampling_loc,
            attn_weight);
        pb.grad_out = grad_output.data_ptr<scalar_t>();
        pb.grad_value = grad_value.data_ptr<scalar_t>();
        pb.grad_loc = grad_loc.data_ptr<scalar_t>();
        pb.grad_attn = grad_attn.data_ptr<scalar_t>();
        pb.chunks = chunks;
        pb.partial = chunks > 1 ? partial.data_ptr<scalar_t>() : nullptr;
        dispatch_channels(d.channels, [&](auto kd) {
          constexpr int kD = decltype(kd)::value;
          const bool avx2 = use_avx2_kernels();
          at::parallel_for(0, slices * chunks, 1, [&](int64_t b, int64_t e) {
            if (avx2) {
              backward_range_avx2<scalar_t, kD>(pb, b, e);
            } else {
              backward_range_baseline<scalar_t, kD>(pb, b, e);
            }
          });
        });
        if (chunks > 1) {
          at::parallel_for(
              0, slices * d.num_value, 256, [&](int64_t b, int64_t e) {
                reduce_chunks(pb, b, e);
              });
        }
      });
  return {grad_value, grad_loc, grad_attn};
}

} // namespace deta
