// oneDNN 2-D convolutions (forward, input gradient, kernel gradient) as XLA FFI handlers.
//
// Layouts are jaxcnn's: activations NHWC, kernels HWIO, cross-correlation, explicit (lo, hi)
// padding per spatial axis, no dilation, no groups. Operands (x, w, dy) are float32, or all
// bfloat16, which oneDNN multiplies natively and accumulates in float32. Results (y, dx, dw)
// have the operands' dtype or are float32 (bfloat16 operands, float32 results: only the
// products are rounded). A bias is float32 and only with float32 operands:
//
//   y[n, p, q, o] = sum_{i, j, c} xp[n, p*sh + i, q*sw + j, c] * w[i, j, c, o]
//
// Activations stay NHWC (oneDNN's AVX2/AVX-512 kernels read and write it directly). The kernel
// is handed to oneDNN as HWIO and reordered, when the chosen implementation prefers a blocked
// layout, into a per-thread buffer (weights are small: at most a few MB). Primitives are cached
// per shape, so after the first call of a shape only the execution remains.
//
// Built on first use by jaxcnn/ops/onednn/build.py (g++ against the onednn-devel headers and
// the onednn wheel's libdnnl).

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "oneapi/dnnl/dnnl_version.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::algorithm;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// One convolution problem: x (N, H, W, C), w (kh, kw, C, O), y (N, Ho, Wo, O).
// With ``bias``, the forward pass adds a (O,) bias and the kernel gradient also gives its
// gradient (both fused into oneDNN's kernels).
struct Problem {
  int64_t n, h, w, c, kh, kw, o, ho, wo, sh, sw, pt, pb, pl, pr;
  bool bias = false;
  dt type = dt::f32;    // of the operands: x, w and dy
  dt result = dt::f32;  // of the results: y, dx and dw
  auto key() const {
    return std::make_tuple(n, h, w, c, kh, kw, o, sh, sw, pt, pb, pl, pr, bias,
                           static_cast<int>(type), static_cast<int>(result));
  }
};

// oneDNN's logical dims are (N, C, H, W) and (O, I, kh, kw); the tag gives the memory layout.
// x or dx, y or dy, and w or dw, in data type ``t``.
memory::desc src_md(const Problem& p, dt t) { return {{p.n, p.c, p.h, p.w}, t, tag::nhwc}; }
memory::desc dst_md(const Problem& p, dt t) { return {{p.n, p.o, p.ho, p.wo}, t, tag::nhwc}; }
memory::desc user_weights_md(const Problem& p, dt t) {
  return {{p.o, p.c, p.kh, p.kw}, t, tag::hwio};
}
memory::desc any_weights_md(const Problem& p, dt t) {
  return {{p.o, p.c, p.kh, p.kw}, t, tag::any};
}
memory::desc bias_md(const Problem& p) { return {{p.o}, dt::f32, tag::x}; }

// User-managed scratchpad: each execution gets its own (see execute_with_scratchpad), so one
// primitive may run on several XLA threads at once (two layers of the same shape).
dnnl::primitive_attr deterministic_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
#if DNNL_VERSION_MAJOR > 3 || (DNNL_VERSION_MAJOR == 3 && DNNL_VERSION_MINOR >= 4)
  attr.set_deterministic(true);  // the CPU kernels are deterministic anyway; this pins it.
#endif
  return attr;
}

// A reorder between two layouts of the kernel, created once (nothing to do when they are
// equal). Creating a reorder per call cost 0.1-0.4 ms, about a convolution's 2-3%.
struct LayoutChange {
  bool needed = false;
  dnnl::reorder::primitive_desc pd;
  dnnl::reorder prim;

  LayoutChange() = default;
  LayoutChange(const memory::desc& from, const memory::desc& to) : needed(from != to) {
    if (!needed) return;
    auto& eng = cpu_engine();
    pd = dnnl::reorder::primitive_desc(eng, from, eng, to, deterministic_attr());
    prim = dnnl::reorder(pd);
  }
};

