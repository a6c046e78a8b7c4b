#include "server/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/safetensors_writer.h"

namespace accel::server {
namespace {

using ::accel::server::testing::BuildRawSafetensors;
using ::accel::server::testing::BuildSafetensors;
using ::accel::server::testing::BytesOf;
using ::accel::server::testing::ScratchDir;
using ::accel::server::testing::StTensor;
using ::accel::server::testing::WriteFile;
using ::testing::HasSubstr;

std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

absl::StatusOr<std::vector<SafetensorsEntry>> Parse(const std::string& file) {
  return ParseSafetensorsHeader(AsBytes(file));
}

// A file with one tensor described by `entry_json`, over `data`.
std::string OneEntry(const std::string& entry_json, const std::string& data) {
  return BuildRawSafetensors(R"({"t":)" + entry_json + "}", data);
}

std::vector<StTensor> EveryDType() {
  return {
      {"f32", "F32", {2, 3}, BytesOf<float>({1, 2, 3, 4, 5, 6})},
      {"f16", "F16", {4}, BytesOf<uint16_t>({0x3c00, 0x4000, 0xc000, 0x0000})},
      {"bf16", "BF16", {2, 2}, BytesOf<uint16_t>({0x3f80, 0x4000, 0x4040, 0x4080})},
      {"i8", "I8", {5}, BytesOf<int8_t>({-128, -1, 0, 1, 127})},
      {"i32", "I32", {3}, BytesOf<int32_t>({-7, 0, 7})},
      {"i64", "I64", {2}, BytesOf<int64_t>({int64_t{1} << 40, -1})},
      {"f64", "F64", {1}, BytesOf<double>({3.5})},
      {"bool", "BOOL", {3}, BytesOf<uint8_t>({0, 1, 1})},
      {"u8", "U8", {2}, BytesOf<uint8_t>({200, 3})},
      {"u16", "U16", {1}, BytesOf<uint16_t>({65535})},
      {"f8", "F8_E4M3", {2}, BytesOf<uint8_t>({1, 2})},
  };
}

TEST(SafetensorsHeader, ParsesEveryDType) {
  const std::vector<StTensor> tensors = EveryDType();
  const std::string file = BuildSafetensors(tensors, {{"format", "pt"}});
  absl::StatusOr<std::vector<SafetensorsEntry>> entries = Parse(file);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), tensors.size());

  const std::vector<std::optional<kernels::DType>> expected_dtypes = {kernels::DType::kFloat32,
                                                                      kernels::DType::kFloat16,
                                                                      kernels::DType::kBFloat16,
                                                                      kernels::DType::kInt8,
                                                                      kernels::DType::kInt32,
                                                                      kernels::DType::kInt64,
                                                                      std::nullopt,
                                                                      std::nullopt,
                                                                      std::nullopt,
                                                                      std::nullopt,
                                                                      std::nullopt};
  uint64_t header_end = 8;
  {
    uint64_t n = 0;
    std::memcpy(&n, file.data(), 8);
    header_end += n;
  }
  uint64_t offset = header_end;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsEntry& e = (*entries)[i];
    SCOPED_TRACE(tensors[i].name);
    EXPECT_EQ(e.name, tensors[i].name);
    EXPECT_EQ(e.dtype_name, tensors[i].dtype);
    EXPECT_EQ(e.dtype, expected_dtypes[i]);
    EXPECT_EQ(e.supported(), expected_dtypes[i].has_value());
    EXPECT_EQ(e.shape, tensors[i].shape);
    EXPECT_EQ(e.offset, offset);
    EXPECT_EQ(e.nbytes, tensors[i].bytes.size());
    EXPECT_EQ(file.substr(e.offset, e.nbytes), tensors[i].bytes);
    offset += e.nbytes;
  }
}

