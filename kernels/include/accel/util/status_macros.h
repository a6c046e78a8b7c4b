// RETURN_IF_ERROR and ASSIGN_OR_RETURN for absl::Status / absl::StatusOr.
//
// Debian's Abseil (20220623) ships no status macros; these follow the names
// of the newer absl/status/status_macros.h so that moving to it is a rename.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ACCEL_STATUS_CONCAT_INNER_(a, b) a##b
#define ACCEL_STATUS_CONCAT_(a, b) ACCEL_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status accel_status_ = (expr);         \
    if (!accel_status_.ok()) return accel_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F());` declares x from an OK StatusOr or returns
// its status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ACCEL_ASSIGN_OR_RETURN_IMPL_(ACCEL_STATUS_CONCAT_(accel_statusor_, __LINE__), lhs, expr)

#define ACCEL_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)  \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
