// Tests of client/npy: round trips for every dtype, byte-for-byte agreement
// with np.save, the versions and corner cases of the format, and the errors
// for files we refuse.
#include "client/npy.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "accel/kernels/convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace accel {
namespace {

using kernels::DType;
using ::testing::HasSubstr;
using namespace std::string_literals;

// A pattern of `n` bytes that differs at every position, so that a shifted or
// truncated copy is caught.
std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + 7) & 0xff);
  return s;
}

// The header block np.save writes: magic, version 1.0, length, the dict,
// spaces up to a multiple of 64 bytes, and '\n'.
std::string NumpyHeaderV1(const std::string& dict) {
  size_t total = 10 + dict.size() + 1;
  total = (total + 63) / 64 * 64;
  std::string out("\x93NUMPY\x01\x00", 8);
  const size_t len = total - 10;
  out.push_back(static_cast<char>(len & 0xff));
  out.push_back(static_cast<char>(len >> 8));
  out += dict;
  out.append(total - out.size() - 1, ' ');
  out.push_back('\n');
  return out;
}

// A header of the given version around an arbitrary dict text (no padding
// rules: readers must not depend on them).
std::string RawHeader(int major, const std::string& dict) {
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const size_t len = dict.size();
  const int length_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < length_bytes; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  return out + dict;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "npy_test_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct RoundTripCase {
  DType dtype;
  kernels::Shape shape;
};

class NpyRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(NpyRoundTrip, ThroughBytesAndFileKeepsDtypeShapeAndData) {
  const RoundTripCase& c = GetParam();
  const std::string data = Pattern(kernels::NumElements(c.shape) * kernels::ItemSize(c.dtype));

  auto bytes = SerializeNpy(c.dtype, c.shape, data);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto parsed = ParseNpy(*bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->dtype, c.dtype);
  EXPECT_EQ(parsed->shape, c.shape);
  EXPECT_EQ(parsed->data, data);

  TempDir dir;
  const std::string path = dir.File("a.npy");
  ASSERT_TRUE(WriteNpy(path, c.dtype, c.shape, data).ok());
  EXPECT_EQ(ReadFile(path), *bytes);
  auto read = ReadNpy(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->dtype, c.dtype);
  EXPECT_EQ(read->shape, c.shape);
  EXPECT_EQ(read->data, data);
}

INSTANTIATE_TEST_SUITE_P(AllDtypesAndShapes, NpyRoundTrip,
                         ::testing::Values(RoundTripCase{DType::kFloat32, {2, 3}},
                                           RoundTripCase{DType::kFloat16, {5}},
                                           RoundTripCase{DType::kInt8, {3, 1, 7}},
                                           RoundTripCase{DType::kInt32, {4, 4}},
                                           RoundTripCase{DType::kInt64, {2, 3, 2, 2}},
                                           RoundTripCase{DType::kFloat32, {}},   // 0-d
                                           RoundTripCase{DType::kInt8, {}},      // 0-d
                                           RoundTripCase{DType::kFloat16, {0}},  // empty
                                           RoundTripCase{DType::kInt64, {3, 0, 2}},
                                           RoundTripCase{DType::kFloat32, {1000, 17}}));

TEST(Npy, SerializeMatchesNumpySaveByteForByte) {
  // Bytes of np.save(np.arange(6, dtype='<f4').reshape(2, 3)) (NumPy 1.24).
  std::string data;
  for (float f : {0.f, 1.f, 2.f, 3.f, 4.f, 5.f}) data.append(reinterpret_cast<char*>(&f), 4);
  auto bytes = SerializeNpy(DType::kFloat32, {2, 3}, data);
  ASSERT_TRUE(bytes.ok());
  const std::string header =
      NumpyHeaderV1("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
  ASSERT_EQ(header.size(), 128u);
  EXPECT_EQ(*bytes, header + data);

  // Shapes () and (0,), and int8's '|i1'.
  EXPECT_EQ(*SerializeNpy(DType::kInt64, {}, std::string(8, '\0')),
            NumpyHeaderV1("{'descr': '<i8', 'fortran_order': False, 'shape': (), }") +
                std::string(8, '\0'));
  EXPECT_EQ(*SerializeNpy(DType::kInt8, {0}, ""),
            NumpyHeaderV1("{'descr': '|i1', 'fortran_order': False, 'shape': (0,), }"));
}

TEST(Npy, ReadsZeroDimArray) {
  auto parsed = ParseNpy(NumpyHeaderV1("{'descr': '<i4', 'fortran_order': False, 'shape': (), }") +
                         "\x2a\0\0\0"s);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->shape.empty());
  EXPECT_EQ(parsed->dtype, DType::kInt32);
  int32_t v;
  std::memcpy(&v, parsed->data.data(), 4);
  EXPECT_EQ(v, 42);
}

