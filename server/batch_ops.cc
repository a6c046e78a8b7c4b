#include "server/batch_ops.h"

#include <cstring>

#include "absl/base/casts.h"
#include "absl/strings/str_cat.h"
#include "accel/util/status_macros.h"
#include "server/op_runner.h"

namespace accel::server {
namespace {

using kernels::ConstTensorView;
using kernels::DType;
using kernels::OutputSpec;
using kernels::Shape;

constexpr float kDefaultEps = 1e-6f;

absl::Status DistinctNames(const std::string& a, absl::string_view a_field, const std::string& b,
                           absl::string_view b_field) {
  if (!a.empty() && a == b) {
    return absl::InvalidArgumentError(absl::StrCat(b_field, ": expected a name other than ",
                                                   a_field, ", found '", b, "' for both"));
  }
  return absl::OkStatus();
}

bool Inline(const ResolvedInput& input) { return input.resident == nullptr; }

// "name@address": a resident tensor's identity in a key (a tensor replaced
// under the same name has another address).
std::string Identity(const std::string& name, const void* tensor) {
  return absl::StrCat(name, "@", reinterpret_cast<uintptr_t>(tensor));
}

// A batchable request's main tensor: rank >= 1, not empty, and its result
// fits in a response (a launch of several splits results into responses;
// one that cannot fit runs alone and gets the unary error).
bool RowsCanBatch(const OpEnv& env, const ConstTensorView& main, int64_t result_bytes) {
  return main.rank() >= 1 && main.num_elements() > 0 && result_bytes <= env.max_message_bytes;
}

// Batched Linear and Ffn launches read their whole weights (the bound of
// a one- to 32-row launch): one in flight per key, so that the requests
// arriving meanwhile form the next, larger batch instead of a second
// launch that reads the weights again (H100, one-row Ffn 4096/11008: c=64
// 57.7 K QPS and 15.9 rows per launch against 50.3 K and 7.3 with two).
constexpr int kWeightStreamingInflight = 1;

int64_t ResultBytes(const OutputSpec& spec) {
  return kernels::NumElements(spec.shape) * static_cast<int64_t>(kernels::ItemSize(spec.dtype));
}

template <typename Item>
int64_t TotalRows(std::span<Item* const> items) {
  int64_t rows = 0;
  for (const Item* item : items) rows += item->rows;
  return rows;
}

// The shape of a launch's main tensor (`first` is items[0]'s): a lone
// request's own, or all the requests' rows, concatenated, by its width.
template <typename Item>
Shape BatchShape(std::span<Item* const> items, const ConstTensorView& first) {
  return items.size() == 1 ? first.shape : Shape{TotalRows(items), first.last_dim()};
}

// Linear and Ffn (`invariant`: the rows up to which their kernels give
// every row the same bits, 0 for none): whether the request may share
// launches (its rows within that bound, its input inline, its result
// returned); if so, sets its key's limits. The caller then sets the key.
template <typename Item>
bool MayShareWeightLaunches(const OpEnv& env, const std::string& output_name, int64_t invariant,
                            Item& item) {
  if (invariant <= 0 || item.rows > invariant || !Inline(item.input) || !output_name.empty() ||
      !RowsCanBatch(env, item.input.view, ResultBytes(item.spec))) {
    return false;
  }
  item.max_batch_rows = invariant;
  item.max_inflight = kWeightStreamingInflight;
  return true;
}

// The batch's rows of one input: a lone request's own tensor (staged when
// inline); several requests' inline tensors concatenated into `shape`.
template <typename Item, typename Get>
absl::StatusOr<ConstTensorView> BatchInput(CallScope& scope, std::span<Item* const> items,
                                           const Shape& shape, Get get) {
  if (items.size() == 1) return StageInput(scope, get(*items[0]));
  std::vector<ConstTensorView> parts;
  parts.reserve(items.size());
  for (const Item* item : items) parts.push_back(get(*item).view);
  return scope.StageConcat(parts, parts[0].dtype, shape);
}

// Where a launch writes one result: a lone request's OutputSlot (its
// response's bytes, or a resident tensor); for several, one buffer whose
// slices are copied into each response after the kernel (Commit).
class BatchOutput {
 public:
  struct Target {
    const std::string& name;  // the request's output name
    absl::string_view field;
    const OutputSpec& spec;  // this request's part
    v1::Tensor* proto;
  };

  template <typename Item, typename GetTarget>
  static absl::StatusOr<BatchOutput> Make(const OpEnv& env, CallScope& scope,
                                          std::span<Item* const> items, const OutputSpec& whole,
                                          GetTarget get) {
    BatchOutput out;
    if (items.size() == 1) {
      const Target target = get(*items[0]);
      ASSIGN_OR_RETURN(out.slot_, OutputSlot::Make(env, scope, target.name, target.field,
                                                   target.spec, target.proto));
      out.view_ = out.slot_->view();
      return out;
    }
    for (Item* item : items) {
      const Target target = get(*item);
      out.parts_.emplace_back(target.spec, target.proto);
    }
    out.view_ = kernels::TensorView{whole.dtype, whole.shape, nullptr};
    const size_t nbytes = out.view_.nbytes();
    // Default-initialised: the kernel writes every byte.
    out.host_.reset(new char[nbytes == 0 ? 1 : nbytes]);
    ASSIGN_OR_RETURN(out.view_.data, scope.ResultBuffer(out.host_.get(), nbytes));
    return out;
  }