// The three primitives of one problem and the kernel reorders they need, created once.
struct Primitives {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_backward_weights bwd_weights;
  LayoutChange to_fwd_weights, to_bwd_data_weights, from_diff_weights;

  explicit Primitives(const Problem& p) {
    auto& eng = cpu_engine();
    memory::dims strides{p.sh, p.sw}, pad_l{p.pt, p.pl}, pad_r{p.pb, p.pr};
    auto attr = deterministic_attr();
    // Operands in p.type, results in p.result: y = conv(x, w), dx from (dy, w), dw from (x, dy).
    auto x_md = src_md(p, p.type), dx_md = src_md(p, p.result);
    auto y_md = dst_md(p, p.result), dy_md = dst_md(p, p.type);
    auto w_md = any_weights_md(p, p.type), dw_md = any_weights_md(p, p.result);
    fwd_pd = p.bias ? dnnl::convolution_forward::primitive_desc(
                          eng, dnnl::prop_kind::forward_training, algorithm::convolution_direct,
                          x_md, w_md, bias_md(p), y_md, strides, pad_l, pad_r, attr)
                    : dnnl::convolution_forward::primitive_desc(
                          eng, dnnl::prop_kind::forward_training, algorithm::convolution_direct,
                          x_md, w_md, y_md, strides, pad_l, pad_r, attr);
    fwd = dnnl::convolution_forward(fwd_pd);
    bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
        eng, algorithm::convolution_direct, dx_md, w_md, dy_md, strides, pad_l, pad_r, fwd_pd,
        attr);
    bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
    bwd_weights_pd =
        p.bias ? dnnl::convolution_backward_weights::primitive_desc(
                     eng, algorithm::convolution_direct, x_md, dw_md, bias_md(p), dy_md,
                     strides, pad_l, pad_r, fwd_pd, attr)
               : dnnl::convolution_backward_weights::primitive_desc(
                     eng, algorithm::convolution_direct, x_md, dw_md, dy_md, strides, pad_l,
                     pad_r, fwd_pd, attr);
    bwd_weights = dnnl::convolution_backward_weights(bwd_weights_pd);
    to_fwd_weights = LayoutChange(user_weights_md(p, p.type), fwd_pd.weights_desc());
    to_bwd_data_weights = LayoutChange(user_weights_md(p, p.type), bwd_data_pd.weights_desc());
    from_diff_weights =
        LayoutChange(bwd_weights_pd.diff_weights_desc(), user_weights_md(p, p.result));
  }
};

// What a per-thread buffer holds (one buffer each).
enum BufferRole { kScratchpad = 0, kWeights = 1, kDiffWeights = 2, kNumRoles = 3 };

// Memory of ``desc`` in a buffer owned by the calling thread and reused across calls, 64-byte
// aligned. A fresh allocation per call costs page faults: for the scratchpad it tripled the
// time of the smallest convolutions; memory oneDNN allocates itself (this SYCL build maps it
// through the OpenCL runtime) was five mmap/munmap pairs per cnn3 step.
memory thread_memory(const memory::desc& desc, BufferRole role) {
  thread_local std::vector<char> buffers[kNumRoles];
  auto& buffer = buffers[role];
  size_t need = desc.get_size() + 64;
  if (buffer.size() < need) buffer.resize(need);
  auto addr = reinterpret_cast<std::uintptr_t>(buffer.data());
  void* aligned = reinterpret_cast<void*>((addr + 63) & ~static_cast<std::uintptr_t>(63));
  return memory(desc, cpu_engine(), aligned);
}

// Runs ``prim`` with a scratchpad (described by ``pd``, in a per-thread buffer) added to
// ``args``.
template <typename PrimitiveDesc>
void execute_with_scratchpad(const dnnl::primitive& prim, const PrimitiveDesc& pd,
                             dnnl::stream& s, std::unordered_map<int, memory> args) {
  args.insert({DNNL_ARG_SCRATCHPAD, thread_memory(pd.scratchpad_desc(), kScratchpad)});
  prim.execute(s, args);
  s.wait();
}

