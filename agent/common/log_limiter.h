// Rate limit for log lines an unauthenticated peer can trigger (refused requests, failed TLS
// handshakes, refused connections): without it, anyone who can reach a listener writes the
// agent's log at line rate. At most `per_interval` lines per interval; the lines suppressed in
// between are counted and reported with the next line that passes.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>

namespace meshlane {

class LogLimiter {
  public:
    explicit LogLimiter(std::uint32_t per_interval = 10,
                        std::chrono::steady_clock::duration interval = std::chrono::seconds(1))
        : per_interval_(per_interval), interval_(interval) {}

    // nullopt: do not log this one. Otherwise log it, and mention the returned number of lines
    // suppressed since the last one logged (0: none).
    std::optional<std::uint64_t> admit() {
        std::lock_guard lock(mutex_);
        const auto now = std::chrono::steady_clock::now();
        if (now - window_start_ >= interval_) {
            window_start_ = now;
            in_window_ = 0;
        }
        if (in_window_ >= per_interval_) {
            ++suppressed_;
            return std::nullopt;
        }
        ++in_window_;
        const auto suppressed = suppressed_;
        suppressed_ = 0;
        return suppressed;
    }

  private:
    std::mutex mutex_;
    const std::uint32_t per_interval_;
    const std::chrono::steady_clock::duration interval_;
    std::chrono::steady_clock::time_point window_start_{};
    std::uint32_t in_window_ = 0;
    std::uint64_t suppressed_ = 0;
};

}  // namespace meshlane
