// Startup prerequisite reporting: what is missing, which capabilities still work.
#include "agent/daemon/prerequisites.h"

#include <gtest/gtest.h>

#include <set>

namespace meshlane {
namespace {

ProbeEnvironment environment_missing(std::set<std::string> missing) {
    auto result = [missing](const std::string& key) {
        bool gone = missing.count(key) > 0;
        return ProbeResult{key, !gone, gone ? "not in this kernel" : ""};
    };
    ProbeEnvironment env;
    env.btf_probe = [result] { return result("btf"); };
    env.cgroup2_probe = [result] { return result("cgroup2"); };
    env.bpffs_probe = [result] { return result("bpffs"); };
    env.bpf_probe = result;
    return env;
}

TEST(Prerequisites, EverythingPresent) {
    auto report = probe_prerequisites(environment_missing({}));
    EXPECT_TRUE(report.all_available());
    EXPECT_TRUE(report.broken_capabilities().empty());
    EXPECT_EQ(report.working_capabilities().size(), redirect_capabilities().size());
    auto features = report.features();
    for (const char* key : {"btf", "cgroup2", "bpffs", "prog_type.sk_lookup", "attach.sk_lookup",
                            "attach.cgroup_getsockopt", "map.sk_storage",
                            "helper.sk_lookup.sk_assign", "helper.sock_ops.sock_map_update"})
        EXPECT_TRUE(features.at(key)) << key;
}

TEST(Prerequisites, EachFeatureProbedOnce) {
    auto report = probe_prerequisites(environment_missing({}));
    std::set<std::string> names;
    for (const auto& p : report.probes) EXPECT_TRUE(names.insert(p.name).second) << p.name;
}

TEST(Prerequisites, MissingSkLookupNamesItAndKeepsOutbound) {
    auto report =
        probe_prerequisites(environment_missing({"prog_type.sk_lookup", "attach.sk_lookup"}));
    EXPECT_FALSE(report.all_available());
    ASSERT_EQ(report.missing().size(), 2u);
    const std::string text = report.describe();
    EXPECT_NE(text.find("missing: prog_type.sk_lookup: not in this kernel"), std::string::npos)
        << text;
    EXPECT_NE(text.find("missing: attach.sk_lookup"), std::string::npos) << text;
    EXPECT_NE(text.find("does not work: inbound capture"), std::string::npos) << text;
    EXPECT_NE(text.find("still works: outbound capture"), std::string::npos) << text;
    EXPECT_EQ(report.broken_capabilities().size(), 1u);
}

TEST(Prerequisites, MissingHelperBreaksOnlyItsCapability) {
    auto report = probe_prerequisites(environment_missing({"attach.cgroup_inet6_getpeername"}));
    auto broken = report.broken_capabilities();
    ASSERT_EQ(broken.size(), 1u);
    EXPECT_NE(broken[0].find("getpeername"), std::string::npos);
}

}  // namespace
}  // namespace meshlane