  const kernels::TensorView& view() const { return view_; }

  // After scope.Finish(): publishes the resident result, or splits the
  // batch's bytes into the responses.
  absl::Status Commit() {
    if (slot_.has_value()) return slot_->Commit();
    size_t offset = 0;
    for (const auto& [spec, proto] : parts_) {
      const auto bytes = static_cast<size_t>(ResultBytes(spec));
      DescribeTensor(spec, proto);
      proto->set_data(host_.get() + offset, bytes);
      offset += bytes;
    }
    return absl::OkStatus();
  }

 private:
  std::optional<OutputSlot> slot_;
  kernels::TensorView view_;
  std::unique_ptr<char[]> host_;
  std::vector<std::pair<OutputSpec, v1::Tensor*>> parts_;
};

}  // namespace

BatchClock::time_point SteadyDeadline(const grpc::CallbackServerContext& call) {
  const auto deadline = call.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return BatchClock::time_point::max();
  }
  const auto left = deadline - std::chrono::system_clock::now();
  // A deadline decades away (some clients use one for "none") must not
  // overflow the steady clock.
  if (left > std::chrono::hours(24 * 365)) return BatchClock::time_point::max();
  return BatchClock::now() + std::chrono::duration_cast<BatchClock::duration>(left);
}

// ----------------------------------------------------------------- RmsNorm

absl::StatusOr<RmsNormItem> PrepareRmsNorm(const OpEnv& env, const v1::RmsNormRequest& req,
                                           v1::RmsNormResponse* resp) {
  const TensorStore& store = *env.store;
  RmsNormItem item;
  item.req = &req;
  item.resp = resp;
  ASSIGN_OR_RETURN(item.input, ResolveInput(req.input(), "input", store));
  ASSIGN_OR_RETURN(item.weight, ResolveInput(req.weight(), "weight", store));
  if (IsSet(req.residual())) {
    ASSIGN_OR_RETURN(item.residual, ResolveInput(req.residual(), "residual", store));
  }
  item.want_residual = req.return_residual() || !req.residual_output_name().empty();
  if (item.want_residual && !item.residual.has_value()) {
    return absl::InvalidArgumentError(
        req.return_residual() ? "return_residual: needs a residual input (set residual)"
                              : "residual_output_name: needs a residual input (set residual)");
  }
  RETURN_IF_ERROR(DistinctNames(req.output_name(), "output_name", req.residual_output_name(),
                                "residual_output_name"));
  item.args.input = item.input.view;
  item.args.weight = item.weight.view;
  if (item.residual.has_value()) item.args.residual = item.residual->view;
  item.args.eps = req.has_eps() ? req.eps() : kDefaultEps;
  ASSIGN_OR_RETURN(item.spec, kernels::CheckRmsNorm(item.args));

  const ConstTensorView& x = item.input.view;
  item.rows = x.rows();
  if (Inline(item.input) && !Inline(item.weight) &&
      (!item.residual.has_value() || Inline(*item.residual)) && req.output_name().empty() &&
      req.residual_output_name().empty() && RowsCanBatch(env, x, x.nbytes())) {
    item.key = absl::StrCat("rms_norm/", static_cast<int>(x.dtype), "/", x.last_dim(), "/",
                            Identity(req.weight().name(), item.weight.resident.get()), "/",
                            absl::bit_cast<uint32_t>(item.args.eps), "/", item.residual.has_value(),
                            item.want_residual);
  }
  return item;
}

