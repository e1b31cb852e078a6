// bpf_links that outlive the agent: pinned in bpffs, re-pointed in place on restart or upgrade
// (BPF_LINK_UPDATE: no detach, no gap), detached and unpinned on unenrol. Used by every loader
// (redirect, fast path) so pins behave the same whatever program they hold.
#pragma once

#include <bpf/bpf.h>

#include <string>

#include "agent/common/result.h"

namespace meshlane {

// Re-points the link pinned at `pin` to `prog_fd`, or, when there is no pin, attaches `prog_fd`
// to `target_fd` with `type` and pins the new link. Returns true when it created the pin.
// `what` names the attachment in errors ("redirect_connect4 to cgroup /sys/fs/cgroup/x").
Result<bool> ensure_pinned_link(const std::string& pin, int prog_fd, int target_fd,
                                bpf_attach_type type, const std::string& what);

// Detaches the link pinned at `pin` (even if something else still holds a reference to it) and
// removes the pin. No pin is not an error.
Status detach_pinned_link(const std::string& pin);

}  // namespace meshlane
