// The server's version, reported by GetServerInfo and accel_build_info.
#pragma once

namespace accel::server {

inline constexpr const char kVersion[] = "0.1.0";

}  // namespace accel::server
