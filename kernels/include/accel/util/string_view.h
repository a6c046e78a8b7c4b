// Bridges between std::string_view and absl::string_view.
//
// Debian's Abseil is built with ABSL_OPTION_USE_STD_STRING_VIEW=0, so
// absl::string_view is its own type and the two do not convert implicitly.
// Code passes absl::string_view to Abseil (StrCat, Status) and uses these at
// the few places where the two meet. With a newer Abseil both are no-ops.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace accel {

inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view ToStd(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace accel