absl::Status LaunchRmsNorm(const OpEnv& env, std::span<RmsNormItem* const> items) {
  const RmsNormItem& first = *items[0];
  const Shape shape = BatchShape(items, first.args.input);
  CallScope scope(*env.device, env.metrics, Op::kRmsNorm);
  kernels::RmsNormArgs args = first.args;
  ASSIGN_OR_RETURN(args.input,
                   BatchInput(scope, items, shape, [](const RmsNormItem& i) { return i.input; }));
  // The weight is read once per row (block-per-row kernels).
  ASSIGN_OR_RETURN(args.weight, StageInput(scope, first.weight, shape[0]));
  if (first.residual.has_value()) {
    ASSIGN_OR_RETURN(args.residual, BatchInput(scope, items, shape,
                                               [](const RmsNormItem& i) { return *i.residual; }));
  }
  const OutputSpec whole{first.spec.dtype, shape};
  ASSIGN_OR_RETURN(BatchOutput output,
                   BatchOutput::Make(env, scope, items, whole, [](RmsNormItem& i) {
                     return BatchOutput::Target{i.req->output_name(), "output_name", i.spec,
                                                i.resp->mutable_output()};
                   }));
  std::optional<BatchOutput> residual_out;
  if (first.want_residual) {
    ASSIGN_OR_RETURN(residual_out, BatchOutput::Make(env, scope, items, whole, [](RmsNormItem& i) {
                       return BatchOutput::Target{i.req->residual_output_name(),
                                                  "residual_output_name", i.spec,
                                                  i.resp->mutable_residual()};
                     }));
  }
  RETURN_IF_ERROR(kernels::RmsNorm(scope.ctx(), args, output.view(),
                                   residual_out.has_value() ? &residual_out->view() : nullptr));
  RETURN_IF_ERROR(scope.Finish());
  RETURN_IF_ERROR(output.Commit());
  if (residual_out.has_value()) RETURN_IF_ERROR(residual_out->Commit());
  return absl::OkStatus();
}

// ------------------------------------------------------------------ SwiGlu

absl::StatusOr<SwiGluItem> PrepareSwiGlu(const OpEnv& env, const v1::SwiGluRequest& req,
                                         v1::SwiGluResponse* resp) {
  SwiGluItem item;
  item.req = &req;
  item.resp = resp;
  ASSIGN_OR_RETURN(item.gate, ResolveInput(req.gate(), "gate", *env.store));
  ASSIGN_OR_RETURN(item.up, ResolveInput(req.up(), "up", *env.store));
  item.args = kernels::SwiGluArgs{item.gate.view, item.up.view};
  ASSIGN_OR_RETURN(item.spec, kernels::CheckSwiGlu(item.args));
  const ConstTensorView& g = item.gate.view;
  item.rows = g.rows();
  if (Inline(item.gate) && Inline(item.up) && req.output_name().empty() &&
      RowsCanBatch(env, g, g.nbytes())) {
    item.key = absl::StrCat("swiglu/", static_cast<int>(g.dtype), "/", g.last_dim());
  }
  return item;
}

absl::Status LaunchSwiGlu(const OpEnv& env, std::span<SwiGluItem* const> items) {
  const SwiGluItem& first = *items[0];
  const Shape shape = BatchShape(items, first.args.gate);
  CallScope scope(*env.device, env.metrics, Op::kSwiGlu);
  kernels::SwiGluArgs args = first.args;
  ASSIGN_OR_RETURN(args.gate,
                   BatchInput(scope, items, shape, [](const SwiGluItem& i) { return i.gate; }));
  ASSIGN_OR_RETURN(args.up,
                   BatchInput(scope, items, shape, [](const SwiGluItem& i) { return i.up; }));
  ASSIGN_OR_RETURN(
      BatchOutput output,
      BatchOutput::Make(env, scope, items, OutputSpec{first.spec.dtype, shape}, [](SwiGluItem& i) {
        return BatchOutput::Target{i.req->output_name(), "output_name", i.spec,
                                   i.resp->mutable_output()};
      }));
  RETURN_IF_ERROR(kernels::SwiGlu(scope.ctx(), args, output.view()));
  RETURN_IF_ERROR(scope.Finish());
  return output.Commit();
}

// -------------------------------------------------------------------- Rope

