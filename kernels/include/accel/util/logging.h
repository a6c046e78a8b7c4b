// Minimal logging and CHECK macros, because Debian's Abseil (20220623) has
// no absl/log. Names follow absl/log (LOG(INFO), CHECK, CHECK_EQ...) so that
// moving to a newer Abseil is an include change.
//
// LOG(severity) writes one line to stderr: "I1126 01:02:03.456 file.cc:42] msg".
// LOG_EVERY_N_SEC(severity, seconds) drops lines faster than one per
// `seconds` per call site (for warnings about rejected requests).
// Thread-safe: each line is written with a single write() call.
#pragma once

#include <atomic>
#include <cstdint>
#include <sstream>

namespace accel::logging {

enum class Severity { kInfo, kWarning, kError, kFatal };

class LogMessage {
 public:
  LogMessage(Severity severity, const char* file, int line);
  ~LogMessage();  // writes the line; aborts after a kFatal line
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  Severity severity_;
  std::ostringstream stream_;
};

// Swallows a stream expression when a log line is dropped.
struct Voidify {
  void operator&(std::ostream&) {}
};

// True at most once per `seconds` for the call site owning `last_ns`.
bool ShouldLogEvery(std::atomic<int64_t>& last_ns, double seconds);

// Minimum severity written (default kInfo); tests raise it to keep output short.
void SetMinSeverity(Severity severity);
bool IsEnabled(Severity severity);

}  // namespace accel::logging

#define ACCEL_LOG_SEVERITY_INFO ::accel::logging::Severity::kInfo
#define ACCEL_LOG_SEVERITY_WARNING ::accel::logging::Severity::kWarning
#define ACCEL_LOG_SEVERITY_ERROR ::accel::logging::Severity::kError
#define ACCEL_LOG_SEVERITY_FATAL ::accel::logging::Severity::kFatal

#define LOG(severity)                                                                       \
  !::accel::logging::IsEnabled(ACCEL_LOG_SEVERITY_##severity)                               \
      ? (void)0                                                                             \
      : ::accel::logging::Voidify() &                                                       \
            ::accel::logging::LogMessage(ACCEL_LOG_SEVERITY_##severity, __FILE__, __LINE__) \
                .stream()

#define LOG_EVERY_N_SEC(severity, seconds)                                                 \
  static std::atomic<int64_t> ACCEL_LOG_CONCAT_(accel_log_last_, __LINE__){0};             \
  !::accel::logging::ShouldLogEvery(ACCEL_LOG_CONCAT_(accel_log_last_, __LINE__), seconds) \
      ? (void)0                                                                            \
      : LOG(severity)

#define ACCEL_LOG_CONCAT_INNER_(a, b) a##b
#define ACCEL_LOG_CONCAT_(a, b) ACCEL_LOG_CONCAT_INNER_(a, b)

#define CHECK(cond)                                                                              \
  (cond)                                                                                         \
      ? (void)0                                                                                  \
      : ::accel::logging::Voidify() &                                                            \
            ::accel::logging::LogMessage(::accel::logging::Severity::kFatal, __FILE__, __LINE__) \
                    .stream()                                                                    \
                << "Check failed: " #cond " "

#define CHECK_OP_(a, b, op) CHECK((a)op(b)) << "(" << (a) << " vs " << (b) << ") "
#define CHECK_EQ(a, b) CHECK_OP_(a, b, ==)
#define CHECK_NE(a, b) CHECK_OP_(a, b, !=)
#define CHECK_LE(a, b) CHECK_OP_(a, b, <=)
#define CHECK_LT(a, b) CHECK_OP_(a, b, <)
#define CHECK_GE(a, b) CHECK_OP_(a, b, >=)
#define CHECK_GT(a, b) CHECK_OP_(a, b, >)
