#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>

#include "accel/util/logging.h"

namespace accel::logging {
namespace {

std::atomic<int> g_min_severity{static_cast<int>(Severity::kInfo)};

char SeverityChar(Severity s) {
  switch (s) {
    case Severity::kInfo:
      return 'I';
    case Severity::kWarning:
      return 'W';
    case Severity::kError:
      return 'E';
    case Severity::kFatal:
      return 'F';
  }
  return '?';
}

const char* Basename(const char* path) {
  const char* base = path;
  for (const char* p = path; *p != '\0'; ++p) {
    if (*p == '/') base = p + 1;
  }
  return base;
}

}  // namespace

LogMessage::LogMessage(Severity severity, const char* file, int line) : severity_(severity) {
  auto now = std::chrono::system_clock::now();
  std::time_t secs = std::chrono::system_clock::to_time_t(now);
  auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm;
  gmtime_r(&secs, &tm);
  char prefix[64];
  std::snprintf(prefix, sizeof prefix, "%c%02d%02d %02d:%02d:%02d.%03d ", SeverityChar(severity),
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(millis));
  stream_ << prefix << Basename(file) << ':' << line << "] ";
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  const std::string line = stream_.str();
  // One write() per line keeps concurrent lines whole.
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
  if (severity_ == Severity::kFatal) std::abort();
}

bool ShouldLogEvery(std::atomic<int64_t>& last_ns, double seconds) {
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t last = last_ns.load(std::memory_order_relaxed);
  if (last != 0 && now - last < static_cast<int64_t>(seconds * 1e9)) return false;
  return last_ns.compare_exchange_strong(last, now, std::memory_order_relaxed);
}

void SetMinSeverity(Severity severity) { g_min_severity.store(static_cast<int>(severity)); }

bool IsEnabled(Severity severity) {
  return static_cast<int>(severity) >= g_min_severity.load(std::memory_order_relaxed);
}

}  // namespace accel::logging
