// accelctl subcommands for the server and its resident tensors:
// info, list, put, get, load, delete.
#include <cstdio>
#include <string>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/accelctl_io.h"

namespace accel::accelctl {
namespace {

using kernels::DType;

absl::Status PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) return absl::InternalError(status.ToString());
  std::fputs(json.c_str(), stdout);
  return absl::OkStatus();
}

absl::Status RunInfo(Context& context, const ParsedArgs& args) {
  auto info = context.client->ServerInfo();
  if (!info.ok()) return info.status();
  if (args.Has("json")) return PrintJson(*info);
  const v1::DeviceProperties& device = info->device();
  std::printf("server      %s (accel-serve %s)\n", context.globals.server.c_str(),
              info->version().c_str());
  std::printf("backend     %s\n", info->backend().c_str());
  std::printf("device      %s%s\n", device.name().c_str(),
              device.compute_capability().empty()
                  ? ""
                  : absl::StrCat(", compute capability ", device.compute_capability()).c_str());
  std::printf("memory      %s free of %s; %d SMs/cores\n",
              FormatBytes(device.free_memory()).c_str(), FormatBytes(device.total_memory()).c_str(),
              device.multi_processor_count());
  std::printf("supports    fp16=%s bf16=%s fp8=%s int8-tensor-cores=%s\n",
              device.supports_fp16() ? "yes" : "no", device.supports_bf16() ? "yes" : "no",
              device.supports_fp8() ? "yes" : "no",
              device.supports_int8_tensor_cores() ? "yes" : "no");
  std::printf("resident    %lld tensors, %s of %s\n",
              static_cast<long long>(info->resident_tensors()),
              FormatBytes(info->resident_bytes()).c_str(),
              FormatBytes(info->resident_limit_bytes()).c_str());
  std::printf("messages    up to %s\n", FormatBytes(info->max_message_bytes()).c_str());
  const v1::BatchingSettings& batching = info->batching();
  std::printf("batching    %s, max %lld rows, max delay %lld us, queue %lld\n",
              batching.enabled() ? "on" : "off", static_cast<long long>(batching.max_batch_rows()),
              static_cast<long long>(batching.max_queue_delay_us()),
              static_cast<long long>(batching.max_queue_size()));
  return absl::OkStatus();
}

absl::Status RunList(Context& context, const ParsedArgs& args) {
  if (args.Has("json")) {
    grpc::ClientContext call;
    context.client->ConfigureContext(call);
    v1::ListTensorsResponse response;
    auto status = FromGrpcStatus(
        context.client->stub().ListTensors(&call, v1::ListTensorsRequest(), &response));
    if (!status.ok()) return status;
    return PrintJson(response);
  }
  auto tensors = context.client->List();
  if (!tensors.ok()) return tensors.status();
  int64_t total = 0;
  for (const v1::TensorInfo& info : *tensors) {
    std::printf("%s\n", FormatInfo(info).c_str());
    total += info.nbytes();
  }
  std::printf("%zu tensors, %s\n", tensors->size(), FormatBytes(total).c_str());
  return absl::OkStatus();
}

absl::Status RunPut(Context& context, const ParsedArgs& args) {
  const std::string& name = args.positional[0];
  const std::string& path = args.positional[1];
  auto dtype = args.GetDType("dtype");
  if (!dtype.ok()) return dtype.status();
  auto array = ReadNpy(path);
  if (!array.ok()) return array.status();
  if (*dtype) {
    absl::Status status = CastArray(*array, **dtype, path, /*ints_pass=*/false);
    if (!status.ok()) return status;
  }
  auto info =
      context.client->Put(name, array->dtype, array->shape, array->data, args.Has("overwrite"),
                          Client::kDefaultChunkBytes, MakeProgressBar(context, "put " + name));
  if (!info.ok()) return info.status();
  std::printf("%s\n", FormatInfo(*info).c_str());
  return absl::OkStatus();
}

