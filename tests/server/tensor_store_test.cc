#include "server/tensor_store.h"

#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace accel::server {
namespace {

using kernels::DType;
using ::testing::HasSubstr;

// A CPU tensor of `dtype` and `shape`, every byte set to `fill`.
std::shared_ptr<ResidentTensor> MakeTensor(const std::string& name, DType dtype,
                                           kernels::Shape shape, uint8_t fill = 0) {
  auto tensor = std::make_shared<ResidentTensor>();
  tensor->name = name;
  tensor->dtype = dtype;
  tensor->shape = std::move(shape);
  const size_t nbytes =
      static_cast<size_t>(kernels::NumElements(tensor->shape)) * kernels::ItemSize(dtype);
  absl::StatusOr<kernels::Buffer> buffer =
      kernels::Buffer::Allocate(kernels::Backend::kCpu, nbytes);
  if (!buffer.ok()) std::abort();
  tensor->values = *std::move(buffer);
  if (nbytes > 0) std::memset(tensor->values.data(), fill, nbytes);
  return tensor;
}

// An int8 [rows, cols] tensor with FLOAT32 [rows] scales.
std::shared_ptr<ResidentTensor> MakeQuantized(const std::string& name, int64_t rows, int64_t cols) {
  auto tensor = MakeTensor(name, DType::kInt8, {rows, cols});
  absl::StatusOr<kernels::Buffer> scales =
      kernels::Buffer::Allocate(kernels::Backend::kCpu, static_cast<size_t>(rows) * 4);
  if (!scales.ok()) std::abort();
  tensor->scales = *std::move(scales);
  tensor->scales_shape = {rows};
  return tensor;
}

TensorStore MakeStore(int64_t limit) { return TensorStore(TensorStore::Options{limit, "cpu"}); }

// Reserves and inserts in one step, as the service does.
absl::Status ReserveAndInsert(TensorStore& store, std::shared_ptr<ResidentTensor> tensor,
                              bool overwrite = false) {
  absl::StatusOr<Reservation> reservation = store.Reserve(tensor->nbytes());
  if (!reservation.ok()) return reservation.status();
  return store.Insert(std::move(tensor), overwrite, *reservation);
}

// ------------------------------------------------------------ ValidateTensorName

TEST(ValidateTensorName, AcceptsTypicalNames) {
  for (const std::string& name :
       std::vector<std::string>{"w", "model.layers.0.mlp.gate_proj.weight", "a:b/c-d_e",
                                "rope/cache:0", "x.y", "A-Z_09", std::string(256, 'a')}) {
    EXPECT_TRUE(ValidateTensorName(name, "name").ok()) << name;
  }
}

TEST(ValidateTensorName, RejectsMalformedNamesNamingTheField) {
  for (const std::string& name :
       {std::string(), std::string(257, 'a'), std::string("a b"), std::string("/abs"),
        std::string("a..b"), std::string("../x"), std::string("x\n"), std::string("caf\xc3\xa9"),
        std::string("a\0b", 3), std::string("a*"), std::string("..")}) {
    absl::Status status = ValidateTensorName(name, "output_name");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(std::string(status.message()), HasSubstr("output_name: expected 1-256 characters"))
        << name;
  }
  EXPECT_THAT(std::string(ValidateTensorName("a b", "name").message()),
              HasSubstr("found 'a b' with ' ' at position 1"));
  EXPECT_THAT(std::string(ValidateTensorName(std::string(300, 'x'), "name").message()),
              HasSubstr("found 300 characters"));
}

// ---------------------------------------------------------------- Reservation

TEST(TensorStore, ReserveHoldsQuotaUntilDestroyed) {
  TensorStore store = MakeStore(1000);
  {
    absl::StatusOr<Reservation> a = store.Reserve(600);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a->bytes(), 600);
    EXPECT_EQ(store.reserved_bytes(), 600);
    absl::StatusOr<Reservation> b = store.Reserve(401);
    EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
    absl::StatusOr<Reservation> c = store.Reserve(400);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(store.reserved_bytes(), 1000);
    // Zero bytes always fit, even in a full store.
    EXPECT_TRUE(store.Reserve(0).ok());
  }
  EXPECT_EQ(store.reserved_bytes(), 0);
  EXPECT_EQ(store.resident_bytes(), 0);
}

