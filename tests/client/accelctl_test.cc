// Tests of accelctl: its argument parsing (accelctl_args), and the binary
// itself run against the fake service (exit codes, error lines, .npy in and
// out, --dtype casts, @name inputs, the token and ACCEL_SERVER).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "accel/kernels/convert.h"
#include "client/accelctl_args.h"
#include "client/accelctl_io.h"
#include "client/npy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/client/fake_tensor_ops.h"

namespace accel::accelctl {
namespace {

using kernels::DType;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ------------------------------------------------------------ Argument parsing

const std::vector<FlagSpec> kFlags = {{"eps"}, {"include", true, true}, {"overwrite", false}};

TEST(AccelctlArgs, ParsesFlagsInBothFormsAndPositionals) {
  const std::vector<std::string> args = {
      "a.npy", "--eps", "1e-5", "--include=x.*", "--overwrite", "b", "--include", "y", "--", "--c"};
  auto parsed = ParseArgs(args, kFlags);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_THAT(parsed->positional, ElementsAre("a.npy", "b", "--c"));
  EXPECT_EQ(*parsed->GetDouble("eps").value(), 1e-5);
  EXPECT_THAT(parsed->GetAll("include"), ElementsAre("x.*", "y"));
  EXPECT_TRUE(parsed->Has("overwrite"));
  EXPECT_FALSE(parsed->Has("missing"));
  EXPECT_FALSE(parsed->GetInt("missing").value().has_value());
}

TEST(AccelctlArgs, MalformedCommandLinesAreUsageErrors) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--bogus"}, {"-x"}, {"--eps"}, {"--eps", "1", "--eps", "2"}, {"--overwrite=yes"}}) {
    auto parsed = ParseArgs(args, kFlags);
    ASSERT_FALSE(parsed.ok()) << args[0];
    EXPECT_TRUE(IsUsageError(parsed.status())) << parsed.status();
  }
  auto parsed = ParseArgs(std::vector<std::string>{"--eps", "abc"}, kFlags);
  ASSERT_TRUE(parsed.ok());
  EXPECT_TRUE(IsUsageError(parsed->GetDouble("eps").status()));
  EXPECT_FALSE(IsUsageError(absl::InvalidArgumentError("from the server")));
}

TEST(AccelctlArgs, GlobalFlagsAreTakenFromAnywhere) {
  GlobalOptions options;
  auto rest = ExtractGlobalFlags({"put", "--server", "h:1", "w", "--timeout=500ms", "x.npy",
                                  "--token", "t", "--progress", "--", "--server"},
                                 options);
  ASSERT_TRUE(rest.ok());
  EXPECT_THAT(*rest, ElementsAre("put", "w", "x.npy", "--", "--server"));
  EXPECT_EQ(options.server, "h:1");
  EXPECT_EQ(options.token, "t");
  EXPECT_EQ(options.timeout, std::chrono::milliseconds(500));
  EXPECT_TRUE(options.progress);
  EXPECT_TRUE(IsUsageError(ExtractGlobalFlags({"info", "--server"}, options).status()));
}

TEST(AccelctlArgs, ValueParsers) {
  EXPECT_EQ(*ParseTimeout("30"), std::chrono::seconds(30));
  EXPECT_EQ(*ParseTimeout("2m"), std::chrono::minutes(2));
  EXPECT_EQ(*ParseTimeout("1.5s"), std::chrono::milliseconds(1500));
  EXPECT_EQ(*ParseTimeout("0"), std::chrono::milliseconds(0));
  EXPECT_FALSE(ParseTimeout("-1s").ok());
  EXPECT_FALSE(ParseTimeout("soon").ok());
  EXPECT_EQ(*ParseDType("--dtype", "BF16"), DType::kBFloat16);
  EXPECT_EQ(*ParseDType("--dtype", "half"), DType::kFloat16);
  EXPECT_EQ(*ParseDType("--dtype", "float32"), DType::kFloat32);
  EXPECT_THAT(std::string(ParseDType("--dtype", "float64").status().message()),
              HasSubstr("--dtype expects bfloat16"));
  EXPECT_EQ(*ParseInt("--n", "-3"), -3);
  EXPECT_FALSE(ParseInt("--n", "3x").ok());
}

