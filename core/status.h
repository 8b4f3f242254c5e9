// Status and Result<T>: the recoverable-error channel.
//
// Bad input (a config field, a data file, a checkpoint) is reported with a
// Status that carries a message naming the field or file; binaries turn it
// into a one-line error and exit code 2 (kInvalidInput) or 1 (everything
// else). Programmer errors and device failures use LATAM_CHECK / CUDA_CHECK
// (check.h), which abort; never `assert` on input.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace latam {

enum class StatusCode {
  kOk = 0,
  kInvalidInput,  // bad config, data, checkpoint, world size: exit code 2
  kIoError,       // the OS refused a read or write: exit code 1
  kInternal,      // anything else: exit code 1
  kPreempted,     // stopped by a preemption signal after saving: exit code 3 (requeue)
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status InvalidInput(std::string message) { return Status(StatusCode::kInvalidInput, std::move(message)); }
  static Status IoError(std::string message) { return Status(StatusCode::kIoError, std::move(message)); }
  static Status Internal(std::string message) { return Status(StatusCode::kInternal, std::move(message)); }
  static Status Preempted(std::string message) { return Status(StatusCode::kPreempted, std::move(message)); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // Process exit code for this status: 0 ok, 2 bad input, 3 preempted, 1 otherwise.
  int exit_code() const {
    switch (code_) {
      case StatusCode::kOk:
        return 0;
      case StatusCode::kInvalidInput:
        return 2;
      case StatusCode::kPreempted:
        return 3;
      default:
        return 1;
    }
  }
  // Returns a copy whose message is prefixed with `context: `.
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

 private:
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Either a value or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace latam

#define LATAM_STATUS_CONCAT_INNER(a, b) a##b
#define LATAM_STATUS_CONCAT(a, b) LATAM_STATUS_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (a Status) is not ok.
#define LATAM_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::latam::Status latam_status_ = (expr);        \
    if (!latam_status_.ok()) return latam_status_; \
  } while (0)

// `lhs = value of expr` (a Result<T>), or returns its Status.
#define LATAM_ASSIGN_OR_RETURN(lhs, expr) \
  LATAM_ASSIGN_OR_RETURN_IMPL(LATAM_STATUS_CONCAT(latam_result_, __LINE__), lhs, expr)
#define LATAM_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()