absl::StatusOr<RopeItem> PrepareRope(const OpEnv& env, const v1::RopeRequest& req,
                                     v1::RopeResponse* resp) {
  const TensorStore& store = *env.store;
  RopeItem item;
  item.req = &req;
  item.resp = resp;
  ASSIGN_OR_RETURN(item.q, ResolveInput(req.q(), "q", store));
  if (IsSet(req.k())) {
    ASSIGN_OR_RETURN(item.k, ResolveInput(req.k(), "k", store));
  } else if (!req.k_output_name().empty()) {
    return absl::InvalidArgumentError("k_output_name: needs a k input (set k)");
  }
  RETURN_IF_ERROR(
      DistinctNames(req.output_name(), "output_name", req.k_output_name(), "k_output_name"));
  if (req.style() != v1::INTERLEAVED && req.style() != v1::HALF_SPLIT) {
    return absl::InvalidArgumentError(
        absl::StrCat("style: expected INTERLEAVED (0) or HALF_SPLIT (1), found ",
                     static_cast<int>(req.style())));
  }
  kernels::RopeArgs& args = item.args;
  args.q = item.q.view;
  if (item.k.has_value()) args.k = item.k->view;
  args.style = req.style() == v1::HALF_SPLIT ? kernels::RopeStyle::kHalfSplit
                                             : kernels::RopeStyle::kInterleaved;

  // The cos/sin tables: a resident cache [2, P, D/2], or inline tensors.
  const bool has_inline = IsSet(req.cos()) || IsSet(req.sin());
  if (!req.cache().empty()) {
    if (has_inline) {
      return absl::InvalidArgumentError(
          "cache: expected either cache or inline cos and sin, found both");
    }
    ASSIGN_OR_RETURN(item.cache, store.Get(req.cache(), "cache"));
    const ResidentTensor& cache = *item.cache;
    const bool is_cache = !cache.quantized() && cache.dtype == DType::kFloat32 &&
                          cache.shape.size() == 3 && cache.shape[0] == 2;
    if (!is_cache) {
      return absl::FailedPreconditionError(
          absl::StrCat("cache: '", req.cache(),
                       "' is not a RoPE cache: expected FLOAT32 [2, P, D/2] (see "
                       "BuildRopeCache), found ",
                       cache.quantized() ? "quantized " : "", kernels::DTypeName(cache.dtype), " ",
                       kernels::ShapeToString(cache.shape)));
    }
    const Shape table{cache.shape[1], cache.shape[2]};
    const size_t table_bytes = kernels::NumElements(table) * sizeof(float);
    const char* base = static_cast<const char*>(cache.values.data());
    args.cos = ConstTensorView{DType::kFloat32, table, base};
    args.sin = ConstTensorView{DType::kFloat32, table, base + table_bytes};
  } else {
    if (!IsSet(req.cos()) || !IsSet(req.sin())) {
      return absl::InvalidArgumentError(
          absl::StrCat(IsSet(req.cos()) ? "sin" : "cos",
                       ": required: set cache to the name of a RoPE cache, or both cos and sin"));
    }
    ASSIGN_OR_RETURN(item.cos, ResolveInput(req.cos(), "cos", store));
    ASSIGN_OR_RETURN(item.sin, ResolveInput(req.sin(), "sin", store));
    args.cos = item.cos.view;
    args.sin = item.sin.view;
  }

  if (IsSet(req.positions())) {
    if (req.position_offset() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "position_offset: expected 0 when positions is set, found ", req.position_offset()));
    }
    ASSIGN_OR_RETURN(item.positions, ResolveInput(req.positions(), "positions", store));
    args.positions = item.positions.view;
    if (!Inline(item.positions) && env.device->is_cuda()) {
      item.positions_on_host.resize(item.positions.view.nbytes());
      RETURN_IF_ERROR(kernels::CopyFromBuffer(item.positions.resident->values, 0,
                                              item.positions_on_host.size(),
                                              item.positions_on_host.data()));
      args.positions->data = item.positions_on_host.data();
    }
  }
  args.position_offset = req.position_offset();

  // Checks every position against the table, on the host.
  ASSIGN_OR_RETURN(item.q_spec, kernels::CheckRope(args));
  if (item.k.has_value()) item.k_spec = OutputSpec{item.k->view.dtype, item.k->view.shape};

  const ConstTensorView& q = item.q.view;
  item.rows = q.shape[0] * q.shape[1];
  const bool positions_ok = !IsSet(req.positions()) || Inline(item.positions);
  if (Inline(item.q) && (!item.k.has_value() || Inline(*item.k)) && item.cache != nullptr &&
      positions_ok && req.output_name().empty() && req.k_output_name().empty() &&
      RowsCanBatch(env, q, q.nbytes())) {
    item.key =
        absl::StrCat("rope/", static_cast<int>(q.dtype), "/", q.shape[2], "/",
                     item.k.has_value() ? item.k->view.shape[2] : -1, "/", q.shape[3], "/",
                     static_cast<int>(args.style), "/", Identity(req.cache(), item.cache.get()));
  }
  return item;
}

namespace {

// Position of token t of a request ([B, S] tokens flattened, t = b * S + s).
int64_t PositionOf(const RopeItem& item, int64_t t) {
  const int64_t s = item.args.q.shape[1];
  if (!item.args.positions.has_value()) return item.args.position_offset + t % s;
  const ConstTensorView& p = *item.args.positions;
  const int64_t index = p.rank() == 2 ? t : t % s;
  return p.dtype == DType::kInt32 ? int64_t{p.as<int32_t>()[index]} : p.as<int64_t>()[index];
}

}  // namespace