TEST(AccelctlIo, ScalesPathAndFlagHelp) {
  EXPECT_EQ(ScalesPath("out.npy"), "out.scales.npy");
  EXPECT_EQ(ScalesPath("dir/out"), "dir/out.scales.npy");
  EXPECT_EQ(FlagHelp({{"--a", "first\nsecond"}, {"--long B", "x"}}),
            "  --a         first\n"
            "              second\n"
            "  --long B    x\n");
}

TEST(AccelctlIo, CastArrayRoundsFloatsAndGuardsInts) {
  NpyArray array{DType::kFloat32, {2}, std::string(8, '\0')};
  const float values[] = {0.1f, -3.0f};
  std::memcpy(array.data.data(), values, 8);
  ASSERT_TRUE(CastArray(array, DType::kBFloat16, "x.npy", false).ok());
  EXPECT_EQ(array.dtype, DType::kBFloat16);
  ASSERT_EQ(array.data.size(), 4u);
  uint16_t bits[2];
  std::memcpy(bits, array.data.data(), 4);
  EXPECT_EQ(bits[0], kernels::FloatToBFloat16(0.1f));
  EXPECT_EQ(bits[1], kernels::FloatToBFloat16(-3.0f));

  NpyArray ints{DType::kInt32, {1}, std::string(4, '\0')};
  EXPECT_TRUE(CastArray(ints, DType::kFloat16, "p.npy", /*ints_pass=*/true).ok());
  EXPECT_EQ(ints.dtype, DType::kInt32);
  absl::Status status = CastArray(ints, DType::kFloat16, "p.npy", /*ints_pass=*/false);
  EXPECT_THAT(std::string(status.message()), HasSubstr("p.npy holds INT32 data"));
  EXPECT_TRUE(IsUsageError(CastArray(array, DType::kInt8, "x.npy", false)));
}

// ------------------------------------------------------------ The binary

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

RunResult RunAccelctl(const std::string& args, const std::string& env = "") {
  const std::string command = env + " " ACCELCTL_PATH " " + args + " 2>&1";
  RunResult result;
  std::FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

class AccelctlBinary : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "accelctl_test_XXXXXX").string();
    dir_ = ::mkdtemp(tmpl.data());
    server_flag_ = "--server " + server_.address();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string WriteFloats(const std::string& name, const kernels::Shape& shape,
                          const std::vector<float>& values) {
    const std::string path = Path(name);
    EXPECT_TRUE(
        WriteNpy(path, DType::kFloat32, shape,
                 std::string_view(reinterpret_cast<const char*>(values.data()), values.size() * 4))
            .ok());
    return path;
  }

  fake::FakeServer server_;
  std::string dir_;
  std::string server_flag_;
};

TEST_F(AccelctlBinary, PutCastsToBFloat16AndGetWritesItBackAsFloat32) {
  const std::vector<float> values = {0.1f, 1.0f / 3, -2.0f, 1e-3f, 65536.5f, 0.0f};
  const std::string x = WriteFloats("x.npy", {2, 3}, values);
  RunResult put = RunAccelctl(server_flag_ + " put w " + x + " --dtype bfloat16");
  ASSERT_EQ(put.exit_code, 0) << put.output;
  EXPECT_THAT(put.output, HasSubstr("BFLOAT16"));
  EXPECT_THAT(put.output, HasSubstr("[2, 3]"));

  RunResult get = RunAccelctl("get w " + Path("out.npy") + " " + server_flag_);
  ASSERT_EQ(get.exit_code, 0) << get.output;
  EXPECT_THAT(get.output, HasSubstr("as float32"));
  auto out = ReadNpy(Path("out.npy"));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->dtype, DType::kFloat32);
  EXPECT_EQ(out->shape, kernels::Shape({2, 3}));
  for (size_t i = 0; i < values.size(); ++i) {
    float got;
    std::memcpy(&got, out->data.data() + 4 * i, 4);
    EXPECT_EQ(got, kernels::BFloat16ToFloat(kernels::FloatToBFloat16(values[i]))) << i;
  }

  // Taken without --overwrite: the server's code and message, exit 1.
  RunResult again = RunAccelctl(server_flag_ + " put w " + x);
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.output, HasSubstr("accelctl: ALREADY_EXISTS: name: 'w' already exists"));
  EXPECT_EQ(RunAccelctl(server_flag_ + " put w " + x + " --overwrite").exit_code, 0);

  RunResult list = RunAccelctl(server_flag_ + " list");
  EXPECT_EQ(list.exit_code, 0);
  EXPECT_THAT(list.output, HasSubstr("1 tensors"));
  EXPECT_EQ(RunAccelctl(server_flag_ + " delete w").exit_code, 0);
  RunResult gone = RunAccelctl(server_flag_ + " get w " + Path("out.npy"));
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_THAT(gone.output, HasSubstr("accelctl: NOT_FOUND: "));
}

