#include "agent/daemon/memory_trim.h"

#include <malloc.h>
#include <spdlog/spdlog.h>

namespace meshlane {

MemoryTrimmer::MemoryTrimmer(std::size_t threshold_bytes, std::chrono::milliseconds interval)
    : threshold_bytes_(threshold_bytes), interval_(interval), thread_([this] { run(); }) {}

MemoryTrimmer::~MemoryTrimmer() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
}

void MemoryTrimmer::run() {
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, interval_, [this] { return stopping_; })) {
        // fordblks: free bytes the allocator holds (all arenas), not returned to the kernel.
        const struct mallinfo2 info = ::mallinfo2();
        if (info.fordblks < threshold_bytes_) continue;
        const bool released = ::malloc_trim(0) == 1;
        spdlog::debug("memory: {} KiB free in the heap, trimmed{}", info.fordblks / 1024,
                      released ? "" : " (nothing released)");
    }
}

}  // namespace meshlane
