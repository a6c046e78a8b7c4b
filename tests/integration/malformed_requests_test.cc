// A stream of malformed requests (random bytes, random dtypes and shapes,
// lengths that disagree) gets clear errors; the server stays up and its
// resident tensors stay intact.
#include <future>
#include <random>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "server_fixture.h"

namespace accel::testing {
namespace {

using kernels::DType;

class MalformedTest : public ServerTest {
 protected:
  std::mt19937_64 rng_{20261126};

  int64_t Pick(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }

  // A tensor that is usually a little wrong: odd dtype, odd shape, or data of
  // the wrong length; occasionally right.
  v1::Tensor RandomTensor() {
    v1::Tensor t;
    t.set_dtype(static_cast<v1::DType>(Pick(-1, 8)));
    const int rank = static_cast<int>(Pick(0, 5));
    int64_t elements = 1;
    for (int i = 0; i < rank; ++i) {
      int64_t d = Pick(0, 9) == 0 ? Pick(-3, -1) : Pick(0, 12);
      if (Pick(0, 30) == 0) d = int64_t{1} << Pick(20, 62);
      t.add_shape(d);
      elements = d > 0 && elements < (int64_t{1} << 20) ? elements * d : elements;
    }
    int64_t len = std::min<int64_t>(elements * 2, 4096) + Pick(-3, 3);
    if (len < 0) len = 0;
    std::string data(static_cast<size_t>(len), '\0');
    for (char& c : data) c = static_cast<char>(Pick(0, 255));
    t.set_data(std::move(data));
    return t;
  }

  v1::TensorRef RandomRef() {
    switch (Pick(0, 4)) {
      case 0:
        return NamedRef(Pick(0, 1) ? "w" : "missing");
      case 1:
        return NamedRef(Pick(0, 1) ? "wq" : "../../etc");
      case 2:
        return v1::TensorRef();
      default:
        return InlineRef(RandomTensor());
    }
  }

