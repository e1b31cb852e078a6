// Error policy (stated once, used everywhere): functions that cross the kernel boundary or parse
// untrusted input return Result<T>. An Error carries a positive errno (0 when there is none) and a
// human sentence with the context ("attach connect4 to /sys/fs/cgroup/x: Operation not
// permitted"). errno is captured at the failing call, before anything else can clobber it.
// libbpf's negative return codes are flipped to positive before they are wrapped.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace meshlane {

struct Error {
    int code = 0;  // positive errno, or 0 for a pure validation error
    std::string message;

    // "context: strerror(code)"
    static Error from_errno(int code, const std::string& context) {
        return Error{code, context + ": " + std::strerror(code)};
    }
    // Call right after a failing libc call.
    static Error last_errno(const std::string& context) { return from_errno(errno, context); }
    // libbpf returns -errno.
    static Error from_libbpf(int negative_code, const std::string& context) {
        return from_errno(negative_code < 0 ? -negative_code : negative_code, context);
    }
    static Error invalid(std::string message) { return Error{EINVAL, std::move(message)}; }

    Error with_context(const std::string& outer) const {
        return Error{code, outer + ": " + message};
    }
};

template <typename T>
class [[nodiscard]] Result {
  public:
    Result(T value) : state_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
    Result(Error error) : state_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

    bool ok() const { return std::holds_alternative<T>(state_); }
    explicit operator bool() const { return ok(); }

    T& value() & { return std::get<T>(state_); }
    const T& value() const& { return std::get<T>(state_); }
    T&& value() && { return std::get<T>(std::move(state_)); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }

    const Error& error() const { return std::get<Error>(state_); }

  private:
    std::variant<T, Error> state_;
};

struct Ok {};

template <>
class [[nodiscard]] Result<void> {
  public:
    Result() = default;
    Result(Ok) {}  // NOLINT(google-explicit-constructor)
    Result(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT

    bool ok() const { return !failed_; }
    explicit operator bool() const { return ok(); }
    const Error& error() const { return error_; }

  private:
    Error error_;
    bool failed_ = false;
};

using Status = Result<void>;

}  // namespace meshlane
