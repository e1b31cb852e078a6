#include "agent/loader/mounts.h"

#include <gtest/gtest.h>

namespace meshlane {
namespace {

constexpr const char* kHybrid =
    "sysfs /sys sysfs rw 0 0\n"
    "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
    "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
    "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    "bpf /sys/fs/bpf bpf rw 0 0\n";

TEST(Mounts, FindsCgroup2OnHybridHosts) {
    auto mount = find_mount_point(kHybrid, "cgroup2");
    ASSERT_TRUE(mount.ok());
    EXPECT_EQ(*mount, "/sys/fs/cgroup/unified");
}

TEST(Mounts, MissingFilesystemIsAClearError) {
    auto mount = find_mount_point("sysfs /sys sysfs rw 0 0\n", "cgroup2");
    ASSERT_FALSE(mount.ok());
    EXPECT_NE(mount.error().message.find("no cgroup2 filesystem"), std::string::npos);
}

TEST(Mounts, DecodesOctalEscapes) {
    EXPECT_EQ(unescape_mount_field("/mnt/with\\040space"), "/mnt/with space");
    EXPECT_EQ(unescape_mount_field("/plain"), "/plain");
    EXPECT_EQ(unescape_mount_field("/trailing\\04"), "/trailing\\04");
}

}  // namespace
}  // namespace meshlane
