// The Prometheus scrape endpoint: a minimal HTTP/1.x server answering
// GET /metrics with prometheus-cpp's text exposition of its collectables.
//
// Why not prometheus-cpp's civetweb Exposer: civetweb runs its workers on
// 100 KB stacks, and a process that links OpenBLAS (60 KB of static TLS) and
// the CUDA runtime leaves them too little stack: scrapes crashed the server.
// Scrapes are rare and small, so one thread with an ordinary stack serves
// them one at a time, each connection bounded by a 5 s I/O timeout.
//
// Thread-safety: Start/Stop from one thread; collectables must be
// thread-safe (prometheus::Registry and ResidentCollector are).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"

namespace accel::server {

class MetricsEndpoint {
 public:
  // Listens on "HOST:PORT" (port 0 picks a free one) and serves the
  // collectables until destroyed. UNAVAILABLE when the address cannot bind.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& address, std::vector<std::weak_ptr<prometheus::Collectable>> sources);
  ~MetricsEndpoint();  // stops accepting and joins the thread

  int port() const { return port_; }

  // The text exposition of every live source (what GET /metrics returns).
  std::string Render() const;

 private:
  MetricsEndpoint(int listen_fd, int wake_fd_read, int wake_fd_write, int port,
                  std::vector<std::weak_ptr<prometheus::Collectable>> sources);
  void Serve();
  void HandleConnection(int fd) const;

  const int listen_fd_;
  const int wake_read_;
  const int wake_write_;
  const int port_;
  const std::vector<std::weak_ptr<prometheus::Collectable>> sources_;
  std::thread thread_;
};

}  // namespace accel::server