Primitives& primitives_for(const Problem& p) {
  static std::mutex mu;
  static std::map<decltype(p.key()), std::unique_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[p.key()];
  if (!slot) slot = std::make_unique<Primitives>(p);
  return *slot;
}

// A stream borrowed for one call from a process-wide pool, returned when the call ends.
// Creating a stream costs about 0.1 ms with this SYCL build (a fifth of a small
// convolution); the pool keeps one per concurrent call. Its streams are never destroyed, so no
// stream outlives the runtime at exit or dies with an XLA thread.
class PooledStream {
 public:
  PooledStream() {
    std::lock_guard<std::mutex> lock(mu());
    if (free_list().empty()) {
      stream_ = new dnnl::stream(cpu_engine());
    } else {
      stream_ = free_list().back();
      free_list().pop_back();
    }
  }
  ~PooledStream() {
    std::lock_guard<std::mutex> lock(mu());
    free_list().push_back(stream_);
  }
  PooledStream(const PooledStream&) = delete;
  PooledStream& operator=(const PooledStream&) = delete;
  dnnl::stream& get() { return *stream_; }

 private:
  static std::mutex& mu() {
    static auto* m = new std::mutex;
    return *m;
  }
  static std::vector<dnnl::stream*>& free_list() {
    static auto* v = new std::vector<dnnl::stream*>;
    return *v;
  }
  dnnl::stream* stream_;
};

// The kernel as ``change`` wants it: the user's HWIO buffer itself, or a reordered copy in a
// per-thread buffer.
memory weights_as(const LayoutChange& change, const Problem& p, void* hwio, dnnl::stream& s) {
  memory user(user_weights_md(p, p.type), cpu_engine(), hwio);
  if (!change.needed) return user;
  memory blocked = thread_memory(change.pd.dst_desc(), kWeights);
  execute_with_scratchpad(change.prim, change.pd, s,
                          {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, blocked}});
  return blocked;
}

// The oneDNN type of a buffer: float32 or bfloat16, else an error.
ffi::Error onednn_type(const ffi::AnyBuffer& a, dt* type) {
  if (a.element_type() == ffi::DataType::F32) {
    *type = dt::f32;
  } else if (a.element_type() == ffi::DataType::BF16) {
    *type = dt::bf16;
  } else {
    return ffi::Error::InvalidArgument("onednn conv: dtype must be float32 or bfloat16");
  }
  return ffi::Error::Success();
}

// The operands' type (of ``a`` and ``b``, which must agree) and the result's (of ``r``): the
// operands' own, or float32.
ffi::Error operand_and_result_types(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b,
                                    const ffi::AnyBuffer& r, Problem* p) {
  if (a.element_type() != b.element_type()) {
    return ffi::Error::InvalidArgument("onednn conv: the two operands must have one dtype");
  }
  auto err = onednn_type(a, &p->type);
  if (err.failure()) return err;
  err = onednn_type(r, &p->result);
  if (err.failure()) return err;
  if (p->result != p->type && p->result != dt::f32) {
    return ffi::Error::InvalidArgument(
        "onednn conv: the result must have the operands' dtype or be float32");
  }
  return ffi::Error::Success();
}

ffi::Error problem_from(const ffi::AnyBuffer& xb, const ffi::AnyBuffer& wb,
                        const ffi::AnyBuffer& yb, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr, Problem* p) {
  auto x = xb.dimensions(), wt = wb.dimensions(), y = yb.dimensions();
  if (x.size() != 4 || wt.size() != 4 || y.size() != 4) {
    return ffi::Error::InvalidArgument("onednn conv: x, kernel and y must be rank 4");
  }
  *p = Problem{x[0], x[1], x[2], x[3], wt[0], wt[1], wt[3], y[1], y[2], sh, sw, pt, pb, pl, pr};
  if (wt[2] != x[3] || y[0] != x[0] || y[3] != wt[3]) {
    return ffi::Error::InvalidArgument("onednn conv: inconsistent shapes");
  }
  if (p->ho != (p->h + pt + pb - p->kh) / sh + 1 || p->wo != (p->w + pl + pr - p->kw) / sw + 1) {
    return ffi::Error::InvalidArgument("onednn conv: output size does not match the padding");
  }
  return ffi::Error::Success();
}