TEST(SafetensorsHeader, AcceptsScalarsEmptyTensorsAndNoTensors) {
  const std::string file = BuildSafetensors({
      {"scalar", "F32", {}, BytesOf<float>({2.5f})},
      {"empty", "F16", {0, 4}, ""},
      {"empty_last", "I64", {3, 0}, ""},
  });
  absl::StatusOr<std::vector<SafetensorsEntry>> entries = Parse(file);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_TRUE((*entries)[0].shape.empty());
  EXPECT_EQ((*entries)[0].nbytes, 4u);
  EXPECT_EQ((*entries)[1].nbytes, 0u);
  EXPECT_EQ((*entries)[2].nbytes, 0u);

  absl::StatusOr<std::vector<SafetensorsEntry>> none = Parse(BuildRawSafetensors("{}", ""));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  // Only metadata.
  none = Parse(BuildRawSafetensors(R"({"__metadata__":{"a":"b"}})", ""));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
}

TEST(SafetensorsHeader, ReturnsEntriesInDataOrder) {
  // The header lists "b" first, but "a"'s bytes come first in the file.
  const std::string header = R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                             R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  absl::StatusOr<std::vector<SafetensorsEntry>> entries =
      Parse(BuildRawSafetensors(header, BytesOf<float>({1, 2})));
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ((*entries)[0].name, "a");
  EXPECT_EQ((*entries)[1].name, "b");
}

TEST(SafetensorsHeader, AcceptsUnpaddedHeaderAndTrailingBytes) {
  // Data at an odd offset, and unused bytes after the last tensor.
  std::string file = BuildSafetensors({{"x", "F32", {2}, BytesOf<float>({1, 2})}}, {}, 1);
  file += "junk";
  absl::StatusOr<std::vector<SafetensorsEntry>> entries = Parse(file);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 1u);
  EXPECT_EQ(file.substr((*entries)[0].offset, 8), BytesOf<float>({1, 2}));
}

struct MalformedCase {
  const char* label;
  std::string file;
  const char* message;  // a substring of the expected message
};