  std::string RandomName() {
    static const char* kNames[] = {"w", "wq", "", "out", "../x", "a b", "c", "x/y", "/abs"};
    return kNames[Pick(0, 8)];
  }
};

TEST_F(MalformedTest, RandomRequestsGetErrorsAndLeaveTheStoreIntact) {
  ASSERT_TRUE(client().Put("w", MakeFloatTensor(DType::kFloat32, {4}, {1, 2, 3, 4})).ok());
  v1::QuantizeRequest qsetup;
  *qsetup.mutable_input() =
      InlineRef(MakeFloatTensor(DType::kFloat32, {2, 4}, {1, 2, 3, 4, 5, 6, 7, 8}));
  qsetup.set_output_name("wq");
  ASSERT_TRUE(client().Quantize(qsetup).ok());

  int errors = 0;
  for (int i = 0; i < 600; ++i) {
    absl::Status status;
    switch (i % 9) {
      case 0: {
        v1::RmsNormRequest r;
        *r.mutable_input() = RandomRef();
        *r.mutable_weight() = RandomRef();
        if (Pick(0, 1)) *r.mutable_residual() = RandomRef();
        if (Pick(0, 1)) r.set_eps(static_cast<float>(Pick(-2, 2)) * 1e-3f);
        r.set_return_residual(Pick(0, 1));
        status = client().RmsNorm(r).status();
        break;
      }
      case 1: {
        v1::SwiGluRequest r;
        *r.mutable_gate() = RandomRef();
        *r.mutable_up() = RandomRef();
        status = client().SwiGlu(r).status();
        break;
      }
      case 2: {
        v1::LinearRequest r;
        *r.mutable_input() = RandomRef();
        r.set_weight(RandomName());
        if (Pick(0, 1)) r.set_bias(RandomName());
        status = client().Linear(r).status();
        break;
      }
      case 3: {
        v1::RopeRequest r;
        *r.mutable_q() = RandomRef();
        if (Pick(0, 1)) *r.mutable_k() = RandomRef();
        if (Pick(0, 1)) {
          r.set_cache(RandomName());
        } else {
          *r.mutable_cos() = RandomRef();
          *r.mutable_sin() = RandomRef();
        }
        if (Pick(0, 1)) *r.mutable_positions() = RandomRef();
        r.set_position_offset(Pick(-5, 5));
        r.set_style(static_cast<v1::RopeStyle>(Pick(-1, 3)));
        status = client().Rope(r).status();
        break;
      }
      case 4: {
        v1::QuantizeRequest r;
        *r.mutable_input() = RandomRef();
        r.set_granularity(static_cast<v1::Granularity>(Pick(-1, 3)));
        if (Pick(0, 3) == 0) r.set_output_name(RandomName() == "w" ? "w" : "q_out");
        status = client().Quantize(r).status();
        break;
      }
      case 5: {
        v1::DequantizeRequest r;
        if (Pick(0, 1)) {
          r.set_name(RandomName());
        } else {
          *r.mutable_values() = RandomRef();
          *r.mutable_scales() = RandomRef();
        }
        r.set_dtype(static_cast<v1::DType>(Pick(-1, 8)));
        status = client().Dequantize(r).status();
        break;
      }
      case 6: {
        v1::QuantizationErrorRequest r;
        *r.mutable_original() = RandomRef();
        *r.mutable_values() = RandomRef();
        *r.mutable_scales() = RandomRef();
        status = client().QuantizationError(r).status();
        break;
      }
      case 7: {
        v1::FfnRequest r;
        *r.mutable_input() = RandomRef();
        r.set_w_gate(RandomName());
        r.set_w_up(RandomName());
        r.set_w_down(RandomName());
        status = client().Ffn(r).status();
        break;
      }
      case 8: {
        v1::Tensor t = RandomTensor();
        std::string name = RandomName();
        if (name == "w" || name == "wq") name = "fresh";
        status = client().Put(name, t, false).status();
        if (status.ok()) ASSERT_TRUE(client().Delete(name).ok());
        break;
      }
    }
    if (!status.ok()) {
      ++errors;
      EXPECT_NE(status.code(), absl::StatusCode::kInternal) << status;
      EXPECT_NE(status.code(), absl::StatusCode::kUnknown) << status;
      EXPECT_FALSE(status.message().empty());
    }
  }
  EXPECT_GT(errors, 500);

  // Random bytes as the serialized request of every op method.
  grpc::GenericStub generic(client().channel());
  for (const char* method : {"RmsNorm", "SwiGlu", "Linear", "Ffn", "Rope", "Quantize", "Dequantize",
                             "QuantizationError", "BuildRopeCache"}) {
    for (int i = 0; i < 20; ++i) {
      std::string bytes(static_cast<size_t>(Pick(0, 300)), '\0');
      for (char& c : bytes) c = static_cast<char>(Pick(0, 255));
      grpc::Slice slice(bytes);
      grpc::ByteBuffer request(&slice, 1), response;
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      std::promise<grpc::Status> done;
      generic.UnaryCall(&context, std::string("/accel.v1.TensorOps/") + method, {}, &request,
                        &response, [&](grpc::Status s) { done.set_value(s); });
      grpc::Status status = done.get_future().get();
      EXPECT_NE(status.error_code(), grpc::StatusCode::UNAVAILABLE) << method;
    }
  }

  // Still serving, tensors intact, nothing leaked into the quota.
  auto w = client().Get("w");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*TensorToFloats(w->ToTensor()), (std::vector<float>{1, 2, 3, 4}));
  auto wq = client().Get("wq");
  ASSERT_TRUE(wq.ok());
  EXPECT_TRUE(wq->info.quantized());
  auto info = client().ServerInfo();
  ASSERT_TRUE(info.ok());
  int64_t listed_bytes = 0;
  for (const auto& t : *client().List()) listed_bytes += t.nbytes();
  EXPECT_EQ(info->resident_bytes(), listed_bytes);
}

}  // namespace
}  // namespace accel::testing
