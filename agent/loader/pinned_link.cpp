#include "agent/loader/pinned_link.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "agent/common/unique_fd.h"

namespace meshlane {

Result<bool> ensure_pinned_link(const std::string& pin, int prog_fd, int target_fd,
                                bpf_attach_type type, const std::string& what) {
    struct stat st {};
    if (::lstat(pin.c_str(), &st) == 0) {
        UniqueFd link(bpf_obj_get(pin.c_str()));
        if (!link.valid()) return Error::last_errno("open pinned link " + pin);
        if (int err = bpf_link_update(link.get(), prog_fd, nullptr); err)
            return Error::from_libbpf(err, "update pinned link " + pin);
        return false;
    }
    UniqueFd link(bpf_link_create(prog_fd, target_fd, type, nullptr));
    if (!link.valid()) return Error::last_errno("attach " + what);
    if (bpf_obj_pin(link.get(), pin.c_str()) != 0) return Error::last_errno("pin link " + pin);
    return true;
}

Status detach_pinned_link(const std::string& pin) {
    UniqueFd link(bpf_obj_get(pin.c_str()));
    if (!link.valid()) {
        if (errno == ENOENT) return Ok{};
        return Error::last_errno("open pinned link " + pin);
    }
    if (bpf_link_detach(link.get()) != 0 && errno != ENOLINK && errno != EINVAL)
        return Error::last_errno("detach link " + pin);
    if (::unlink(pin.c_str()) != 0 && errno != ENOENT) return Error::last_errno("unpin " + pin);
    return Ok{};
}

}  // namespace meshlane