// y = conv(x, w) (+ b when ``b`` is not null).
ffi::Error forward(ffi::AnyBuffer& x, ffi::AnyBuffer& w, float* b, ffi::Result<ffi::AnyBuffer>& y,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Problem p;
  auto err = problem_from(x, w, *y, sh, sw, pt, pb, pl, pr, &p);
  if (err.failure()) return err;
  err = operand_and_result_types(x, w, *y, &p);
  if (err.failure()) return err;
  p.bias = b != nullptr;
  if (p.bias && p.type != dt::f32) {
    return ffi::Error::InvalidArgument("onednn conv: a bias needs float32 operands");
  }
  try {
    auto& prims = primitives_for(p);
    auto& eng = cpu_engine();
    PooledStream pooled;
    auto& s = pooled.get();
    memory src(src_md(p, p.type), eng, x.untyped_data());
    memory dst(dst_md(p, p.result), eng, y->untyped_data());
    memory wts = weights_as(prims.to_fwd_weights, p, w.untyped_data(), s);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wts}, {DNNL_ARG_DST, dst}};
    if (p.bias) args.insert({DNNL_ARG_BIAS, memory(bias_md(p), eng, b)});
    execute_with_scratchpad(prims.fwd, prims.fwd_pd, s, args);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution forward: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error conv_forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                        int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return forward(x, w, nullptr, y, sh, sw, pt, pb, pl, pr);
}

ffi::Error conv_forward_bias(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Buffer<ffi::F32> b,
                             ffi::Result<ffi::AnyBuffer> y, int64_t sh, int64_t sw, int64_t pt,
                             int64_t pb, int64_t pl, int64_t pr) {
  if (b.element_count() != static_cast<size_t>(w.dimensions()[3])) {
    return ffi::Error::InvalidArgument("onednn conv: bias must have C_out elements");
  }
  return forward(x, w, b.typed_data(), y, sh, sw, pt, pb, pl, pr);
}

// dx from dy and w.
ffi::Error conv_backward_data(ffi::AnyBuffer dy, ffi::AnyBuffer w,
                              ffi::Result<ffi::AnyBuffer> dx, int64_t sh, int64_t sw, int64_t pt,
                              int64_t pb, int64_t pl, int64_t pr) {
  Problem p;
  auto err = problem_from(*dx, w, dy, sh, sw, pt, pb, pl, pr, &p);
  if (err.failure()) return err;
  err = operand_and_result_types(dy, w, *dx, &p);
  if (err.failure()) return err;
  try {
    auto& prims = primitives_for(p);
    auto& eng = cpu_engine();
    PooledStream pooled;
    auto& s = pooled.get();
    memory diff_dst(dst_md(p, p.type), eng, dy.untyped_data());
    memory diff_src(src_md(p, p.result), eng, dx->untyped_data());
    memory wts = weights_as(prims.to_bwd_data_weights, p, w.untyped_data(), s);
    execute_with_scratchpad(
        prims.bwd_data, prims.bwd_data_pd, s,
        {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, wts}, {DNNL_ARG_DIFF_SRC, diff_src}});
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution input gradient: ") + e.what());
  }
  return ffi::Error::Success();
}