std::vector<MalformedCase> MalformedCases() {
  const std::string f32x2 = BytesOf<float>({1, 2});
  std::vector<MalformedCase> cases = {
      {"empty file", "", "too short"},
      {"seven bytes", std::string(7, '\0'), "too short"},
      {"header past the end", BuildRawSafetensors("{}", "", 100), "exceeds the 2 bytes"},
      {"huge header length", BuildRawSafetensors("{}", "", uint64_t{200} << 20),
       "exceeds the limit of 104857600"},
      {"max header length", BuildRawSafetensors("{}", "", UINT64_MAX), "exceeds the limit"},
      {"truncated data", BuildSafetensors({{"x", "F32", {2}, f32x2}}).substr(0, 70), ""},
      {"bad JSON", BuildRawSafetensors("{\"t\":", ""), "not valid JSON"},
      {"JSON with trailing garbage", BuildRawSafetensors("{} x", ""), "not valid JSON"},
      {"invalid UTF-8", BuildRawSafetensors("{\"\xff\":1}", ""), "not valid JSON"},
      {"header an array", BuildRawSafetensors("[]", ""), "expected a JSON object, found array"},
      {"header a string", BuildRawSafetensors("\"x\"", ""), "expected a JSON object"},
      {"entry a number", OneEntry("1", ""), "tensor 't': expected an object"},
      {"missing dtype", OneEntry(R"({"shape":[2],"data_offsets":[0,8]})", f32x2),
       "tensor 't': missing key 'dtype'"},
      {"missing shape", OneEntry(R"({"dtype":"F32","data_offsets":[0,8]})", f32x2),
       "missing key 'shape'"},
      {"missing offsets", OneEntry(R"({"dtype":"F32","shape":[2]})", f32x2),
       "missing key 'data_offsets'"},
      {"extra key", OneEntry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})", f32x2),
       "unexpected key 'x'"},
      {"dtype a number", OneEntry(R"({"dtype":1,"shape":[2],"data_offsets":[0,8]})", f32x2),
       "dtype: expected a string"},
      {"unknown dtype", OneEntry(R"({"dtype":"F128","shape":[2],"data_offsets":[0,8]})", f32x2),
       "unknown dtype 'F128'"},
      {"lowercase dtype", OneEntry(R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})", f32x2),
       "unknown dtype 'f32'"},
      {"shape not a list", OneEntry(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})", f32x2),
       "shape: expected a list of non-negative integers"},
      {"negative extent", OneEntry(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", f32x2),
       "shape: expected a list of non-negative integers"},
      {"float extent", OneEntry(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})", f32x2),
       "shape: expected a list of non-negative integers"},
      {"string extent", OneEntry(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})", f32x2),
       "shape: expected"},
      {"extent past uint64",
       OneEntry(R"({"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]})", f32x2),
       "shape: expected"},
      {"shape overflow",
       OneEntry(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})", f32x2),
       "more than 2^48 elements"},
      {"shape overflow before a zero",
       OneEntry(R"({"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]})", ""),
       "more than 2^48 elements"},
      {"offsets one int", OneEntry(R"({"dtype":"F32","shape":[2],"data_offsets":[8]})", f32x2),
       "data_offsets: expected two non-negative integers"},
      {"offsets three ints",
       OneEntry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,8]})", f32x2),
       "data_offsets: expected two"},
      {"offsets strings",
       OneEntry(R"({"dtype":"F32","shape":[2],"data_offsets":["0","8"]})", f32x2),
       "data_offsets: expected two"},
      {"offsets negative", OneEntry(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})", f32x2),
       "data_offsets: expected two"},
      {"offsets an object",
       OneEntry(R"({"dtype":"F32","shape":[2],"data_offsets":{"a":0}})", f32x2),
       "data_offsets: expected two"},
      {"begin after end", OneEntry(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})", f32x2),
       "data_offsets [8, 0]: expected begin <= end"},
      {"end past the data", OneEntry(R"({"dtype":"F32","shape":[2],"data_offsets":[4,12]})", f32x2),
       "expected end <= 8, the size of the data section"},
      {"huge offsets",
       OneEntry(R"({"dtype":"F32","shape":[2],"data_offsets":[18446744073709551608,)"
                R"(18446744073709551615]})",
                f32x2),
       "expected end <= 8"},
      {"size mismatch", OneEntry(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})", f32x2),
       "data_offsets [0, 8] hold 8 bytes, but F32 [3] needs 12"},
      {"size mismatch of an unsupported dtype",
       OneEntry(R"({"dtype":"F64","shape":[2],"data_offsets":[0,8]})", f32x2),
       "hold 8 bytes, but F64 [2] needs 16"},
      {"overlapping ranges",
       BuildRawSafetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           f32x2),
       "tensors 'a' (data_offsets [0, 8]) and 'b' (data_offsets [4, 8]) overlap"},
      {"range inside another",
       BuildRawSafetensors(R"({"a":{"dtype":"I8","shape":[8],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"I8","shape":[1],"data_offsets":[6,7]},)"
                           R"("c":{"dtype":"I8","shape":[1],"data_offsets":[7,8]}})",
                           f32x2),
       "overlap"},
      {"same range twice",
       BuildRawSafetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                           f32x2),
       "overlap"},
      {"duplicate name",
       BuildRawSafetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           f32x2),
       "tensor 'a' appears twice"},
      {"duplicate key in an entry",
       OneEntry(R"({"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]})", f32x2),
       "key 'dtype' of an entry appears twice"},
      {"metadata not an object", BuildRawSafetensors(R"({"__metadata__":[1]})", ""),
       "__metadata__: expected an object of strings"},
      {"metadata value not a string", BuildRawSafetensors(R"({"__metadata__":{"a":1}})", ""),
       "__metadata__: key 'a': expected a string"},
  };
  return cases;
}

TEST(SafetensorsHeader, RejectsMalformedFiles) {
  for (const MalformedCase& c : MalformedCases()) {
    SCOPED_TRACE(c.label);
    absl::StatusOr<std::vector<SafetensorsEntry>> entries = Parse(c.file);
    ASSERT_FALSE(entries.ok());
    EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument) << entries.status();
    EXPECT_THAT(std::string(entries.status().message()), HasSubstr(c.message));
  }
}

