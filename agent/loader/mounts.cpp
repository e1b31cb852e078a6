#include "agent/loader/mounts.h"

#include <linux/magic.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace meshlane {

std::string unescape_mount_field(std::string_view field) {
    std::string out;
    for (std::size_t i = 0; i < field.size(); ++i) {
        if (field[i] == '\\' && i + 3 < field.size()) {
            int value = 0;
            bool octal = true;
            for (std::size_t j = 1; j <= 3; ++j) {
                char c = field[i + j];
                if (c < '0' || c > '7') octal = false;
                value = value * 8 + (c - '0');
            }
            if (octal) {
                out.push_back(static_cast<char>(value));
                i += 3;
                continue;
            }
        }
        out.push_back(field[i]);
    }
    return out;
}

Result<std::string> find_mount_point(std::string_view text, std::string_view fstype) {
    std::istringstream lines{std::string(text)};
    std::string line;
    while (std::getline(lines, line)) {
        std::istringstream fields(line);
        std::string device, mount_point, type;
        if (!(fields >> device >> mount_point >> type)) continue;
        if (type == fstype) return unescape_mount_field(mount_point);
    }
    return Error{ENOENT, "no " + std::string(fstype) + " filesystem is mounted (see /proc/mounts)"};
}

Result<std::string> find_mount_point(std::string_view fstype) {
    std::ifstream in("/proc/mounts");
    if (!in) return Error::last_errno("read /proc/mounts");
    std::stringstream text;
    text << in.rdbuf();
    return find_mount_point(text.str(), fstype);
}

Result<std::string> cgroup2_mount() {
    auto mount = find_mount_point("cgroup2");
    if (!mount) return mount.error().with_context("meshlane needs cgroup v2");
    return mount;
}

bool is_bpffs(const std::string& path) {
    struct statfs fs {};
    return ::statfs(path.c_str(), &fs) == 0 && fs.f_type == BPF_FS_MAGIC;
}

Result<std::string> ensure_bpffs(const std::string& wanted) {
    const std::string target = wanted.empty() ? "/sys/fs/bpf" : wanted;
    if (is_bpffs(target)) return target;
    if (wanted.empty()) {
        if (auto existing = find_mount_point("bpf")) return existing;
    }
    if (target.front() != '/')
        return Error::invalid("bpffs " + target + " must be an absolute path");
    if (::mkdir(target.c_str(), 0700) != 0 && errno != EEXIST)
        return Error::last_errno("create bpffs mount point " + target);
    // Mounting over a directory with content would hide it; only an empty one (or a new one).
    std::error_code ec;
    if (!std::filesystem::is_directory(target, ec) || !std::filesystem::is_empty(target, ec) || ec)
        return Error{ENOTEMPTY, "bpffs " + target +
                                    " is not an empty directory: refusing to mount bpffs over it"};
    if (::mount("bpf", target.c_str(), "bpf", 0, "mode=0700") != 0)
        return Error::last_errno("mount bpffs at " + target);
    spdlog::info("mounted bpffs at {}", target);
    return target;
}

}  // namespace meshlane