absl::Status RunGet(Context& context, const ParsedArgs& args) {
  const std::string& name = args.positional[0];
  const std::string& path = args.positional[1];
  auto tensor = context.client->Get(name, MakeProgressBar(context, "get " + name));
  if (!tensor.ok()) return tensor.status();
  absl::Status status = WriteResult(path, tensor->ToTensor());
  if (!status.ok()) return status;
  if (tensor->info.quantized()) return WriteResult(ScalesPath(path), tensor->scales);
  return absl::OkStatus();
}

absl::Status RunLoad(Context& context, const ParsedArgs& args) {
  auto dtype = args.GetDType("dtype");
  if (!dtype.ok()) return dtype.status();
  if (*dtype && !kernels::IsFloat(**dtype)) {
    return UsageError("--dtype must be bfloat16, float16 or float32");
  }
  auto tensors = context.client->Load(args.positional[0], args.Get("prefix").value_or(""),
                                      args.GetAll("include"), dtype->value_or(DType::kUnspecified),
                                      args.Has("quantize-int8"), args.Has("overwrite"));
  if (!tensors.ok()) return tensors.status();
  int64_t total = 0;
  for (const v1::TensorInfo& info : *tensors) {
    std::printf("%s\n", FormatInfo(info).c_str());
    total += info.nbytes();
  }
  std::printf("loaded %zu tensors, %s\n", tensors->size(), FormatBytes(total).c_str());
  return absl::OkStatus();
}

absl::Status RunDelete(Context& context, const ParsedArgs& args) {
  auto info = context.client->Delete(args.positional[0]);
  if (!info.ok()) return info.status();
  std::printf("deleted %s\n", FormatInfo(*info).c_str());
  return absl::OkStatus();
}

}  // namespace

std::vector<Command> StoreCommands() {
  return {
      {"info",
       "[--json]",
       "show the server's version, device, memory and settings",
       FlagHelp({{"--json", "print the GetServerInfo response as JSON"}}),
       {{"json", false}},
       0,
       0,
       RunInfo},
      {"list",
       "[--json]",
       "list the resident tensors",
       FlagHelp({{"--json", "print the ListTensors response as JSON"}}),
       {{"json", false}},
       0,
       0,
       RunList},
      {"put",
       "NAME FILE.npy [--dtype D] [--overwrite]",
       "store a .npy file as a resident tensor (sent in chunks)",
       FlagHelp({{"--dtype D",
                  "cast float data to bfloat16, float16 or float32 first\n"
                  "(round to nearest even, on the client)"},
                 {"--overwrite", "replace an existing tensor of that name"}}),
       {{"dtype"}, {"overwrite", false}},
       2,
       2,
       RunPut},
      {"get",
       "NAME OUT.npy",
       "fetch a resident tensor into a .npy file",
       "  A BFLOAT16 tensor is written as float32 (exact). A quantized tensor writes its\n"
       "  int8 values to OUT.npy and its float32 scales to OUT.scales.npy.\n",
       {},
       2,
       2,
       RunGet},
      {"load",
       "FILE.safetensors [--prefix P] [--include GLOB]... [--dtype D] [--quantize-int8] "
       "[--overwrite]",
       "load tensors from a safetensors file on the server (under its --model_dir)",
       FlagHelp({{"--prefix P", "prepend P to every tensor name"},
                 {"--include GLOB", "load only names matching GLOB (* and ?); repeatable"},
                 {"--dtype D", "cast float tensors to bfloat16, float16 or float32"},
                 {"--quantize-int8", "store 2-D float weights as int8 per row"},
                 {"--overwrite", "replace existing tensors of the same names"}}),
       {{"prefix"},
        {"include", true, true},
        {"dtype"},
        {"quantize-int8", false},
        {"overwrite", false}},
       1,
       1,
       RunLoad},
      {"delete", "NAME", "free a resident tensor", "", {}, 1, 1, RunDelete},
  };
}

}  // namespace accel::accelctl