TEST_F(AccelctlBinary, OpInputsComeFromFilesOrResidentNames) {
  const std::string x = WriteFloats("x.npy", {1, 4}, {1, 2, 3, 4});
  ASSERT_EQ(RunAccelctl(server_flag_ + " put w " + x).exit_code, 0);
  // The fake's RmsNorm echoes its input: the cast to float16 comes back.
  RunResult run = RunAccelctl(server_flag_ + " rmsnorm " + x + " @w " + Path("y.npy") +
                              " --dtype float16 --eps 1e-5");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  auto y = ReadNpy(Path("y.npy"));
  ASSERT_TRUE(y.ok());
  EXPECT_EQ(y->dtype, DType::kFloat16);
  EXPECT_EQ(y->shape, kernels::Shape({1, 4}));

  RunResult bad =
      RunAccelctl(server_flag_ + " rmsnorm " + x + " @w " + Path("y.npy") + " --eps -1");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.output, HasSubstr("accelctl: INVALID_ARGUMENT: eps: expected"));

  RunResult missing =
      RunAccelctl(server_flag_ + " rmsnorm " + Path("nope.npy") + " @w " + Path("y.npy"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.output, HasSubstr("accelctl: NOT_FOUND: " + Path("nope.npy")));
}

TEST_F(AccelctlBinary, UsageErrorsExitWithTwo) {
  for (const std::string args :
       {"", "bogus", "rmsnorm a.npy", "put w", "put w x.npy --frobnicate", "rope q.npy out.npy",
        "rope q.npy out.npy --cache c --k k.npy", "quantize a.npy --name q extra.npy",
        "--timeout soon info", "rmsnorm a.npy @w out.npy --output-name r"}) {
    RunResult run = RunAccelctl(server_flag_ + " " + args);
    EXPECT_EQ(run.exit_code, 2) << args << ": " << run.output;
    EXPECT_THAT(run.output, HasSubstr("accelctl")) << args;
  }
  RunResult help = RunAccelctl("help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* command :
       {"info", "list", "put", "get", "load", "delete", "rmsnorm", "swiglu", "linear", "ffn",
        "rope", "build-rope-cache", "quantize", "dequantize", "quant-error", "quantize-weight"}) {
    EXPECT_THAT(help.output, HasSubstr(std::string("\n  ") + command + " ")) << command;
    EXPECT_EQ(RunAccelctl(std::string("help ") + command).exit_code, 0) << command;
  }
  EXPECT_EQ(RunAccelctl("ffn --help").exit_code, 0);
}

TEST_F(AccelctlBinary, TokenAndServerComeFromFlagsOrEnvironment) {
  server_.service().required_token = "t0k";
  RunResult anonymous = RunAccelctl(server_flag_ + " list");
  EXPECT_EQ(anonymous.exit_code, 1);
  EXPECT_THAT(anonymous.output, HasSubstr("UNAUTHENTICATED"));
  EXPECT_EQ(RunAccelctl(server_flag_ + " --token t0k list").exit_code, 0);
  RunResult from_env =
      RunAccelctl("list", "ACCEL_SERVER=" + server_.address() + " ACCEL_TOKEN=t0k");
  EXPECT_EQ(from_env.exit_code, 0) << from_env.output;
}

}  // namespace
}  // namespace accel::accelctl