absl::Status LaunchRope(const OpEnv& env, std::span<RopeItem* const> items) {
  const RopeItem& first = *items[0];
  const bool one = items.size() == 1;
  const int64_t tokens = TotalRows(items);
  const Shape& q0 = first.args.q.shape;
  // A batch is one sequence of all the requests' tokens, each with its own
  // position: [1, T, H, D] with positions [1, T].
  const Shape q_shape = one ? q0 : Shape{1, tokens, q0[2], q0[3]};
  Shape k_shape;
  if (first.k.has_value()) {
    const Shape& k0 = first.args.k->shape;
    k_shape = one ? k0 : Shape{1, tokens, k0[2], k0[3]};
  }
  CallScope scope(*env.device, env.metrics, Op::kRope);
  kernels::RopeArgs args = first.args;
  ASSIGN_OR_RETURN(args.q,
                   BatchInput(scope, items, q_shape, [](const RopeItem& i) { return i.q; }));
  if (first.k.has_value()) {
    ASSIGN_OR_RETURN(args.k,
                     BatchInput(scope, items, k_shape, [](const RopeItem& i) { return *i.k; }));
  }
  if (first.cache == nullptr) {  // inline tables: only a lone request
    // A token's table row is read once per head group, for every sequence
    // of the batch: at most heads x batch reads of each row.
    const int64_t heads = q_shape[2] + (first.k.has_value() ? k_shape[2] : 0);
    const int64_t reads = heads * q_shape[0];
    ASSIGN_OR_RETURN(args.cos, StageInput(scope, first.cos, reads));
    ASSIGN_OR_RETURN(args.sin, StageInput(scope, first.sin, reads));
  }
  std::vector<int64_t> positions;
  if (one) {
    if (args.positions.has_value()) {
      ASSIGN_OR_RETURN(args.positions, StageInput(scope, first.positions));
    }
  } else {
    positions.reserve(static_cast<size_t>(tokens));
    for (const RopeItem* item : items) {
      for (int64_t t = 0; t < item->rows; ++t) positions.push_back(PositionOf(*item, t));
    }
    ASSIGN_OR_RETURN(args.positions,
                     scope.Stage(ConstTensorView{DType::kInt64, {1, tokens}, positions.data()}));
    args.position_offset = 0;
  }
  ASSIGN_OR_RETURN(BatchOutput q_out,
                   BatchOutput::Make(
                       env, scope, items, OutputSpec{first.q_spec.dtype, q_shape}, [](RopeItem& i) {
                         return BatchOutput::Target{i.req->output_name(), "output_name", i.q_spec,
                                                    i.resp->mutable_q()};
                       }));
  std::optional<BatchOutput> k_out;
  if (first.k.has_value()) {
    ASSIGN_OR_RETURN(
        k_out, BatchOutput::Make(
                   env, scope, items, OutputSpec{first.k_spec.dtype, k_shape}, [](RopeItem& i) {
                     return BatchOutput::Target{i.req->k_output_name(), "k_output_name", i.k_spec,
                                                i.resp->mutable_k()};
                   }));
  }
  RETURN_IF_ERROR(
      kernels::Rope(scope.ctx(), args, q_out.view(), k_out.has_value() ? &k_out->view() : nullptr));
  RETURN_IF_ERROR(scope.Finish());
  RETURN_IF_ERROR(q_out.Commit());
  if (k_out.has_value()) RETURN_IF_ERROR(k_out->Commit());
  return absl::OkStatus();
}

// ---------------------------------------------------------------- Quantize

absl::StatusOr<QuantizeItem> PrepareQuantize(const OpEnv& env, const v1::QuantizeRequest& req,
                                             v1::QuantizeResponse* resp) {
  QuantizeItem item;
  item.req = &req;
  item.resp = resp;
  ASSIGN_OR_RETURN(item.input, ResolveInput(req.input(), "input", *env.store));
  if (req.granularity() != v1::PER_TENSOR && req.granularity() != v1::PER_ROW) {
    return absl::InvalidArgumentError(
        absl::StrCat("granularity: expected PER_TENSOR (0) or PER_ROW (1), found ",
                     static_cast<int>(req.granularity())));
  }
  item.args.input = item.input.view;
  item.args.granularity = req.granularity() == v1::PER_ROW ? kernels::Granularity::kPerRow
                                                           : kernels::Granularity::kPerTensor;
  ASSIGN_OR_RETURN(item.spec, kernels::CheckQuantize(item.args));
  const ConstTensorView& x = item.input.view;
  item.rows = x.rows();
  // Per tensor, one scale depends on every row: never batched.
  if (Inline(item.input) && req.granularity() == v1::PER_ROW && req.output_name().empty() &&
      RowsCanBatch(env, x, x.num_elements())) {
    item.key = absl::StrCat("quantize/", static_cast<int>(x.dtype), "/", x.last_dim());
  }
  return item;
}