TEST(TensorStore, ReserveExactlyTheLimitSucceeds) {
  TensorStore store = MakeStore(1 << 20);
  absl::StatusOr<Reservation> all = store.Reserve(1 << 20);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(store.Reserve(1).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(TensorStore, ReserveMessageNamesEverySize) {
  TensorStore store = MakeStore(1048576);
  ASSERT_TRUE(ReserveAndInsert(store, MakeTensor("w", DType::kInt8, {1000})).ok());
  absl::StatusOr<Reservation> r = store.Reserve(67108864);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(r.status().message(),
            "resident memory quota exceeded: 67108864 bytes requested, 1000 resident, 0 "
            "reserved, limit 1048576 (--max_resident_bytes)");
  absl::StatusOr<Reservation> held = store.Reserve(48);
  ASSERT_TRUE(held.ok());
  EXPECT_THAT(std::string(store.Reserve(1048576).status().message()),
              HasSubstr("1048576 bytes requested, 1000 resident, 48 reserved, limit 1048576"));
}

TEST(TensorStore, ReserveRejectsNegativeAndHugeRequests) {
  TensorStore store = MakeStore(100);
  EXPECT_EQ(store.Reserve(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Reserve(INT64_MAX).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store.reserved_bytes(), 0);
}

TEST(TensorStore, ZeroLimitHoldsOnlyEmptyTensors) {
  TensorStore store = MakeStore(0);
  EXPECT_EQ(store.limit_bytes(), 0);
  EXPECT_EQ(store.Reserve(1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(ReserveAndInsert(store, MakeTensor("empty", DType::kFloat32, {0, 8})).ok());
  EXPECT_EQ(store.size(), 1);
}

TEST(TensorStore, ReservationMovesTransferOwnership) {
  TensorStore store = MakeStore(1000);
  absl::StatusOr<Reservation> r = store.Reserve(100);
  ASSERT_TRUE(r.ok());
  Reservation moved(std::move(*r));
  EXPECT_EQ(moved.bytes(), 100);
  EXPECT_EQ(r->bytes(), 0);
  EXPECT_EQ(store.reserved_bytes(), 100);
  {
    absl::StatusOr<Reservation> other = store.Reserve(200);
    ASSERT_TRUE(other.ok());
    EXPECT_EQ(store.reserved_bytes(), 300);
    // Assignment releases what `moved` held and takes `other`'s bytes.
    moved = std::move(*other);
    EXPECT_EQ(store.reserved_bytes(), 200);
    EXPECT_EQ(moved.bytes(), 200);
  }
  EXPECT_EQ(store.reserved_bytes(), 200);
  moved = Reservation();
  EXPECT_EQ(store.reserved_bytes(), 0);
}

// ---------------------------------------------------------------- Insert / Get

TEST(TensorStore, InsertConvertsTheReservationIntoResidentBytes) {
  TensorStore store = MakeStore(1000);
  auto tensor = MakeTensor("w", DType::kFloat32, {2, 3}, 7);
  absl::StatusOr<Reservation> r = store.Reserve(24);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(store.Insert(tensor, false, *r).ok());
  EXPECT_EQ(r->bytes(), 0);
  EXPECT_EQ(store.reserved_bytes(), 0);
  EXPECT_EQ(store.resident_bytes(), 24);
  EXPECT_EQ(store.size(), 1);

  absl::StatusOr<ResidentTensorPtr> got = store.Get("w");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->get(), tensor.get());
  EXPECT_EQ((*got)->nbytes(), 24);
  EXPECT_FALSE((*got)->quantized());
  kernels::ConstTensorView view = (*got)->view();
  EXPECT_EQ(view.dtype, DType::kFloat32);
  EXPECT_EQ(view.shape, (kernels::Shape{2, 3}));
  EXPECT_EQ(static_cast<const uint8_t*>(view.data)[5], 7);
  EXPECT_EQ(store.device_name(), "cpu");
}

TEST(TensorStore, SurplusReservationStaysReservedUntilDestroyed) {
  TensorStore store = MakeStore(1000);
  {
    absl::StatusOr<Reservation> r = store.Reserve(100);
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE(store.Insert(MakeTensor("w", DType::kInt8, {30}), false, *r).ok());
    EXPECT_EQ(r->bytes(), 70);
    EXPECT_EQ(store.reserved_bytes(), 70);
    EXPECT_EQ(store.resident_bytes(), 30);
  }
  EXPECT_EQ(store.reserved_bytes(), 0);
  EXPECT_EQ(store.resident_bytes(), 30);
}

TEST(TensorStore, InsertWithAShortReservationTakesTheRestFromFreeQuota) {
  TensorStore store = MakeStore(100);
  Reservation none;
  ASSERT_TRUE(store.Insert(MakeTensor("a", DType::kInt8, {60}), false, none).ok());
  EXPECT_EQ(store.resident_bytes(), 60);
  absl::StatusOr<Reservation> r = store.Reserve(10);
  ASSERT_TRUE(r.ok());
  // 50 bytes with 10 reserved: 40 more do not fit next to 60 resident + 10.
  absl::Status status = store.Insert(MakeTensor("b", DType::kInt8, {50}), false, *r);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(status.message()), HasSubstr("40 bytes requested, 60 resident"));
  EXPECT_EQ(store.size(), 1);
  EXPECT_EQ(store.resident_bytes(), 60);
  EXPECT_EQ(store.reserved_bytes(), 10);
  EXPECT_EQ(r->bytes(), 10);
  ASSERT_TRUE(store.Insert(MakeTensor("b", DType::kInt8, {40}), false, *r).ok());
  EXPECT_EQ(store.resident_bytes(), 100);
  EXPECT_EQ(store.reserved_bytes(), 0);
}

TEST(TensorStore, GetReportsTheFieldOfAMissingName) {
  TensorStore store = MakeStore(1000);
  absl::StatusOr<ResidentTensorPtr> got = store.Get("x", "weight");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(got.status().message(), "weight: no resident tensor named 'x'");
  EXPECT_EQ(store.Get("y").status().message(), "name: no resident tensor named 'y'");
}

TEST(TensorStore, InsertWithoutOverwriteKeepsTheOldTensor) {
  TensorStore store = MakeStore(1000);
  auto old_tensor = MakeTensor("w", DType::kFloat32, {4}, 1);
  ASSERT_TRUE(ReserveAndInsert(store, old_tensor).ok());
  absl::StatusOr<Reservation> r = store.Reserve(8);
  ASSERT_TRUE(r.ok());
  absl::Status status = store.Insert(MakeTensor("w", DType::kInt8, {8}, 2), false, *r);
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(status.message()), HasSubstr("'w'"));
  EXPECT_EQ(store.Get("w")->get(), old_tensor.get());
  EXPECT_EQ(store.resident_bytes(), 16);
  // A failed insert leaves the reservation with its owner.
  EXPECT_EQ(r->bytes(), 8);
  EXPECT_EQ(store.reserved_bytes(), 8);
}

TEST(TensorStore, OverwriteReplacesAndFreesTheOldBytes) {
  TensorStore store = MakeStore(100);
  auto old_tensor = MakeTensor("w", DType::kFloat32, {10}, 1);  // 40 bytes
  ASSERT_TRUE(ReserveAndInsert(store, old_tensor).ok());
  // While the replacement is prepared, both count: 40 + 60 fits, 40 + 61 does not.
  EXPECT_EQ(store.Reserve(61).status().code(), absl::StatusCode::kResourceExhausted);
  absl::StatusOr<Reservation> r = store.Reserve(60);
  ASSERT_TRUE(r.ok());
  auto new_tensor = MakeTensor("w", DType::kInt8, {60}, 2);
  ASSERT_TRUE(store.Insert(new_tensor, true, *r).ok());
  EXPECT_EQ(store.resident_bytes(), 60);
  EXPECT_EQ(store.reserved_bytes(), 0);
  EXPECT_EQ(store.size(), 1);
  EXPECT_EQ(store.Get("w")->get(), new_tensor.get());
  // The old tensor lives on for whoever still holds it (a running op).
  EXPECT_EQ(old_tensor->nbytes(), 40);
  EXPECT_EQ(static_cast<const uint8_t*>(old_tensor->values.data())[0], 1);
  // Overwriting a name that does not exist is a plain insert.
  ASSERT_TRUE(ReserveAndInsert(store, MakeTensor("v", DType::kInt8, {40}), true).ok());
  EXPECT_EQ(store.resident_bytes(), 100);
}

TEST(TensorStore, QuantizedTensorsCountTheirScales) {
  TensorStore store = MakeStore(1000);
  auto q = MakeQuantized("q", 4, 16);
  EXPECT_TRUE(q->quantized());
  EXPECT_EQ(q->nbytes(), 4 * 16 + 4 * 4);
  ASSERT_TRUE(ReserveAndInsert(store, q).ok());
  EXPECT_EQ(store.resident_bytes(), 80);
  ResidentTensorPtr got = *store.Get("q");
  EXPECT_EQ(got->view().dtype, DType::kInt8);
  kernels::ConstTensorView scales = got->scales_view();
  EXPECT_EQ(scales.dtype, DType::kFloat32);
  EXPECT_EQ(scales.shape, (kernels::Shape{4}));
  EXPECT_EQ(scales.data, got->scales->data());
}

TEST(TensorStore, InsertRejectsBadNamesAndInconsistentTensors) {
  TensorStore store = MakeStore(1000);
  Reservation none;
  EXPECT_EQ(store.Insert(MakeTensor("a b", DType::kInt8, {1}), false, none).code(),
            absl::StatusCode::kInvalidArgument);
  auto bad = MakeTensor("bad", DType::kFloat32, {2});
  bad->shape = {3};  // 8 bytes of values for 12 bytes of shape
  EXPECT_EQ(store.Insert(bad, false, none).code(), absl::StatusCode::kInternal);
  auto unspecified = MakeTensor("u", DType::kInt8, {2});
  unspecified->dtype = DType::kUnspecified;
  EXPECT_EQ(store.Insert(unspecified, false, none).code(), absl::StatusCode::kInternal);
  auto bad_scales = MakeQuantized("bq", 2, 2);
  bad_scales->scales_shape = {3};
  EXPECT_EQ(store.Insert(bad_scales, false, none).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(store.Insert(nullptr, false, none).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(store.size(), 0);
  EXPECT_EQ(store.resident_bytes(), 0);
}

TEST(TensorStore, InsertRejectsAReservationOfAnotherStore) {
  TensorStore a = MakeStore(100);
  TensorStore b = MakeStore(100);
  absl::StatusOr<Reservation> r = a.Reserve(10);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(b.Insert(MakeTensor("w", DType::kInt8, {10}), false, *r).code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(a.reserved_bytes(), 10);
  EXPECT_EQ(b.size(), 0);
}

// ------------------------------------------------------------------ InsertAll

TEST(TensorStore, InsertAllIsAllOrNothing) {
  TensorStore store = MakeStore(1000);
  auto existing = MakeTensor("b", DType::kInt8, {5}, 9);
  ASSERT_TRUE(ReserveAndInsert(store, existing).ok());
  absl::StatusOr<Reservation> r = store.Reserve(30);
  ASSERT_TRUE(r.ok());
  std::vector<std::shared_ptr<ResidentTensor>> batch = {MakeTensor("a", DType::kInt8, {10}),
                                                        MakeTensor("b", DType::kInt8, {10}),
                                                        MakeTensor("c", DType::kInt8, {10})};
  absl::Status status = store.InsertAll(batch, false, *r);
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store.size(), 1);
  EXPECT_FALSE(store.Get("a").ok());
  EXPECT_FALSE(store.Get("c").ok());
  EXPECT_EQ(store.Get("b")->get(), existing.get());
  EXPECT_EQ(store.resident_bytes(), 5);
  EXPECT_EQ(store.reserved_bytes(), 30);

  ASSERT_TRUE(store.InsertAll(batch, true, *r).ok());
  EXPECT_EQ(store.size(), 3);
  EXPECT_EQ(store.resident_bytes(), 30);
  EXPECT_EQ(store.reserved_bytes(), 0);
  EXPECT_EQ(store.Get("b")->get(), batch[1].get());
}

TEST(TensorStore, InsertAllRejectsDuplicateNamesInOneCall) {
  TensorStore store = MakeStore(1000);
  absl::StatusOr<Reservation> r = store.Reserve(20);
  ASSERT_TRUE(r.ok());
  absl::Status status = store.InsertAll(
      {MakeTensor("a", DType::kInt8, {10}), MakeTensor("a", DType::kInt8, {10})}, true, *r);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("'a' appears twice"));
  EXPECT_EQ(store.size(), 0);
}

TEST(TensorStore, InsertAllOfNothingSucceeds) {
  TensorStore store = MakeStore(10);
  Reservation none;
  EXPECT_TRUE(store.InsertAll({}, false, none).ok());
  EXPECT_EQ(store.size(), 0);
}

// ------------------------------------------------------------- Remove / List

TEST(TensorStore, RemoveFreesTheBytesAndReturnsTheTensor) {
  TensorStore store = MakeStore(1000);
  auto tensor = MakeTensor("w", DType::kFloat16, {8}, 3);
  ASSERT_TRUE(ReserveAndInsert(store, tensor).ok());
  absl::StatusOr<ResidentTensorPtr> removed = store.Remove("w");
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(removed->get(), tensor.get());
  EXPECT_EQ(store.resident_bytes(), 0);
  EXPECT_EQ(store.size(), 0);
  absl::StatusOr<ResidentTensorPtr> again = store.Remove("w");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(again.status().message(), "name: no resident tensor named 'w'");
  // The name is free again.
  EXPECT_TRUE(ReserveAndInsert(store, MakeTensor("w", DType::kInt8, {1})).ok());
}

TEST(TensorStore, ListIsSortedByName) {
  TensorStore store = MakeStore(1000);
  for (const char* name : {"m", "b.z", "a", "b.a", "z"}) {
    ASSERT_TRUE(ReserveAndInsert(store, MakeTensor(name, DType::kInt8, {1})).ok());
  }
  std::vector<std::string> names;
  for (const ResidentTensorPtr& t : store.List()) names.push_back(t->name);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b.a", "b.z", "m", "z"}));
  EXPECT_TRUE(MakeStore(1).List().empty());
}

// ---------------------------------------------------------------- Concurrency

// Many threads reserve, insert, overwrite, remove and read at once. The
// quota must never be passed, and at the end the accounting must match the
// tensors left.
TEST(TensorStore, ConcurrentMutationsKeepTheAccountingConsistent) {
  constexpr int64_t kLimit = 4096;
  constexpr int kThreads = 8;
  constexpr int kIterations = 2000;
  TensorStore store = MakeStore(kLimit);
  std::atomic<bool> done{false};
  std::atomic<int> violations{0};
  std::atomic<int> inserted{0}, exhausted{0};

  std::thread checker([&] {
    while (!done.load()) {
      const int64_t resident = store.resident_bytes();
      const int64_t reserved = store.reserved_bytes();
      // Read separately, so only each value's own bounds are exact.
      if (resident < 0 || resident > kLimit || reserved < 0 || reserved > kLimit) ++violations;
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      for (int i = 0; i < kIterations; ++i) {
        const std::string name = absl::StrCat("t", rng() % 24);
        const int64_t bytes = 1 + static_cast<int64_t>(rng() % 512);
        switch (rng() % 6) {
          case 0:
          case 1: {
            absl::Status s =
                ReserveAndInsert(store, MakeTensor(name, DType::kInt8, {bytes}), rng() % 2 == 0);
            if (s.ok()) ++inserted;
            if (s.code() == absl::StatusCode::kResourceExhausted) ++exhausted;
            break;
          }
          case 2: {
            absl::StatusOr<Reservation> r = store.Reserve(2 * bytes);
            if (r.ok()) {
              std::vector<std::shared_ptr<ResidentTensor>> batch = {
                  MakeTensor(name, DType::kInt8, {bytes}),
                  MakeTensor(absl::StrCat(name, "b"), DType::kInt8, {bytes})};
              (void)store.InsertAll(batch, true, *r);
            }
            break;
          }
          case 3:
            (void)store.Remove(name);
            break;
          case 4: {
            absl::StatusOr<ResidentTensorPtr> got = store.Get(name);
            if (got.ok() && (*got)->name != name) ++violations;
            break;
          }
          case 5: {
            absl::StatusOr<Reservation> r = store.Reserve(bytes);
            std::this_thread::yield();
            break;
          }
        }
      }
    });
  }
  for (std::thread& w : workers) w.join();
  done = true;
  checker.join();

  EXPECT_EQ(violations.load(), 0);
  EXPECT_GT(inserted.load(), 0);
  EXPECT_EQ(store.reserved_bytes(), 0);
  int64_t listed = 0;
  const std::vector<ResidentTensorPtr> list = store.List();
  for (const ResidentTensorPtr& t : list) listed += t->nbytes();
  EXPECT_EQ(store.resident_bytes(), listed);
  EXPECT_EQ(store.size(), static_cast<int64_t>(list.size()));
  EXPECT_LE(listed, kLimit);
  // Everything can be removed, leaving nothing accounted.
  for (const ResidentTensorPtr& t : list) ASSERT_TRUE(store.Remove(t->name).ok());
  EXPECT_EQ(store.resident_bytes(), 0);
}

}  // namespace
}  // namespace accel::server
