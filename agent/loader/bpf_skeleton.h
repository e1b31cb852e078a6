// A non-copyable RAII owner of a bpftool-generated skeleton (open -> configure -> load), with
// errors carried as Result. Destroying it closes the object's fds; anything that must outlive
// the agent is held by a pinned link or a pinned map, never by the skeleton.
#pragma once

#include <bpf/libbpf.h>

#include <string>
#include <utility>

#include "agent/common/result.h"
#include "agent/loader/libbpf_log.h"

namespace meshlane {

// Skeleton is a bpftool-generated skeleton struct (e.g. redirect_outbound_bpf): bpftool emits
// static open/load/destroy members for C++ (`#ifdef __cplusplus` in every .skel.h), so no
// per-object glue is written by hand.
template <typename Skeleton>
class BpfSkeleton {
  public:
    BpfSkeleton() = default;
    BpfSkeleton(const BpfSkeleton&) = delete;
    BpfSkeleton& operator=(const BpfSkeleton&) = delete;
    BpfSkeleton(BpfSkeleton&& other) noexcept : skel_(std::exchange(other.skel_, nullptr)) {}
    BpfSkeleton& operator=(BpfSkeleton&& other) noexcept {
        if (this != &other) {
            reset();
            skel_ = std::exchange(other.skel_, nullptr);
        }
        return *this;
    }
    ~BpfSkeleton() { reset(); }

    static Result<BpfSkeleton> open(const bpf_object_open_opts* opts, const std::string& what) {
        errno = 0;
        Skeleton* skel = Skeleton::open(opts);
        if (!skel) return Error::from_errno(errno ? errno : EINVAL, "open BPF object " + what);
        BpfSkeleton owner;
        owner.skel_ = skel;
        return owner;
    }

    // A rejected program is named in the error, with the tail of its verifier log.
    Status load(const std::string& what) {
        (void)take_program_rejection();
        int err = Skeleton::load(skel_);
        if (err) {
            Error error = Error::from_libbpf(err, "load BPF object " + what);
            if (auto rejected = take_program_rejection())
                error.message += ": " + rejected->describe();
            return error;
        }
        return Ok{};
    }

    Skeleton* operator->() const { return skel_; }
    Skeleton* get() const { return skel_; }

    void reset() {
        if (skel_) Skeleton::destroy(skel_);
        skel_ = nullptr;
    }

  private:
    Skeleton* skel_ = nullptr;
};

}  // namespace meshlane
