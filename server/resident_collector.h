// The resident-memory gauges, computed when Prometheus scrapes rather than
// updated on every store mutation (which would put metric updates on the
// insert/delete path for numbers nobody reads between scrapes):
//   accel_resident_tensors                   tensors in the store
//   accel_resident_bytes                     bytes they hold
//   accel_resident_limit_bytes               --max_resident_bytes in effect
//   accel_device_memory_bytes{state}         "used" and "total" device memory
//                                            (RAM on the CPU backend)
//
// Registered on the Exposer next to the registry by Server. Thread-safe:
// Collect reads the store's thread-safe accessors and calls `device_memory`,
// which must be thread-safe too.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "server/tensor_store.h"

namespace accel::server {

struct DeviceMemory {
  int64_t used_bytes = 0;
  int64_t total_bytes = 0;
};

// Host RAM as the CPU backend's device memory: total = MemTotal, used =
// MemTotal - MemAvailable (so page cache counts as free, as the kernel does).
DeviceMemory HostMemory();

class ResidentCollector : public prometheus::Collectable {
 public:
  // `store` must outlive the collector's registration on the exposer.
  ResidentCollector(const TensorStore* store, std::function<DeviceMemory()> device_memory)
      : store_(store), device_memory_(std::move(device_memory)) {}

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const TensorStore* store_;
  std::function<DeviceMemory()> device_memory_;
};

}  // namespace accel::server