TEST(SafetensorsHeader, QuotesUnprintableNames) {
  absl::StatusOr<std::vector<SafetensorsEntry>> entries =
      Parse(BuildRawSafetensors(R"({"a\nb":{"dtype":"X","shape":[],"data_offsets":[0,0]}})", ""));
  ASSERT_FALSE(entries.ok());
  EXPECT_THAT(std::string(entries.status().message()), HasSubstr("tensor 'a\\nb'"));
}

// Random damage to a valid file must always produce a status, never a crash
// or a hang. Every accepted result must still describe bytes inside the file.
TEST(SafetensorsHeader, SurvivesRandomMutations) {
  const std::string valid = BuildSafetensors(EveryDType(), {{"format", "pt"}});
  std::mt19937_64 rng(20240601);
  int accepted = 0;
  for (int iteration = 0; iteration < 2000; ++iteration) {
    std::string file = valid;
    const int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations; ++m) {
      if (file.empty()) file.push_back('\0');
      const size_t pos = rng() % file.size();
      switch (rng() % 6) {
        case 0:  // flip a bit
          file[pos] = static_cast<char>(file[pos] ^ (1 << (rng() % 8)));
          break;
        case 1:  // a random byte, often in the header
          file[rng() % std::min<size_t>(file.size(), 64)] = static_cast<char>(rng());
          break;
        case 2:  // truncate
          file.resize(pos);
          break;
        case 3:  // insert a JSON-significant character
          file.insert(pos, 1, "{}[],:\"0-9.eE\\ "[rng() % 15]);
          break;
        case 4:  // delete a run
          file.erase(pos, 1 + rng() % 8);
          break;
        case 5:  // damage the length field
          if (file.size() >= 8) file[rng() % 8] = static_cast<char>(rng());
          break;
      }
    }
    absl::StatusOr<std::vector<SafetensorsEntry>> entries = Parse(file);
    if (entries.ok()) {
      ++accepted;
      for (const SafetensorsEntry& e : *entries) {
        ASSERT_LE(e.offset, file.size());
        ASSERT_LE(e.nbytes, file.size() - e.offset);
      }
    } else {
      EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
  // Most mutations land in the data or in JSON whitespace-insensitive spots
  // sometimes, but most must be caught.
  EXPECT_LT(accepted, 2000);
}

// ------------------------------------------------------------ SafetensorsFile

TEST(SafetensorsFile, MapsAFileAndExposesItsData) {
  ScratchDir dir;
  const std::vector<StTensor> tensors = EveryDType();
  WriteFile(dir.path() / "m.safetensors", BuildSafetensors(tensors));
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(dir.path() / "m.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->entries().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::span<const std::byte> data = file->Data(file->entries()[i]);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(data.data()), data.size()),
              tensors[i].bytes);
  }
  // Moves keep the mapping alive.
  SafetensorsFile moved = *std::move(file);
  std::span<const std::byte> first = moved.Data(moved.entries()[0]);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(first.data()), first.size()),
            tensors[0].bytes);
  absl::StatusOr<SafetensorsFile> other = SafetensorsFile::Open(dir.path() / "m.safetensors");
  ASSERT_TRUE(other.ok());
  moved = *std::move(other);
  EXPECT_EQ(moved.entries().size(), tensors.size());
}

TEST(SafetensorsFile, OpenReportsMissingEmptyAndNonRegularFiles) {
  ScratchDir dir;
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(dir.path() / "missing");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);

  WriteFile(dir.path() / "empty", "");
  file = SafetensorsFile::Open(dir.path() / "empty");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("too short"));

  file = SafetensorsFile::Open(dir.path());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);

  // A FIFO would block a plain open() until a writer came.
  ASSERT_EQ(mkfifo((dir.path() / "fifo").c_str(), 0600), 0);
  file = SafetensorsFile::Open(dir.path() / "fifo");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveUnderDir(dir.path(), "fifo").status().code(),
            absl::StatusCode::kInvalidArgument);

  WriteFile(dir.path() / "bad", BuildRawSafetensors("{", ""));
  file = SafetensorsFile::Open(dir.path() / "bad");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
}