absl::Status LaunchQuantize(const OpEnv& env, std::span<QuantizeItem* const> items) {
  const QuantizeItem& first = *items[0];
  const v1::QuantizeRequest& req = *first.req;
  CallScope scope(*env.device, env.metrics, Op::kQuantize);
  kernels::QuantizeArgs args = first.args;
  if (items.size() == 1) {
    // Per tensor, the input is read twice (its absmax, then the values).
    const int64_t reads = args.granularity == kernels::Granularity::kPerTensor ? 2 : 1;
    ASSIGN_OR_RETURN(args.input, StageInput(scope, first.input, reads));
    const kernels::QuantizeSpec& spec = first.spec;
    v1::QuantizeResponse* resp = first.resp;
    if (req.output_name().empty()) {
      RETURN_IF_ERROR(CheckFitsInMessage(env, kernels::NumElements(spec.values.shape), "values"));
      kernels::TensorView values = PrepareOutputTensor(spec.values, resp->mutable_values());
      kernels::TensorView scales = PrepareOutputTensor(spec.scales, resp->mutable_scales());
      ASSIGN_OR_RETURN(values.data, scope.ResultBuffer(values.data, values.nbytes()));
      ASSIGN_OR_RETURN(scales.data, scope.ResultBuffer(scales.data, scales.nbytes()));
      RETURN_IF_ERROR(kernels::Quantize(scope.ctx(), args, values, scales));
      return scope.Finish();
    }
    RETURN_IF_ERROR(ValidateTensorName(req.output_name(), "output_name"));
    ASSIGN_OR_RETURN(QuantizedOutput out, MakeQuantizedOutput(env, req.output_name(), spec));
    RETURN_IF_ERROR(kernels::Quantize(scope.ctx(), args, out.values, out.scales));
    RETURN_IF_ERROR(scope.Finish());
    DescribeTensor(spec.values, resp->mutable_values());
    DescribeTensor(spec.scales, resp->mutable_scales());
    return env.store->Insert(std::move(out.tensor), /*overwrite=*/true, out.reservation);
  }
  // Several per-row requests: one [R, K] launch, scales [R].
  const int64_t rows = TotalRows(items);
  const Shape shape{rows, first.args.input.last_dim()};
  ASSIGN_OR_RETURN(args.input,
                   BatchInput(scope, items, shape, [](const QuantizeItem& i) { return i.input; }));
  ASSIGN_OR_RETURN(
      BatchOutput values,
      BatchOutput::Make(env, scope, items, OutputSpec{DType::kInt8, shape}, [](QuantizeItem& i) {
        return BatchOutput::Target{i.req->output_name(), "values", i.spec.values,
                                   i.resp->mutable_values()};
      }));
  ASSIGN_OR_RETURN(BatchOutput scales,
                   BatchOutput::Make(
                       env, scope, items, OutputSpec{DType::kFloat32, {rows}}, [](QuantizeItem& i) {
                         return BatchOutput::Target{i.req->output_name(), "scales", i.spec.scales,
                                                    i.resp->mutable_scales()};
                       }));
  RETURN_IF_ERROR(kernels::Quantize(scope.ctx(), args, values.view(), scales.view()));
  RETURN_IF_ERROR(scope.Finish());
  RETURN_IF_ERROR(values.Commit());
  return scales.Commit();
}

// ------------------------------------------------------------------ Linear

absl::StatusOr<LinearItem> PrepareLinear(const OpEnv& env, const v1::LinearRequest& req,
                                         v1::LinearResponse* resp) {
  const TensorStore& store = *env.store;
  LinearItem item;
  item.req = &req;
  item.resp = resp;
  ASSIGN_OR_RETURN(item.input, ResolveInput(req.input(), "input", store));
  ASSIGN_OR_RETURN(item.weight, ResolveWeight(req.weight(), "weight", store));
  ASSIGN_OR_RETURN(item.bias, ResolveOptionalBias(req.bias(), "bias", store));
  item.args.input = item.input.view;
  item.args.weight = item.weight.view;
  if (item.bias.has_value()) item.args.bias = item.bias->view;
  ASSIGN_OR_RETURN(item.spec, kernels::CheckLinear(item.args));

  const ConstTensorView& x = item.input.view;
  item.rows = x.rows();
  if (MayShareWeightLaunches(env, req.output_name(),
                             kernels::LinearBatchInvariantRows(env.device->backend(), item.args),
                             item)) {
    item.key =
        absl::StrCat("linear/", static_cast<int>(x.dtype), "/", x.last_dim(), "/",
                     Identity(req.weight(), item.weight.resident.get()), "/",
                     item.bias.has_value() ? Identity(req.bias(), item.bias->resident.get()) : "");
  }
  return item;
}

absl::Status LaunchLinear(const OpEnv& env, std::span<LinearItem* const> items) {
  const LinearItem& first = *items[0];
  const Shape shape = BatchShape(items, first.args.input);
  CallScope scope(*env.device, env.metrics, Op::kLinear);
  kernels::LinearArgs args = first.args;
  ASSIGN_OR_RETURN(args.input,
                   BatchInput(scope, items, shape, [](const LinearItem& i) { return i.input; }));
  const OutputSpec whole{first.spec.dtype, items.size() == 1
                                               ? first.spec.shape
                                               : Shape{shape[0], first.spec.shape.back()}};
  ASSIGN_OR_RETURN(BatchOutput output,
                   BatchOutput::Make(env, scope, items, whole, [](LinearItem& i) {
                     return BatchOutput::Target{i.req->output_name(), "output_name", i.spec,
                                                i.resp->mutable_output()};
                   }));
  RETURN_IF_ERROR(kernels::Linear(scope.ctx(), args, output.view()));
  RETURN_IF_ERROR(scope.Finish());
  return output.Commit();
}

// --------------------------------------------------------------------- Ffn

