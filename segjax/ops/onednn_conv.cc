// oneDNN convolutions for XLA:CPU, called from JAX through the XLA FFI (segjax/ops/conv.py).
//
// Three handlers cover a 2-D convolution and its two gradients on channels-last data: activations
// [N, H, W, C] (oneDNN's nhwc), kernels [KH, KW, C, O] (oneDNN's hwio), any strides, explicit non-negative
// padding and kernel dilation, float32 or bfloat16 (float32 accumulation). XLA:CPU runs convolutions with
// Eigen's im2col-style kernels, which on few channels (32-64, a U-Net's top levels) reach about half the
// throughput of oneDNN's direct kernels, and computes kernel gradients after transposing both operands to
// put the batch innermost; oneDNN takes every operand as it is (BENCHMARKS.md, "Training throughput").
//
// Primitive descriptors are built once per shape and kept (oneDNN compiles its kernels when a primitive is
// created). XLA runs independent thunks concurrently (a layer's two gradients, for one), so every primitive uses a
// scratchpad this library hands it from a per-thread buffer: oneDNN's own ("library" mode) is one buffer shared
// by all primitives unless oneDNN was built for concurrent execution, and two primitives running at once from two
// threads then write over each other (a segfault in FCN-8s' training step at 352x480).

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace segjax {
namespace {

using dnnl::memory;

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

const dnnl::primitive_attr& UserScratchpad() {
  static const dnnl::primitive_attr* attr = [] {
    auto* a = new dnnl::primitive_attr();
    a->set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
  }();
  return *attr;
}

// The calling thread's scratchpad for a primitive described by `pd`, grown as needed and kept for the thread.
memory Scratchpad(const dnnl::primitive_desc_base& pd) {
  thread_local std::vector<char> buffer;
  const memory::desc desc = pd.scratchpad_desc();
  if (buffer.size() < desc.get_size()) buffer.resize(desc.get_size());
  return memory(desc, Engine(), buffer.data());
}

// Everything that identifies one convolution: shapes, strides, padding, dilation and element type.
struct ConvKey {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw;
  memory::data_type dtype;

  auto Tie() const {
    return std::tie(n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw, dtype);
  }
  bool operator<(const ConvKey& other) const { return Tie() < other.Tie(); }
};

// oneDNN's description of one convolution: its memory layouts (ours: nhwc and hwio) and geometry.
struct Descs {
  memory::desc src, dst, weights_any, user_weights;
  memory::dims strides, dilation, pad_l, pad_r;
};

Descs MakeDescs(const ConvKey& k) {
  Descs d;
  d.src = memory::desc({k.n, k.c, k.h, k.w}, k.dtype, memory::format_tag::nhwc);
  d.dst = memory::desc({k.n, k.o, k.oh, k.ow}, k.dtype, memory::format_tag::nhwc);
  d.weights_any = memory::desc({k.o, k.c, k.kh, k.kw}, k.dtype, memory::format_tag::any);
  d.user_weights = memory::desc({k.o, k.c, k.kh, k.kw}, k.dtype, memory::format_tag::hwio);
  d.strides = {k.sh, k.sw};
  d.dilation = {k.dh - 1, k.dw - 1};  // oneDNN counts the gaps between taps, XLA the step
  d.pad_l = {k.pt, k.pl};
  d.pad_r = {k.pb, k.pr};
  return d;
}

enum Kind { kForward, kBackwardData, kBackwardWeights };

// The primitives of one convolution, each created on first use.
struct ConvPrimitives {
  Descs descs;
  dnnl::convolution_forward::primitive_desc forward_pd;
  std::optional<dnnl::convolution_forward> forward;
  std::optional<dnnl::convolution_backward_data::primitive_desc> backward_data_pd;
  std::optional<dnnl::convolution_backward_data> backward_data;
  std::optional<dnnl::convolution_backward_weights::primitive_desc> backward_weights_pd;
  std::optional<dnnl::convolution_backward_weights> backward_weights;
};

class PrimitiveCache {
 public:
  // The primitives for `key` with the primitive of `kind` created. The returned object lives as long as the
  // process.
  ConvPrimitives* Get(const ConvKey& key, Kind kind) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = cache_[key];
    if (!slot) {
      Descs d = MakeDescs(key);
      auto forward_pd = dnnl::convolution_forward::primitive_desc(
          Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, d.src, d.weights_any,
          d.dst, d.strides, d.dilation, d.pad_l, d.pad_r, UserScratchpad());
      slot = std::make_unique<ConvPrimitives>(ConvPrimitives{std::move(d), std::move(forward_pd)});
    }
    ConvPrimitives* p = slot.get();
    const Descs& d = p->descs;
    if (kind == kForward && !p->forward) {
      p->forward.emplace(p->forward_pd);
    } else if (kind == kBackwardData && !p->backward_data) {
      p->backward_data_pd.emplace(Engine(), dnnl::algorithm::convolution_direct, d.src, d.weights_any, d.dst,
                                  d.strides, d.dilation, d.pad_l, d.pad_r, p->forward_pd, UserScratchpad());
      p->backward_data.emplace(*p->backward_data_pd);
    } else if (kind == kBackwardWeights && !p->backward_weights) {
      p->backward_weights_pd.emplace(Engine(), dnnl::algorithm::convolution_direct, d.src, d.weights_any, d.dst,
                                     d.strides, d.dilation, d.pad_l, d.pad_r, p->forward_pd, UserScratchpad());
      p->backward_weights.emplace(*p->backward_weights_pd);
    }
    return p;
  }

 private:
  std::mutex mu_;
  std::map<ConvKey, std::unique_ptr<ConvPrimitives>> cache_;
};

PrimitiveCache& Cache() {
  static PrimitiveCache* cache = new PrimitiveCache();
  return *cache;
}

std::optional<memory::data_type> DnnlType(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32:
      return memory::data_type::f32;
    case ffi::DataType::BF16:
      return memory::data_type::bf16;
    default:
      return std::nullopt;
  }
}

