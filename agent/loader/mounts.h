// Where the kernel's filesystems are on this node: cgroup v2 and bpffs are found in
// /proc/mounts, never assumed (hybrid hosts mount cgroup2 at /sys/fs/cgroup/unified).
#pragma once

#include <string>
#include <string_view>

#include "agent/common/result.h"

namespace meshlane {

// First mount point of filesystem type `fstype` in a /proc/mounts-formatted text.
Result<std::string> find_mount_point(std::string_view proc_mounts_text, std::string_view fstype);
// Same, reading /proc/mounts.
Result<std::string> find_mount_point(std::string_view fstype);

Result<std::string> cgroup2_mount();
// The bpffs mount (preferring `wanted` when it is one); mounts bpffs at `wanted` (default
// /sys/fs/bpf) when none is mounted.
Result<std::string> ensure_bpffs(const std::string& wanted);

// `path` is a bpffs mount (statfs magic).
bool is_bpffs(const std::string& path);

// Decodes the octal escapes /proc/mounts uses for spaces and tabs.
std::string unescape_mount_field(std::string_view field);

}  // namespace meshlane