absl::StatusOr<FfnItem> PrepareFfn(const OpEnv& env, const v1::FfnRequest& req,
                                   v1::FfnResponse* resp) {
  const TensorStore& store = *env.store;
  FfnItem item;
  item.req = &req;
  item.resp = resp;
  ASSIGN_OR_RETURN(item.input, ResolveInput(req.input(), "input", store));
  ASSIGN_OR_RETURN(item.w_gate, ResolveWeight(req.w_gate(), "w_gate", store));
  ASSIGN_OR_RETURN(item.w_up, ResolveWeight(req.w_up(), "w_up", store));
  ASSIGN_OR_RETURN(item.w_down, ResolveWeight(req.w_down(), "w_down", store));
  ASSIGN_OR_RETURN(item.b_gate, ResolveOptionalBias(req.b_gate(), "b_gate", store));
  ASSIGN_OR_RETURN(item.b_up, ResolveOptionalBias(req.b_up(), "b_up", store));
  ASSIGN_OR_RETURN(item.b_down, ResolveOptionalBias(req.b_down(), "b_down", store));
  kernels::FfnArgs& args = item.args;
  args.input = item.input.view;
  args.w_gate = item.w_gate.view;
  args.w_up = item.w_up.view;
  args.w_down = item.w_down.view;
  if (item.b_gate.has_value()) args.b_gate = item.b_gate->view;
  if (item.b_up.has_value()) args.b_up = item.b_up->view;
  if (item.b_down.has_value()) args.b_down = item.b_down->view;
  ASSIGN_OR_RETURN(item.spec, kernels::CheckFfn(args));

  const ConstTensorView& x = item.input.view;
  item.rows = x.rows();
  if (MayShareWeightLaunches(env, req.output_name(),
                             kernels::FfnBatchInvariantRows(env.device->backend(), args), item)) {
    auto bias = [](const std::string& name, const std::optional<ResolvedInput>& b) {
      return b.has_value() ? Identity(name, b->resident.get()) : std::string();
    };
    item.key = absl::StrCat("ffn/", static_cast<int>(x.dtype), "/", x.last_dim(), "/",
                            Identity(req.w_gate(), item.w_gate.resident.get()), "/",
                            Identity(req.w_up(), item.w_up.resident.get()), "/",
                            Identity(req.w_down(), item.w_down.resident.get()), "/",
                            bias(req.b_gate(), item.b_gate), "/", bias(req.b_up(), item.b_up), "/",
                            bias(req.b_down(), item.b_down));
  }
  return item;
}

absl::Status LaunchFfn(const OpEnv& env, std::span<FfnItem* const> items) {
  const FfnItem& first = *items[0];
  const Shape shape = BatchShape(items, first.args.input);
  CallScope scope(*env.device, env.metrics, Op::kFfn);
  kernels::FfnArgs args = first.args;
  ASSIGN_OR_RETURN(args.input,
                   BatchInput(scope, items, shape, [](const FfnItem& i) { return i.input; }));
  // The output has the input's shape.
  ASSIGN_OR_RETURN(
      BatchOutput output,
      BatchOutput::Make(env, scope, items, OutputSpec{first.spec.dtype, shape}, [](FfnItem& i) {
        return BatchOutput::Target{i.req->output_name(), "output_name", i.spec,
                                   i.resp->mutable_output()};
      }));
  RETURN_IF_ERROR(kernels::Ffn(scope.ctx(), args, output.view()));
  RETURN_IF_ERROR(scope.Finish());
  return output.Commit();
}

// -------------------------------------------------------------- Dequantize

absl::StatusOr<DequantizeItem> PrepareDequantize(const OpEnv& env, const v1::DequantizeRequest& req,
                                                 v1::DequantizeResponse* resp) {
  DequantizeItem item;
  item.req = &req;
  item.resp = resp;
  kernels::DequantizeArgs& args = item.args;
  if (req.dtype() == v1::DTYPE_UNSPECIFIED) {
    args.dtype = DType::kFloat16;
  } else {
    ASSIGN_OR_RETURN(args.dtype, DTypeFromProto(req.dtype(), "dtype"));
  }
  if (!req.name().empty()) {
    if (IsSet(req.values()) || IsSet(req.scales())) {
      return absl::InvalidArgumentError(
          "name: expected either name or values and scales, found both");
    }
    ASSIGN_OR_RETURN(item.quantized, env.store->Get(req.name(), "name"));
    if (!item.quantized->quantized()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "name: '", req.name(), "' is not a quantized tensor (it is ",
          kernels::DTypeName(item.quantized->dtype), " ",
          kernels::ShapeToString(item.quantized->shape), "); pass values and scales instead"));
    }
    args.values = item.quantized->view();
    args.scales = item.quantized->scales_view();
  } else {
    ASSIGN_OR_RETURN(item.values, ResolveInput(req.values(), "values", *env.store));
    ASSIGN_OR_RETURN(item.scales, ResolveInput(req.scales(), "scales", *env.store));
    args.values = item.values.view;
    args.scales = item.scales.view;
  }
  ASSIGN_OR_RETURN(item.spec, kernels::CheckDequantize(args));
  const ConstTensorView& v = args.values;
  item.rows = v.rows();
  // Per-row scales only: [rows] travel with their rows.
  const bool per_row = args.scales.rank() == 1 && args.scales.shape[0] == item.rows;
  const int64_t result_bytes =
      v.num_elements() * static_cast<int64_t>(kernels::ItemSize(args.dtype));
  if (item.quantized == nullptr && Inline(item.values) && Inline(item.scales) && per_row &&
      req.output_name().empty() && RowsCanBatch(env, v, result_bytes)) {
    item.key = absl::StrCat("dequantize/", v.last_dim(), "/", static_cast<int>(args.dtype));
  }
  return item;
}

