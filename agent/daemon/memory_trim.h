// Returns the heap memory the agent has freed to the kernel, once a second, when more than a
// threshold of it sits unused. Why: an HTTP/2 rapid-reset burst on the gRPC TCP port (gRPC 1.51
// has no defence against it, docs/api.md) makes gRPC allocate and free per-stream state by the
// tens of megabytes; glibc keeps the freed pages, so RSS stayed at its peak for good (measured:
// 30 -> 105 MB after one burst of 10,000 HEADERS+RST_STREAM pairs; 35 MB after malloc_trim).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>

namespace meshlane {

class MemoryTrimmer {
  public:
    explicit MemoryTrimmer(std::size_t threshold_bytes = 8 << 20,
                           std::chrono::milliseconds interval = std::chrono::seconds(1));
    ~MemoryTrimmer();  // stops the thread
    MemoryTrimmer(const MemoryTrimmer&) = delete;
    MemoryTrimmer& operator=(const MemoryTrimmer&) = delete;

  private:
    void run();

    const std::size_t threshold_bytes_;
    const std::chrono::milliseconds interval_;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace meshlane