// ------------------------------------------------------------ ResolveUnderDir

class ResolveUnderDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = root_.path() / "model";
    WriteFile(model_ / "m.safetensors", "x");
    WriteFile(model_ / "sub" / "n.safetensors", "y");
    WriteFile(root_.path() / "outside.safetensors", "secret");
    WriteFile(root_.path() / "model2" / "x.safetensors", "sibling");
  }
  absl::StatusCode Code(std::string_view relative) {
    return ResolveUnderDir(model_, relative).status().code();
  }

  ScratchDir root_;
  std::filesystem::path model_;
};

TEST_F(ResolveUnderDirTest, ResolvesFilesInside) {
  absl::StatusOr<std::filesystem::path> path = ResolveUnderDir(model_, "m.safetensors");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, std::filesystem::canonical(model_ / "m.safetensors"));
  path = ResolveUnderDir(model_, "sub/n.safetensors");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, std::filesystem::canonical(model_ / "sub" / "n.safetensors"));
  // ".." that stays inside is fine.
  path = ResolveUnderDir(model_, "sub/../m.safetensors");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, std::filesystem::canonical(model_ / "m.safetensors"));
  path = ResolveUnderDir(model_, "./sub//n.safetensors");
  ASSERT_TRUE(path.ok()) << path.status();
}

TEST_F(ResolveUnderDirTest, RejectsEscapes) {
  EXPECT_EQ(Code(""), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("/etc/passwd"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("../outside.safetensors"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("../x"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("a/../../x"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("sub/../../outside.safetensors"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("../model2/x.safetensors"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("../../../../../../../../etc/passwd"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code(std::string_view("m.safetensors\0x", 15)), absl::StatusCode::kInvalidArgument);
  absl::Status status = ResolveUnderDir(model_, "../outside.safetensors").status();
  EXPECT_THAT(std::string(status.message()), HasSubstr("outside the model directory"));
  // The server's own paths stay out of client messages.
  EXPECT_THAT(std::string(status.message()), ::testing::Not(HasSubstr(root_.path().string())));
}

TEST_F(ResolveUnderDirTest, RejectsSymlinksPointingOutside) {
  std::filesystem::create_symlink(root_.path() / "outside.safetensors", model_ / "link");
  std::filesystem::create_symlink("../outside.safetensors", model_ / "rel_link");
  std::filesystem::create_symlink("/etc/passwd", model_ / "passwd");
  std::filesystem::create_directory_symlink(root_.path() / "model2", model_ / "dir_link");
  std::filesystem::create_symlink("m.safetensors", model_ / "inside_link");
  EXPECT_EQ(Code("link"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("rel_link"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("passwd"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("dir_link/x.safetensors"), absl::StatusCode::kInvalidArgument);
  // A missing file behind an escaping link is still an escape, not NOT_FOUND.
  EXPECT_EQ(Code("dir_link/missing"), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::filesystem::path> inside = ResolveUnderDir(model_, "inside_link");
  ASSERT_TRUE(inside.ok()) << inside.status();
  EXPECT_EQ(*inside, std::filesystem::canonical(model_ / "m.safetensors"));
}

TEST_F(ResolveUnderDirTest, WorksWhenTheModelDirIsALink) {
  std::filesystem::create_directory_symlink(model_, root_.path() / "model_link");
  absl::StatusOr<std::filesystem::path> path =
      ResolveUnderDir(root_.path() / "model_link", "m.safetensors");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, std::filesystem::canonical(model_ / "m.safetensors"));
}

TEST_F(ResolveUnderDirTest, ReportsMissingFilesAndDirectories) {
  EXPECT_EQ(Code("missing.safetensors"), absl::StatusCode::kNotFound);
  EXPECT_EQ(Code("nodir/missing.safetensors"), absl::StatusCode::kNotFound);
  EXPECT_EQ(Code("sub"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Code("."), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveUnderDir(root_.path() / "no_such_dir", "m.safetensors").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace accel::server
