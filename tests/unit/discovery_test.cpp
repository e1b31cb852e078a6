// Pod discovery without root: libcni cache entries, kubepods cgroup names and trees (plain
// directories), the plugin config libcni would have passed, and what PodDiscovery decides for
// each entry against an in-memory registry.
#include "agent/workload/discovery.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>

#include "cni/config/cni_config.h"
#include "fake_workload_registry.h"

namespace meshlane {
namespace {

namespace json = boost::json;
namespace fs = std::filesystem;

std::string base64(std::string_view in) {
    static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        const unsigned v = (static_cast<unsigned char>(in[i]) << 16) |
                           (static_cast<unsigned char>(in[i + 1]) << 8) |
                           static_cast<unsigned char>(in[i + 2]);
        for (int s : {18, 12, 6, 0}) out += table[(v >> s) & 63];
    }
    if (i + 1 == in.size()) {
        const unsigned v = static_cast<unsigned char>(in[i]) << 16;
        out += table[(v >> 18) & 63];
        out += table[(v >> 12) & 63];
        out += "==";
    } else if (i + 2 == in.size()) {
        const unsigned v = (static_cast<unsigned char>(in[i]) << 16) |
                           (static_cast<unsigned char>(in[i + 1]) << 8);
        for (int s : {18, 12, 6}) out += table[(v >> s) & 63];
        out += "=";
    }
    return out;
}

json::object conflist(bool with_meshlane) {
    json::array plugins{json::object{{"type", "bridge"}, {"bridge", "cni0"}}};
    if (with_meshlane)
        plugins.push_back(json::object{
            {"type", "meshlane-cni"},
            {"failOpen", true},
            {"capabilities", json::object{{"cgroupPath", true}, {"podAnnotations", true}}}});
    return json::object{{"cniVersion", "1.0.0"}, {"name", "k8s-pod-network"}, {"plugins", plugins}};
}

std::string cache_entry(const json::object& config, const std::string& netns,
                        const json::object& capability_args, const std::string& ip = "10.9.0.5") {
    json::object entry{
        {"kind", "cniCacheV1"},
        {"containerId", "abc123"},
        {"config", base64(json::serialize(config))},
        {"ifName", "eth0"},
        {"networkName", "k8s-pod-network"},
        {"cniArgs",
         json::array{json::array{"IgnoreUnknown", "1"}, json::array{"K8S_POD_NAMESPACE", "shop"},
                     json::array{"K8S_POD_NAME", "web-0"},
                     json::array{"K8S_POD_UID", "1234-5678"}}},
        {"capabilityArgs", capability_args},
        {"result", json::object{{"cniVersion", "1.0.0"},
                                {"ips", json::array{json::object{{"address", ip + "/24"}}}}}}};
    if (!netns.empty()) entry["netns"] = netns;
    return json::serialize(entry);
}

TEST(Discovery, ParsesALibcniCacheEntry) {
    auto entry = parse_cni_cache_entry(cache_entry(conflist(true), "", {}));
    ASSERT_TRUE(entry) << entry.error().message;
    EXPECT_EQ(entry->container_id, "abc123");
    EXPECT_EQ(entry->ifname, "eth0");
    EXPECT_EQ(entry->network_name, "k8s-pod-network");
    EXPECT_EQ(entry->ips, std::vector<std::string>{"10.9.0.5"});
    EXPECT_EQ(entry->cni_arg("K8S_POD_UID"), "1234-5678");
    EXPECT_EQ(entry->cni_args_text(),
              "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=1234-5678");
    EXPECT_EQ(entry->config.at("name").as_string(), "k8s-pod-network");
}

TEST(Discovery, RejectsMalformedCacheEntriesNamingTheField) {
    EXPECT_NE(parse_cni_cache_entry("[]").error().message.find("JSON object"), std::string::npos);
    EXPECT_NE(parse_cni_cache_entry(R"({"kind":"other"})").error().message.find("kind"),
              std::string::npos);
    auto no_config = parse_cni_cache_entry(
        R"({"kind":"cniCacheV1","containerId":"a","ifName":"eth0","networkName":"n"})");
    EXPECT_NE(no_config.error().message.find("config"), std::string::npos);
    auto bad_base64 = parse_cni_cache_entry(
        R"({"kind":"cniCacheV1","containerId":"a","ifName":"eth0","networkName":"n","config":"%%%"})");
    EXPECT_NE(bad_base64.error().message.find("base64"), std::string::npos);
    auto no_ifname = parse_cni_cache_entry(R"({"kind":"cniCacheV1","containerId":"a"})");
    EXPECT_NE(no_ifname.error().message.find("ifName"), std::string::npos);
}

TEST(Discovery, PodUidFromBothCgroupDrivers) {
    EXPECT_EQ(pod_uid_from_cgroup_name("kubepods-burstable-pod12ab_34cd.slice"), "12ab-34cd");
    EXPECT_EQ(pod_uid_from_cgroup_name("kubepods-pod12ab_34cd.slice"), "12ab-34cd");
    EXPECT_EQ(pod_uid_from_cgroup_name("pod12ab-34cd"), "12ab-34cd");
    EXPECT_EQ(pod_uid_from_cgroup_name("kubepods-burstable.slice"), std::nullopt);
    EXPECT_EQ(pod_uid_from_cgroup_name("cri-containerd-abc.scope"), std::nullopt);
    EXPECT_EQ(pod_uid_from_cgroup_name("podcast"), std::nullopt);
    EXPECT_EQ(pod_uid_from_cgroup_name("besteffort"), std::nullopt);
}

class TempDir {
  public:
    TempDir() {
        char path[] = "/tmp/meshlane-discovery-test-XXXXXX";
        path_ = ::mkdtemp(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

TEST(Discovery, FindsPodCgroupsOfBothDriversUnderTheRoot) {
    TempDir root;
    const auto systemd = root.path() + "/test-parent/kubepods.slice";
    fs::create_directories(systemd +
                           "/kubepods-burstable.slice/kubepods-burstable-podaa_bb.slice/"
                           "cri-containerd-1.scope");
    fs::create_directories(systemd + "/kubepods-podcc.slice");
    fs::create_directories(root.path() + "/kubepods/besteffort/poddd-ee/ctr");
    fs::create_directories(root.path() + "/system.slice/foo.service");
    auto pods = find_kube_pod_cgroups(root.path());
    EXPECT_EQ(pods.size(), 3u);
    EXPECT_EQ(pods["aa-bb"],
              systemd + "/kubepods-burstable.slice/kubepods-burstable-podaa_bb.slice");
    EXPECT_EQ(pods["cc"], systemd + "/kubepods-podcc.slice");
    EXPECT_EQ(pods["dd-ee"], root.path() + "/kubepods/besteffort/poddd-ee");
}

TEST(Discovery, PluginStdinIsWhatLibcniPassesTheChainedPlugin) {
    json::object caps{{"cgroupPath", "/kubepods/pod1"},
                      {"podAnnotations", json::object{{"a", "b"}}},
                      {"portMappings", json::array{}}};
    auto text = cni::plugin_stdin_from_list(conflist(true), caps);
    ASSERT_TRUE(text && text->has_value());
    auto config = json::parse(**text).as_object();
    EXPECT_EQ(config.at("type").as_string(), "meshlane-cni");
    EXPECT_EQ(config.at("cniVersion").as_string(), "1.0.0");
    EXPECT_EQ(config.at("name").as_string(), "k8s-pod-network");
    EXPECT_FALSE(config.contains("capabilities"));
    // Only the capabilities the plugin declares.
    EXPECT_EQ(config.at("runtimeConfig"),
              (json::object{{"cgroupPath", "/kubepods/pod1"},
                            {"podAnnotations", json::object{{"a", "b"}}}}));
    auto parsed = cni::parse_config(**text);
    ASSERT_TRUE(parsed);
    EXPECT_TRUE(parsed->fail_open);
    EXPECT_EQ(parsed->cgroup, "/kubepods/pod1");

    auto none = cni::plugin_stdin_from_list(conflist(false), caps);
    ASSERT_TRUE(none);
    EXPECT_FALSE(none->has_value());
}

class DiscoveryRun : public ::testing::Test {
  protected:
    void write(const std::string& name, const std::string& text) {
        std::ofstream(cache.path() + "/" + name) << text;
    }
    PodDiscovery discovery() {
        return PodDiscovery({.cni_cache_dir = cache.path(),
                             .cgroup2_mount = cgroups.path(),
                             .netns_dir = cache.path() + "/no-netns",
                             .proc_dir = cache.path() + "/no-proc"});
    }
    TempDir cache;
    TempDir cgroups;
    testing::FakeWorkloadRegistry registry;
};

TEST_F(DiscoveryRun, AdoptsAChainedPodWithTheOptionsTheCniPluginWouldSend) {
    fs::create_directories(cgroups.path() + "/kubepods/pod1234-5678");
    json::object caps{{"cgroupPath", cgroups.path() + "/kubepods/pod1234-5678"},
                      {"podAnnotations",
                       json::object{{"traffic.sidecar.istio.io/excludeOutboundPorts", "5432"}}}};
    // Newer libcni records the netns: taken as is.
    write("k8s-pod-network-abc123-eth0", cache_entry(conflist(true), "/proc/self/ns/net", caps));
    auto d = discovery();
    auto outcomes = d.run(registry);
    ASSERT_EQ(outcomes.size(), 1u);
    EXPECT_TRUE(outcomes[0].adopted) << outcomes[0].reason;
    EXPECT_EQ(outcomes[0].workload, "shop.web-0");
    auto status = registry.get("shop.web-0");
    ASSERT_TRUE(status);
    EXPECT_EQ(status->spec.netns_path, "/proc/self/ns/net");
    EXPECT_EQ(status->spec.cgroup_path, cgroups.path() + "/kubepods/pod1234-5678");
    EXPECT_EQ(status->spec.exclude_outbound_ports, std::vector<std::uint16_t>{5432});
    // Each entry once per run: nothing new the second time.
    EXPECT_TRUE(d.run(registry).empty());
    // A new agent run sees it again and finds it enrolled.
    auto again = discovery().run(registry);
    ASSERT_EQ(again.size(), 1u);
    EXPECT_FALSE(again[0].adopted);
    EXPECT_EQ(again[0].reason, "already enrolled");
}

TEST_F(DiscoveryRun, FallsBackToThePodUidCgroupWhenTheCapabilityIsMissing) {
    const auto pod =
        cgroups.path() +
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_5678.slice";
    fs::create_directories(pod);
    write("k8s-pod-network-abc123-eth0", cache_entry(conflist(true), "/proc/self/ns/net", {}));
    auto outcomes = discovery().run(registry);
    ASSERT_EQ(outcomes.size(), 1u);
    ASSERT_TRUE(outcomes[0].adopted) << outcomes[0].reason;
    EXPECT_EQ(registry.get("shop.web-0")->spec.cgroup_path, pod);
}

TEST_F(DiscoveryRun, SkipsWithAReason) {
    write("k8s-pod-network-a-eth0", cache_entry(conflist(false), "/proc/self/ns/net", {}));
    write("k8s-pod-network-b-eth0", cache_entry(conflist(true), "", {}));
    write("garbage", "{");
    auto outcomes = discovery().run(registry);
    ASSERT_EQ(outcomes.size(), 3u);
    EXPECT_NE(outcomes[0].reason.find("not a libcni cache entry"), std::string::npos);
    EXPECT_EQ(outcomes[1].reason, "network k8s-pod-network does not chain meshlane-cni");
    EXPECT_NE(
        outcomes[2].reason.find("network namespace is gone: no namespace has 10.9.0.5 on eth0"),
        std::string::npos)
        << outcomes[2].reason;
    for (const auto& o : outcomes) EXPECT_FALSE(o.adopted);
    EXPECT_EQ(registry.enroll_calls, 0);
}

}  // namespace
}  // namespace meshlane