// Builds the key from the activation [N, H, W, C], kernel [KH, KW, C, O] and output [N, OH, OW, O] dimensions,
// checking that they and the attributes describe one convolution.
ffi::ErrorOr<ConvKey> MakeKey(ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions w,
                              ffi::AnyBuffer::Dimensions y, ffi::DataType type, ffi::Span<const int64_t> stride,
                              ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("segjax oneDNN convolution: activations, kernel and output must be rank 4"));
  }
  if (stride.size() != 2 || padding.size() != 4 || dilation.size() != 2) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("segjax oneDNN convolution: stride[2], padding[4], dilation[2] expected"));
  }
  auto dtype = DnnlType(type);
  if (!dtype) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("segjax oneDNN convolution: only float32 and bfloat16 are supported"));
  }
  ConvKey k{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], stride[0], stride[1],
            padding[0], padding[1], padding[2], padding[3], dilation[0], dilation[1], *dtype};
  bool consistent = w[2] == k.c && y[0] == k.n && y[3] == k.o && k.sh > 0 && k.sw > 0 && k.dh > 0 && k.dw > 0 &&
                    k.pt >= 0 && k.pb >= 0 && k.pl >= 0 && k.pr >= 0 &&
                    k.oh == (k.h + k.pt + k.pb - (k.kh - 1) * k.dh - 1) / k.sh + 1 &&
                    k.ow == (k.w + k.pl + k.pr - (k.kw - 1) * k.dw - 1) / k.sw + 1;
  if (!consistent) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("segjax oneDNN convolution: inconsistent shapes or attributes"));
  }
  return k;
}

// Copies `from` into `to` (another layout of the same tensor) with a reorder primitive on its own scratchpad.
void Reorder(memory& from, memory& to, dnnl::stream& s) {
  dnnl::reorder::primitive_desc pd(from, to, UserScratchpad());
  dnnl::reorder(pd).execute(s, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}, {DNNL_ARG_SCRATCHPAD, Scratchpad(pd)}});
}

// The kernel as oneDNN wants it: `user` itself when the primitive takes hwio, else a reordered copy.
memory KernelIn(const memory::desc& wanted, memory user, dnnl::stream& s) {
  if (wanted == user.get_desc()) return user;
  memory m(wanted, Engine());
  Reorder(user, m, s);
  return m;
}

