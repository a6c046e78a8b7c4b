// The batchable ops (RmsNorm, SwiGlu, Rope, Quantize, Dequantize, Linear,
// Ffn) split in
// two: Prepare decodes and validates one request (on the gRPC thread) into
// an Item that holds its views and its batch key; Launch runs one or more
// Items of one key as one kernel launch over their concatenated rows and
// splits the results back into their responses. The unary RunRmsNorm & co.
// (op_runner.h) are Prepare + Launch of one item, so batched and unbatched
// requests share every line of op code.
//
// Bit-identical by construction: each of these kernels computes a row
// (token) from that row alone, with the same code path whatever the number
// of rows (tests/integration/batching_test.cc checks the bytes). The key
// holds everything a launch shares: op, dtype, trailing shape, the resident
// weight or cache (its name and address, so a replaced tensor never mixes
// with the old one) and the parameters (eps, residual presence and
// return_residual, style, k presence, granularity, output dtype). A request
// gets no key, and runs alone, when it names an output (results stay
// resident per request), passes a weight/cache inline, sends its main
// inputs by name, asks for per-tensor Quantize (one scale over the whole
// request), or is empty. Linear and Ffn are batched only where their
// kernels compute every row alone for any row count up to a bound
// (kernels::LinearBatchInvariantRows, FfnBatchInvariantRows: int8 weights
// on a GPU, up to 32 rows per launch); elsewhere OpenBLAS and cuBLAS
// choose kernels and blocking by M, so a row's result could change with
// the batch size: those calls run alone.
//
// OpTask wraps an Item as a BatchTask for the Batcher; SubmitTask hands it
// to the Batcher (with a key) or the executor (alone).
//
// Thread-safety: the functions are reentrant; an Item belongs to one task.
#pragma once

#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "accel/kernels/ops.h"
#include "accel/v1/tensor_ops.pb.h"
#include "server/batcher.h"
#include "server/output_slot.h"
#include "server/service_context.h"
#include "server/tensor_codec.h"

