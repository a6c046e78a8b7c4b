#include "server/metrics_endpoint.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "prometheus/text_serializer.h"

namespace accel::server {
namespace {

constexpr size_t kMaxRequestBytes = 16 << 10;
constexpr int kIoTimeoutSeconds = 5;

void WriteAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return;  // timeout or peer gone: nothing more to do for it
    data.remove_prefix(static_cast<size_t>(n));
  }
}

std::string Response(absl::string_view status, absl::string_view content_type,
                     absl::string_view body, bool head_only) {
  std::string response =
      absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", content_type,
                   "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n");
  if (!head_only) absl::StrAppend(&response, body);
  return response;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& address, std::vector<std::weak_ptr<prometheus::Collectable>> sources) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(address).substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics_address: expected HOST:PORT, found '", address, "'"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* resolved = nullptr;
  const std::string service = std::to_string(port);
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &resolved) != 0 ||
      resolved == nullptr) {
    return absl::UnavailableError(absl::StrCat("--metrics_address: cannot resolve '", host, "'"));
  }
  int fd = ::socket(resolved->ai_family, resolved->ai_socktype | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const bool bound =
      fd >= 0 && ::bind(fd, resolved->ai_addr, resolved->ai_addrlen) == 0 && ::listen(fd, 64) == 0;
  const int bind_errno = errno;
  freeaddrinfo(resolved);
  if (!bound) {
    if (fd >= 0) ::close(fd);
    return absl::UnavailableError(absl::StrCat("--metrics_address: cannot listen on ", address,
                                               ": ", std::strerror(bind_errno)));
  }
  sockaddr_storage local{};
  socklen_t len = sizeof local;
  getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len);
  const int actual_port = local.ss_family == AF_INET6
                              ? ntohs(reinterpret_cast<sockaddr_in6*>(&local)->sin6_port)
                              : ntohs(reinterpret_cast<sockaddr_in*>(&local)->sin_port);
  int wake[2];
  if (pipe2(wake, O_CLOEXEC) != 0) {
    ::close(fd);
    return absl::InternalError("metrics endpoint: pipe2 failed");
  }
  auto endpoint = std::unique_ptr<MetricsEndpoint>(
      new MetricsEndpoint(fd, wake[0], wake[1], actual_port, std::move(sources)));
  endpoint->thread_ = std::thread([e = endpoint.get()] { e->Serve(); });
  return endpoint;
}

MetricsEndpoint::MetricsEndpoint(int listen_fd, int wake_fd_read, int wake_fd_write, int port,
                                 std::vector<std::weak_ptr<prometheus::Collectable>> sources)
    : listen_fd_(listen_fd),
      wake_read_(wake_fd_read),
      wake_write_(wake_fd_write),
      port_(port),
      sources_(std::move(sources)) {}

MetricsEndpoint::~MetricsEndpoint() {
  const char byte = 0;
  if (::write(wake_write_, &byte, 1) < 0) {
    // The pipe cannot be full or closed here; nothing else to do.
  }
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
  ::close(wake_read_);
  ::close(wake_write_);
}

std::string MetricsEndpoint::Render() const {
  std::vector<prometheus::MetricFamily> families;
  for (const auto& weak : sources_) {
    if (auto source = weak.lock()) {
      auto collected = source->Collect();
      families.insert(families.end(), std::make_move_iterator(collected.begin()),
                      std::make_move_iterator(collected.end()));
    }
  }
  return prometheus::TextSerializer().Serialize(families);
}

void MetricsEndpoint::Serve() {
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_read_, POLLIN, 0}};
  while (true) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;  // stopping
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    const timeval timeout{kIoTimeoutSeconds, 0};
    setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    HandleConnection(client);
    ::close(client);
  }
}

void MetricsEndpoint::HandleConnection(int fd) const {
  std::string request;
  char buf[2048];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < kMaxRequestBytes) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    request.append(buf, static_cast<size_t>(n));
  }
  const absl::string_view line = absl::string_view(request).substr(0, request.find("\r\n"));
  const bool get = absl::StartsWith(line, "GET ");
  const bool head = absl::StartsWith(line, "HEAD ");
  if (!get && !head) {
    WriteAll(fd, Response("405 Method Not Allowed", "text/plain", "use GET /metrics\n", false));
    return;
  }
  absl::string_view path = line.substr(line.find(' ') + 1);
  path = path.substr(0, path.find(' '));
  path = path.substr(0, path.find('?'));
  if (path == "/metrics") {
    WriteAll(fd, Response("200 OK", "text/plain; version=0.0.4; charset=utf-8", Render(), head));
  } else if (path == "/") {
    WriteAll(fd, Response("200 OK", "text/html",
                          "<html><body><a href=\"/metrics\">/metrics</a></body></html>\n", head));
  } else {
    WriteAll(fd, Response("404 Not Found", "text/plain", "not found: try /metrics\n", head));
  }
}

}  // namespace accel::server