TEST(Npy, ReadsVersions2And3WithFourByteHeaderLength) {
  for (int major : {2, 3}) {
    auto parsed = ParseNpy(
        RawHeader(major, "{'descr': '<f2', 'fortran_order': False, 'shape': (2,)}\n") + "abcd");
    ASSERT_TRUE(parsed.ok()) << "version " << major << ": " << parsed.status();
    EXPECT_EQ(parsed->dtype, DType::kFloat16);
    EXPECT_EQ(parsed->shape, kernels::Shape({2}));
    EXPECT_EQ(parsed->data, "abcd");
  }
}

TEST(Npy, WritesVersion2WhenTheHeaderOutgrowsVersion1) {
  // 20000 dimensions of 1 make a header of ~60 KiB... plus commas: > 64 KiB.
  const kernels::Shape shape(30000, 1);
  auto bytes = SerializeNpy(DType::kInt8, shape, "x");
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ((*bytes)[6], 2);
  uint32_t header_len;
  std::memcpy(&header_len, bytes->data() + 8, 4);
  EXPECT_GT(header_len, 0xffffu);
  EXPECT_EQ((12 + header_len) % 64, 0u);
  EXPECT_EQ((*bytes)[12 + header_len - 1], '\n');
  EXPECT_EQ(bytes->back(), 'x');
}

TEST(Npy, AcceptsHeaderVariantsOtherWritersProduce) {
  const std::string two_bytes = "ab";
  for (const std::string dict : {
           // Keys in another order, double quotes, no trailing comma.
           R"({"shape": (2,), "fortran_order": False, "descr": "|i1"})",
           // '<i1' for int8, Python 2 long integers.
           "{'descr': '<i1', 'fortran_order': False, 'shape': (2L,), }",
           // A list for the shape, extra whitespace.
           "{ 'descr' : '>i1' ,\n 'fortran_order' : False , 'shape' : [ 1 , 2 ] }",
       }) {
    auto parsed = ParseNpy(RawHeader(1, dict + "\n") + two_bytes);
    ASSERT_TRUE(parsed.ok()) << dict << ": " << parsed.status();
    EXPECT_EQ(parsed->dtype, DType::kInt8) << dict;
    EXPECT_EQ(parsed->data, two_bytes) << dict;
  }
}

// Parses `bytes` named "x.npy" and returns the error message (empty on OK).
std::string ErrorOf(const std::string& bytes) {
  auto parsed = ParseNpy(bytes, "x.npy");
  if (parsed.ok()) return "";
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << parsed.status();
  return std::string(parsed.status().message());
}

std::string Header(const std::string& descr, const std::string& fortran, const std::string& shape) {
  return NumpyHeaderV1("{'descr': '" + descr + "', 'fortran_order': " + fortran +
                       ", 'shape': " + shape + ", }");
}

TEST(Npy, RejectsFortranOrder) {
  const std::string message = ErrorOf(Header("<f4", "True", "(2, 2)") + std::string(16, '\0'));
  EXPECT_THAT(message, HasSubstr("x.npy"));
  EXPECT_THAT(message, HasSubstr("Fortran"));
}

TEST(Npy, RejectsBadMagic) {
  EXPECT_THAT(ErrorOf("PK\x03\x04 this is a zip file"), HasSubstr("not a .npy file"));
  EXPECT_THAT(ErrorOf(""), HasSubstr("not a .npy file"));
  EXPECT_THAT(ErrorOf("\x93NUMP"), HasSubstr("x.npy: not a .npy file"));
}

TEST(Npy, RejectsUnknownVersion) {
  EXPECT_THAT(ErrorOf(RawHeader(4, "{}")), HasSubstr("version 4.0"));
}

TEST(Npy, RejectsTruncatedFiles) {
  const std::string good = *SerializeNpy(DType::kFloat32, {4, 4}, Pattern(64));
  // Cut inside the data, inside the header and inside the preamble.
  EXPECT_THAT(ErrorOf(good.substr(0, good.size() - 1)),
              HasSubstr("truncated .npy file: dtype '<f4' and shape [4, 4] need 64 data bytes, "
                        "found 63"));
  EXPECT_THAT(ErrorOf(good.substr(0, 50)), HasSubstr("truncated .npy file: the header declares"));
  EXPECT_THAT(ErrorOf(good.substr(0, 9)), HasSubstr("truncated .npy file"));
  // Trailing bytes are corruption too.
  EXPECT_THAT(ErrorOf(good + "x"), HasSubstr("corrupt .npy file"));
}