namespace accel::server {

// Fields every item has: where its request and response live, its key
// (empty: runs alone), its rows (tokens), and the most rows and launches in
// flight of its key (BatchTask::max_batch_rows, max_inflight_launches).
struct ItemBase {
  std::string key;
  int64_t rows = 0;
  int64_t max_batch_rows = std::numeric_limits<int64_t>::max();
  int max_inflight = std::numeric_limits<int>::max();
};

struct RmsNormItem : ItemBase {
  const v1::RmsNormRequest* req = nullptr;
  v1::RmsNormResponse* resp = nullptr;
  ResolvedInput input, weight;
  std::optional<ResolvedInput> residual;
  bool want_residual = false;
  kernels::RmsNormArgs args;
  kernels::OutputSpec spec;
};
absl::StatusOr<RmsNormItem> PrepareRmsNorm(const OpEnv& env, const v1::RmsNormRequest& req,
                                           v1::RmsNormResponse* resp);
absl::Status LaunchRmsNorm(const OpEnv& env, std::span<RmsNormItem* const> items);

struct SwiGluItem : ItemBase {
  const v1::SwiGluRequest* req = nullptr;
  v1::SwiGluResponse* resp = nullptr;
  ResolvedInput gate, up;
  kernels::SwiGluArgs args;
  kernels::OutputSpec spec;
};
absl::StatusOr<SwiGluItem> PrepareSwiGlu(const OpEnv& env, const v1::SwiGluRequest& req,
                                         v1::SwiGluResponse* resp);
absl::Status LaunchSwiGlu(const OpEnv& env, std::span<SwiGluItem* const> items);

struct RopeItem : ItemBase {
  const v1::RopeRequest* req = nullptr;
  v1::RopeResponse* resp = nullptr;
  ResolvedInput q;
  std::optional<ResolvedInput> k;
  ResolvedInput cos, sin, positions;  // cos/sin when inline
  ResidentTensorPtr cache;            // when the tables come from a cache
  // Resident positions read back from a GPU for the range check; a vector,
  // whose heap buffer (args.positions points into it) survives a move.
  std::vector<char> positions_on_host;
  kernels::RopeArgs args;
  kernels::OutputSpec q_spec, k_spec;
};
absl::StatusOr<RopeItem> PrepareRope(const OpEnv& env, const v1::RopeRequest& req,
                                     v1::RopeResponse* resp);
absl::Status LaunchRope(const OpEnv& env, std::span<RopeItem* const> items);

struct QuantizeItem : ItemBase {
  const v1::QuantizeRequest* req = nullptr;
  v1::QuantizeResponse* resp = nullptr;
  ResolvedInput input;
  kernels::QuantizeArgs args;
  kernels::QuantizeSpec spec;
};
absl::StatusOr<QuantizeItem> PrepareQuantize(const OpEnv& env, const v1::QuantizeRequest& req,
                                             v1::QuantizeResponse* resp);
absl::Status LaunchQuantize(const OpEnv& env, std::span<QuantizeItem* const> items);

struct DequantizeItem : ItemBase {
  const v1::DequantizeRequest* req = nullptr;
  v1::DequantizeResponse* resp = nullptr;
  ResidentTensorPtr quantized;  // when the request names a quantized tensor
  ResolvedInput values, scales;
  kernels::DequantizeArgs args;
  kernels::OutputSpec spec;
};
absl::StatusOr<DequantizeItem> PrepareDequantize(const OpEnv& env, const v1::DequantizeRequest& req,
                                                 v1::DequantizeResponse* resp);
absl::Status LaunchDequantize(const OpEnv& env, std::span<DequantizeItem* const> items);

struct LinearItem : ItemBase {
  const v1::LinearRequest* req = nullptr;
  v1::LinearResponse* resp = nullptr;
  ResolvedInput input;
  ResolvedWeight weight;
  std::optional<ResolvedInput> bias;
  kernels::LinearArgs args;
  kernels::OutputSpec spec;
};
absl::StatusOr<LinearItem> PrepareLinear(const OpEnv& env, const v1::LinearRequest& req,
                                         v1::LinearResponse* resp);
absl::Status LaunchLinear(const OpEnv& env, std::span<LinearItem* const> items);

struct FfnItem : ItemBase {
  const v1::FfnRequest* req = nullptr;
  v1::FfnResponse* resp = nullptr;
  ResolvedInput input;
  ResolvedWeight w_gate, w_up, w_down;
  std::optional<ResolvedInput> b_gate, b_up, b_down;
  kernels::FfnArgs args;
  kernels::OutputSpec spec;
};
absl::StatusOr<FfnItem> PrepareFfn(const OpEnv& env, const v1::FfnRequest& req,
                                   v1::FfnResponse* resp);
absl::Status LaunchFfn(const OpEnv& env, std::span<FfnItem* const> items);

// Ties an op's request, response, item and functions together for OpTask.
#define ACCEL_BATCH_OP(Name, Request_, Response_, Item_, kOp_, PrepareFn, LaunchFn)             \
  struct Name {                                                                                 \
    using Request = Request_;                                                                   \
    using Response = Response_;                                                                 \
    using Item = Item_;                                                                         \
    static constexpr Op kOp = kOp_;                                                             \
    static absl::StatusOr<Item> Prepare(const OpEnv& env, const Request& req, Response* resp) { \
      return PrepareFn(env, req, resp);                                                         \
    }                                                                                           \
    static absl::Status Launch(const OpEnv& env, std::span<Item* const> items) {                \
      return LaunchFn(env, items);                                                              \
    }                                                                                           \
  };
ACCEL_BATCH_OP(RmsNormOp, v1::RmsNormRequest, v1::RmsNormResponse, RmsNormItem, Op::kRmsNorm,
               PrepareRmsNorm, LaunchRmsNorm)
ACCEL_BATCH_OP(SwiGluOp, v1::SwiGluRequest, v1::SwiGluResponse, SwiGluItem, Op::kSwiGlu,
               PrepareSwiGlu, LaunchSwiGlu)
ACCEL_BATCH_OP(RopeOp, v1::RopeRequest, v1::RopeResponse, RopeItem, Op::kRope, PrepareRope,
               LaunchRope)
ACCEL_BATCH_OP(QuantizeOp, v1::QuantizeRequest, v1::QuantizeResponse, QuantizeItem, Op::kQuantize,
               PrepareQuantize, LaunchQuantize)
ACCEL_BATCH_OP(LinearOp, v1::LinearRequest, v1::LinearResponse, LinearItem, Op::kLinear,
               PrepareLinear, LaunchLinear)
ACCEL_BATCH_OP(FfnOp, v1::FfnRequest, v1::FfnResponse, FfnItem, Op::kFfn, PrepareFfn, LaunchFfn)
ACCEL_BATCH_OP(DequantizeOp, v1::DequantizeRequest, v1::DequantizeResponse, DequantizeItem,
               Op::kDequantize, PrepareDequantize, LaunchDequantize)
#undef ACCEL_BATCH_OP

// The caller's deadline on the steady clock (max() when it has none).
BatchClock::time_point SteadyDeadline(const grpc::CallbackServerContext& call);

// One prepared request as a BatchTask. `call` (the unary call, or the
// stream a message came on) tells whether the caller is still there;
// `done` receives the final status once the response is filled.
template <typename Traits>
class OpTask final : public BatchTask {
 public:
  using Item = typename Traits::Item;

  OpTask(const OpEnv* env, Item item, grpc::CallbackServerContext* call, bool runs_inline,
         absl::AnyInvocable<void(absl::Status) &&> done)
      : env_(env),
        item_(std::move(item)),
        call_(call),
        deadline_(SteadyDeadline(*call)),
        runs_inline_(runs_inline),
        done_(std::move(done)) {}

  Op op() const override { return Traits::kOp; }
  const std::string& key() const override { return item_.key; }
  int64_t rows() const override { return item_.rows; }
  int64_t max_batch_rows() const override { return item_.max_batch_rows; }
  int max_inflight_launches() const override { return item_.max_inflight; }
  BatchClock::time_point deadline() const override { return deadline_; }
  absl::Status CheckAlive() override { return CheckCallAlive(*call_); }
  bool runs_inline() const override { return runs_inline_; }

  absl::Status LaunchBatch(std::span<BatchTask* const> batch) override {
    // Every task of a key is an OpTask<Traits>: the key starts with the op.
    std::vector<Item*> items;
    items.reserve(batch.size());
    for (BatchTask* task : batch) items.push_back(&static_cast<OpTask*>(task)->item_);
    return Traits::Launch(*env_, items);
  }
  void Done(absl::Status status) override { std::move(done_)(std::move(status)); }

 private:
  const OpEnv* env_;
  Item item_;
  grpc::CallbackServerContext* call_;
  const BatchClock::time_point deadline_;
  const bool runs_inline_;
  absl::AnyInvocable<void(absl::Status) &&> done_;
};

// Hands `*task` to the batcher when it has a key, or to the executor to run
// alone (RunBatch of one). On OK the task is taken; otherwise it stays with
// the caller, unrun (RESOURCE_EXHAUSTED when full, UNAVAILABLE draining).
absl::Status SubmitTask(const ServiceContext& service, std::unique_ptr<BatchTask>* task);

}  // namespace accel::server