absl::Status LaunchDequantize(const OpEnv& env, std::span<DequantizeItem* const> items) {
  const DequantizeItem& first = *items[0];
  const bool one = items.size() == 1;
  const int64_t rows = TotalRows(items);
  const Shape values_shape =
      one ? first.args.values.shape : Shape{rows, first.args.values.last_dim()};
  CallScope scope(*env.device, env.metrics, Op::kDequantize);
  kernels::DequantizeArgs args = first.args;
  if (first.quantized == nullptr) {
    ASSIGN_OR_RETURN(args.values, BatchInput(scope, items, values_shape,
                                             [](const DequantizeItem& i) { return i.values; }));
    ASSIGN_OR_RETURN(args.scales,
                     BatchInput(scope, items, one ? first.args.scales.shape : Shape{rows},
                                [](const DequantizeItem& i) { return i.scales; }));
  }
  ASSIGN_OR_RETURN(BatchOutput output,
                   BatchOutput::Make(env, scope, items, OutputSpec{first.spec.dtype, values_shape},
                                     [](DequantizeItem& i) {
                                       return BatchOutput::Target{i.req->output_name(),
                                                                  "output_name", i.spec,
                                                                  i.resp->mutable_output()};
                                     }));
  RETURN_IF_ERROR(kernels::Dequantize(scope.ctx(), args, output.view()));
  RETURN_IF_ERROR(scope.Finish());
  return output.Commit();
}

// ------------------------------------------- unbatched entry points (op_runner.h)

namespace {

template <typename Traits>
absl::Status RunAlone(const OpEnv& env, const typename Traits::Request& req,
                      typename Traits::Response* resp) {
  ASSIGN_OR_RETURN(typename Traits::Item item, Traits::Prepare(env, req, resp));
  typename Traits::Item* one[] = {&item};
  return Traits::Launch(env, one);
}

}  // namespace

absl::Status RunRmsNorm(const OpEnv& env, const v1::RmsNormRequest& req,
                        v1::RmsNormResponse* resp) {
  return RunAlone<RmsNormOp>(env, req, resp);
}
absl::Status RunSwiGlu(const OpEnv& env, const v1::SwiGluRequest& req, v1::SwiGluResponse* resp) {
  return RunAlone<SwiGluOp>(env, req, resp);
}
absl::Status RunRope(const OpEnv& env, const v1::RopeRequest& req, v1::RopeResponse* resp) {
  return RunAlone<RopeOp>(env, req, resp);
}
absl::Status RunQuantize(const OpEnv& env, const v1::QuantizeRequest& req,
                         v1::QuantizeResponse* resp) {
  return RunAlone<QuantizeOp>(env, req, resp);
}
absl::Status RunDequantize(const OpEnv& env, const v1::DequantizeRequest& req,
                           v1::DequantizeResponse* resp) {
  return RunAlone<DequantizeOp>(env, req, resp);
}
absl::Status RunLinear(const OpEnv& env, const v1::LinearRequest& req, v1::LinearResponse* resp) {
  return RunAlone<LinearOp>(env, req, resp);
}
absl::Status RunFfn(const OpEnv& env, const v1::FfnRequest& req, v1::FfnResponse* resp) {
  return RunAlone<FfnOp>(env, req, resp);
}

// ------------------------------------------------------------------ Submit

absl::Status SubmitTask(const ServiceContext& service, std::unique_ptr<BatchTask>* task) {
  if (service.batcher != nullptr && !(*task)->key().empty()) {
    return service.batcher->Schedule(task);
  }
  // Runs alone: the executor owns the closure (and destroys it, task and
  // all, when it refuses), so hand it over only through a raw pointer that
  // the caller keeps on refusal.
  (*task)->enqueued = BatchClock::now();
  BatchTask* raw = task->get();
  ServerMetrics* metrics = service.metrics;
  absl::Status scheduled = service.executor->Schedule([raw, metrics] {
    std::vector<std::unique_ptr<BatchTask>> one;
    one.emplace_back(raw);
    RunBatch(metrics, std::move(one));
  });
  if (scheduled.ok()) task->release();
  return scheduled;
}

}  // namespace accel::server