// dw (HWIO) from x and dy, and db = sum of dy over (N, Ho, Wo) when ``db`` is not null.
ffi::Error backward_weights(ffi::AnyBuffer& x, ffi::AnyBuffer& dy, ffi::Result<ffi::AnyBuffer>& dw,
                            float* db, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                            int64_t pr) {
  Problem p;
  auto err = problem_from(x, *dw, dy, sh, sw, pt, pb, pl, pr, &p);
  if (err.failure()) return err;
  err = operand_and_result_types(x, dy, *dw, &p);
  if (err.failure()) return err;
  p.bias = db != nullptr;
  if (p.bias && p.type != dt::f32) {
    return ffi::Error::InvalidArgument("onednn conv: a bias needs float32 operands");
  }
  try {
    auto& prims = primitives_for(p);
    auto& eng = cpu_engine();
    PooledStream pooled;
    auto& s = pooled.get();
    memory src(src_md(p, p.type), eng, x.untyped_data());
    memory diff_dst(dst_md(p, p.type), eng, dy.untyped_data());
    memory user(user_weights_md(p, p.result), eng, dw->untyped_data());
    const auto& change = prims.from_diff_weights;
    memory diff_w = change.needed ? thread_memory(change.pd.src_desc(), kDiffWeights) : user;
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_w}};
    if (p.bias) args.insert({DNNL_ARG_DIFF_BIAS, memory(bias_md(p), eng, db)});
    execute_with_scratchpad(prims.bwd_weights, prims.bwd_weights_pd, s, args);
    if (change.needed) {
      execute_with_scratchpad(change.prim, change.pd, s,
                              {{DNNL_ARG_FROM, diff_w}, {DNNL_ARG_TO, user}});
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution kernel gradient: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error conv_backward_weights(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                                 ffi::Result<ffi::AnyBuffer> dw, int64_t sh, int64_t sw,
                                 int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return backward_weights(x, dy, dw, nullptr, sh, sw, pt, pb, pl, pr);
}

ffi::Error conv_backward_weights_bias(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                                      ffi::Result<ffi::AnyBuffer> dw,
                                      ffi::ResultBuffer<ffi::F32> db, int64_t sh, int64_t sw,
                                      int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  if (db->element_count() != static_cast<size_t>(dw->dimensions()[3])) {
    return ffi::Error::InvalidArgument("onednn conv: bias gradient must have C_out elements");
  }
  return backward_weights(x, dy, dw, db->typed_data(), sh, sw, pt, pb, pl, pr);
}

}  // namespace

#define JAXCNN_CONV_ATTRS                                                                     \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb")           \
      .Attr<int64_t>("pl").Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnOnednnConvForward, conv_forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() JAXCNN_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnOnednnConvForwardBias, conv_forward_bias,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>() JAXCNN_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnOnednnConvBackwardWeightsBias, conv_backward_weights_bias,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXCNN_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnOnednnConvBackwardData, conv_backward_data,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() JAXCNN_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnOnednnConvBackwardWeights, conv_backward_weights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() JAXCNN_CONV_ATTRS);

// Creates the CPU engine and runs one tiny convolution (3x3 ones over a 4x4 image of ones,
// SAME: the centre outputs must be 9). Returns an empty string on success, else the error, so
// that a broken runtime is found when the library loads rather than inside a jitted step.
extern "C" const char* JaxcnnOnednnSelfTest() {
  static std::string result;
  try {
    Problem p{1, 4, 4, 1, 3, 3, 1, 4, 4, 1, 1, 1, 1, 1, 1};
    auto& prims = primitives_for(p);
    auto& eng = cpu_engine();
    PooledStream pooled;
    auto& s = pooled.get();
    float x[16], w[9], y[16];
    for (float& v : x) v = 1.0f;
    for (float& v : w) v = 1.0f;
    memory src(src_md(p, p.type), eng, x), dst(dst_md(p, p.result), eng, y);
    memory wts = weights_as(prims.to_fwd_weights, p, w, s);
    execute_with_scratchpad(prims.fwd, prims.fwd_pd, s,
                            {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wts}, {DNNL_ARG_DST, dst}});
    result = y[5] == 9.0f && y[0] == 4.0f ? "" : "a test convolution gave wrong values";
  } catch (const std::exception& e) {
    result = e.what();
  }
  return result.c_str();
}

extern "C" const char* JaxcnnOnednnVersion() {
  static std::string v = [] {
    auto* ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." +
           std::to_string(ver->patch);
  }();
  return v.c_str();
}