TEST(Npy, RejectsBadHeaderDictionaries) {
  struct Case {
    std::string dict;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {"{'descr': '<f4', 'fortran_order': False}", "missing key 'shape'"},
           {"{'descr': '<f4', 'shape': (1,)}", "missing key 'fortran_order'"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
            "unexpected key 'extra'"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", "malformed .npy header"},
           {"{'descr': '<f4' 'fortran_order': False, 'shape': (1,)}", "expected ','"},
           {"['descr', '<f4']", "expected a dictionary"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", "non-negative"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': 3}", "tuple of integers"},
           {"{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", "True or False"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
            "out of range"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}",
            "too many elements"},
           {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}", "structured"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk", "unexpected text"},
           {std::string(40, '(') + std::string(40, ')'), "nesting too deep"},
       }) {
    EXPECT_THAT(ErrorOf(RawHeader(1, c.dict + "\n") + "abcd"), HasSubstr(c.expected)) << c.dict;
  }
}

TEST(Npy, RejectsUnsupportedDtypesWithAHint) {
  EXPECT_THAT(ErrorOf(Header("<f8", "False", "(1,)") + std::string(8, '\0')),
              HasSubstr("unsupported dtype '<f8'"));
  EXPECT_THAT(ErrorOf(Header("<f8", "False", "(1,)") + std::string(8, '\0')),
              HasSubstr("np.float32"));
  EXPECT_THAT(ErrorOf(Header("|u1", "False", "(1,)") + "a"), HasSubstr("uint8 is not supported"));
  EXPECT_THAT(ErrorOf(Header("|b1", "False", "(1,)") + "a"), HasSubstr("bool"));
  EXPECT_THAT(ErrorOf(Header(">f4", "False", "(1,)") + "abcd"), HasSubstr("big-endian"));
  EXPECT_THAT(ErrorOf(Header("<U3", "False", "(1,)") + "abcdabcdabcd"),
              HasSubstr("unsupported dtype '<U3'"));
}

TEST(Npy, ReadNpyNamesTheFileInErrors) {
  TempDir dir;
  const std::string path = dir.File("bad.npy");
  WriteFile(path, "not numpy at all");
  auto read = ReadNpy(path);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(), HasSubstr(path + ": not a .npy file"));
  EXPECT_THAT(read.status().message(), HasSubstr("found 'not nump...'"));

  auto missing = ReadNpy(dir.File("missing.npy"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("missing.npy"));
}

TEST(Npy, WriteRejectsMismatchedDataAndUnspecifiedDtype) {
  TempDir dir;
  absl::Status status = WriteNpy(dir.File("a.npy"), DType::kFloat32, {2, 2}, "abc");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("has 16 bytes, but 3 were given"));
  EXPECT_FALSE(WriteNpy(dir.File("b.npy"), DType::kUnspecified, {1}, "").ok());
  EXPECT_EQ(WriteNpy(dir.File("no/such/dir.npy"), DType::kInt8, {1}, "a").code(),
            absl::StatusCode::kNotFound);
}

TEST(Npy, BFloat16IsWrittenAsFloat32WidenedExactly) {
  // Every bfloat16 bit pattern: normals, subnormals, +-0, +-inf and NaNs.
  std::vector<uint16_t> bf16(65536);
  for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = static_cast<uint16_t>(i);
  const std::string data(reinterpret_cast<const char*>(bf16.data()), bf16.size() * 2);

  TempDir dir;
  const std::string path = dir.File("bf16.npy");
  ASSERT_TRUE(WriteNpy(path, DType::kBFloat16, {256, 256}, data).ok());
  auto read = ReadNpy(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->dtype, DType::kFloat32);
  EXPECT_EQ(read->shape, kernels::Shape({256, 256}));
  ASSERT_EQ(read->data.size(), 4 * bf16.size());
  for (size_t i = 0; i < bf16.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, read->data.data() + 4 * i, 4);
    ASSERT_EQ(bits, static_cast<uint32_t>(bf16[i]) << 16) << "bfloat16 pattern " << i;
    // And narrowing back is the identity, NaNs aside (which stay NaNs).
    float f;
    std::memcpy(&f, &bits, 4);
    if (f == f) ASSERT_EQ(kernels::FloatToBFloat16(f), bf16[i]) << "bfloat16 pattern " << i;
  }
  // SerializeNpy takes the same path.
  auto bytes = SerializeNpy(DType::kBFloat16, {256, 256}, data);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, ReadFile(path));
  EXPECT_STREQ(NpyDescr(DType::kBFloat16), "<f4");
}

}  // namespace
}  // namespace accel
