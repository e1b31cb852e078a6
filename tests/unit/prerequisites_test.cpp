// Startup prerequisite reporting: what is missing, which capabilities still work.
#include "agent/daemon/prerequisites.h"

#include <gtest/gtest.h>

#include <cstdlib>
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

TEST(Features, AllOnWhenEverythingIsPresent) {
    auto states = evaluate_features(probe_prerequisites(environment_missing({})), {});
    for (const auto& feature : agent_features()) {
        ASSERT_TRUE(states.count(feature.name)) << feature.name;
        EXPECT_TRUE(states[feature.name].enabled) << feature.name;
        EXPECT_EQ(states[feature.name].reason, "");
    }
    EXPECT_TRUE(states[kFeatureRedirect].essential);
    EXPECT_FALSE(states[kFeatureObserveDrops].essential);
}

TEST(Features, AMissingProbeDisablesOnlyTheFeaturesThatNeedIt) {
    auto states = evaluate_features(
        probe_prerequisites(environment_missing({"map.sockhash", "prog_type.sk_lookup"})), {});
    EXPECT_FALSE(states[kFeatureFastPath].enabled);
    EXPECT_EQ(states[kFeatureFastPath].reason,
              "missing kernel features: map.sockhash: not in this kernel");
    EXPECT_FALSE(states[kFeatureRedirect].enabled);
    EXPECT_NE(states[kFeatureRedirect].reason.find("prog_type.sk_lookup: not in this kernel"),
              std::string::npos);
    EXPECT_TRUE(states[kFeatureObserveConnect].enabled);
    EXPECT_TRUE(states[kFeatureObserveDrops].enabled);
    const auto text = describe_features(states);
    EXPECT_NE(text.find("  observe_drops: on\n"), std::string::npos) << text;
    EXPECT_NE(text.find("  fast_path: OFF (missing kernel features: map.sockhash"),
              std::string::npos)
        << text;
}

TEST(Features, ForcedOffUsesTheForcedReason) {
    auto states =
        evaluate_features(probe_prerequisites(environment_missing({})), {kFeatureObserveDrops},
                          [](const std::string& name) { return "forced " + name; });
    EXPECT_FALSE(states[kFeatureObserveDrops].enabled);
    EXPECT_EQ(states[kFeatureObserveDrops].reason, "forced observe_drops");
    EXPECT_TRUE(states[kFeatureRedirect].enabled);
}

TEST(Features, ForcedOffNamesComeFromTheEnvironment) {
    ::setenv("MESHLANE_TEST_DISABLE_FEATURE", "observe_drops,,nonsense,fast_path", 1);
    std::vector<std::string> unknown;
    auto forced = features_forced_off(&unknown);
    ::unsetenv("MESHLANE_TEST_DISABLE_FEATURE");
    EXPECT_EQ(forced, (std::set<std::string>{"observe_drops", "fast_path"}));
    EXPECT_EQ(unknown, std::vector<std::string>{"nonsense"});
    EXPECT_TRUE(features_forced_off().empty());
}

}  // namespace
}  // namespace meshlane