// Runs `body(primitives, stream)` on the cached primitives of the convolution `key` names (its `kind` primitive
// created), then waits for the stream; a malformed key or a oneDNN error comes back as the FFI error.
template <typename F>
ffi::Error Run(ffi::ErrorOr<ConvKey> key, Kind kind, F&& body) {
  if (key.has_error()) return key.error();
  try {
    ConvPrimitives* p = Cache().Get(*key, kind);
    dnnl::stream s(Engine());
    body(*p, s);
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                           ffi::Span<const int64_t> stride, ffi::Span<const int64_t> padding,
                           ffi::Span<const int64_t> dilation) {
  auto key = MakeKey(x.dimensions(), w.dimensions(), y->dimensions(), x.element_type(), stride, padding, dilation);
  return Run(std::move(key), kForward, [&](ConvPrimitives& p, dnnl::stream& s) {
    const Descs& d = p.descs;
    memory src(d.src, Engine(), x.untyped_data());
    memory dst(d.dst, Engine(), y->untyped_data());
    memory weights = KernelIn(p.forward_pd.weights_desc(), memory(d.user_weights, Engine(), w.untyped_data()), s);
    p.forward->execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst},
                           {DNNL_ARG_SCRATCHPAD, Scratchpad(p.forward_pd)}});
  });
}

ffi::Error ConvBackwardDataImpl(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                                ffi::Span<const int64_t> stride, ffi::Span<const int64_t> padding,
                                ffi::Span<const int64_t> dilation) {
  auto key = MakeKey(dx->dimensions(), w.dimensions(), dy.dimensions(), dy.element_type(), stride, padding,
                     dilation);
  return Run(std::move(key), kBackwardData, [&](ConvPrimitives& p, dnnl::stream& s) {
    const Descs& d = p.descs;
    memory diff_dst(d.dst, Engine(), dy.untyped_data());
    memory diff_src(d.src, Engine(), dx->untyped_data());
    memory weights =
        KernelIn(p.backward_data_pd->weights_desc(), memory(d.user_weights, Engine(), w.untyped_data()), s);
    p.backward_data->execute(s, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, weights},
                                 {DNNL_ARG_DIFF_SRC, diff_src},
                                 {DNNL_ARG_SCRATCHPAD, Scratchpad(*p.backward_data_pd)}});
  });
}

ffi::Error ConvBackwardWeightsImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                                   ffi::Span<const int64_t> stride, ffi::Span<const int64_t> padding,
                                   ffi::Span<const int64_t> dilation) {
  auto key = MakeKey(x.dimensions(), dw->dimensions(), dy.dimensions(), x.element_type(), stride, padding,
                     dilation);
  return Run(std::move(key), kBackwardWeights, [&](ConvPrimitives& p, dnnl::stream& s) {
    const Descs& d = p.descs;
    memory src(d.src, Engine(), x.untyped_data());
    memory diff_dst(d.dst, Engine(), dy.untyped_data());
    memory user(d.user_weights, Engine(), dw->untyped_data());
    const memory::desc& wanted = p.backward_weights_pd->diff_weights_desc();
    memory diff_weights = wanted == d.user_weights ? user : memory(wanted, Engine());
    p.backward_weights->execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                    {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                                    {DNNL_ARG_SCRATCHPAD, Scratchpad(*p.backward_weights_pd)}});
    if (wanted != d.user_weights) Reorder(diff_weights, user, s);
  });
}

}  // namespace
}  // namespace segjax

#define SEGJAX_CONV_ATTRS                          \
  .Attr<ffi::Span<const int64_t>>("stride")        \
      .Attr<ffi::Span<const int64_t>>("padding")   \
      .Attr<ffi::Span<const int64_t>>("dilation")

XLA_FFI_DEFINE_HANDLER_SYMBOL(SegjaxOnednnConvForward, segjax::ConvForwardImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  SEGJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SegjaxOnednnConvBackwardData, segjax::ConvBackwardDataImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  SEGJAX_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SegjaxOnednnConvBackwardWeights, segjax::ConvBackwardWeightsImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  SEGJAX_CONV_ATTRS);

// Lets the Python side check that the library it loaded is the one it was built against.
extern "C" int SegjaxOnednnConvAbiVersion() { return 1; }
