#include "server/resident_collector.h"

#include <string>
#include <utility>

#include "server/device_info.h"

namespace accel::server {
namespace {

prometheus::MetricFamily Gauge(std::string name, std::string help) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = prometheus::MetricType::Gauge;
  return family;
}

void AddSample(prometheus::MetricFamily& family, double value,
               std::vector<prometheus::ClientMetric::Label> labels = {}) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  metric.gauge.value = value;
  family.metric.push_back(std::move(metric));
}

}  // namespace

DeviceMemory HostMemory() {
  DeviceMemory memory;
  memory.total_bytes = HostTotalMemoryBytes();
  memory.used_bytes = memory.total_bytes - HostAvailableMemoryBytes();
  return memory;
}

std::vector<prometheus::MetricFamily> ResidentCollector::Collect() const {
  std::vector<prometheus::MetricFamily> families;
  families.reserve(4);

  families.push_back(Gauge("accel_resident_tensors", "Resident tensors in the store"));
  AddSample(families.back(), static_cast<double>(store_->size()));

  families.push_back(Gauge("accel_resident_bytes", "Bytes held by resident tensors"));
  AddSample(families.back(), static_cast<double>(store_->resident_bytes()));

  families.push_back(
      Gauge("accel_resident_limit_bytes", "Resident memory limit (--max_resident_bytes)"));
  AddSample(families.back(), static_cast<double>(store_->limit_bytes()));

  const DeviceMemory memory = device_memory_();
  families.push_back(Gauge("accel_device_memory_bytes",
                           "Memory of the serving device (RAM on the CPU backend), by state"));
  AddSample(families.back(), static_cast<double>(memory.used_bytes), {{"state", "used"}});
  AddSample(families.back(), static_cast<double>(memory.total_bytes), {{"state", "total"}});
  return families;
}

}  // namespace accel::server
