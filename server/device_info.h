// Properties of the serving device for GetServerInfo and for sizing the
// resident-memory default (90% of free device memory, or of RAM on CPU).
// Stateless and thread-safe.
#pragma once

#include <cstdint>

#include "accel/v1/tensor_ops.pb.h"

namespace accel::server {

// The host CPU as a device: model name, RAM, cores; fp16/bf16 supported
// (converted to fp32 in the kernels), no fp8, no int8 tensor cores.
v1::DeviceProperties DescribeCpu();

// Physical RAM and currently available RAM in bytes (from /proc/meminfo).
int64_t HostTotalMemoryBytes();
int64_t HostAvailableMemoryBytes();

}  // namespace accel::server
