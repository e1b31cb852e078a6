// meshlane-cni without a runtime: config parsing, naming, Istio annotations, and the ADD / DEL /
// CHECK / VERSION flows against a fake agent.
#include "cni/cni_plugin.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>

namespace meshlane::cni {
namespace {

namespace json = boost::json;
namespace http = boost::beast::http;

struct Call {
    http::verb method;
    std::string target;
    std::optional<json::value> body;
};

class FakeAgent : public AgentClient {
  public:
    bool down = false;
    unsigned status = 201;
    std::string reply_body = "{}";
    std::vector<Call>* calls;
    explicit FakeAgent(std::vector<Call>* c) : calls(c) {}
    Result<rest::HttpReply> request(http::verb method, const std::string& target,
                                    const std::optional<json::value>& body) override {
        calls->push_back({method, target, body});
        if (down) return Error{ECONNREFUSED, "connect /run/meshlane/api.sock: Connection refused"};
        return rest::HttpReply{status, "application/json", reply_body};
    }
};

const char* kPrev =
    R"({"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.200.1.5/24","interface":0}]})";

std::string config_text(const std::string& extra = "") {
    return std::string(R"({"cniVersion":"1.0.0","name":"k8s-pod-network","type":"meshlane-cni",)") +
           extra + R"("prevResult":)" + kPrev + "}";
}

Environment add_env() {
    return {"ADD", "abc123", "/var/run/netns/cni-1", "eth0",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=u1"};
}

struct Harness {
    std::vector<Call> calls;
    bool down = false;
    unsigned status = 201;
    std::string reply_body = "{}";
    Outcome run(const Environment& env, const std::string& input) {
        return cni::run(env, input, [this](const PluginConfig&) {
            auto agent = std::make_unique<FakeAgent>(&calls);
            agent->down = down;
            agent->status = status;
            agent->reply_body = reply_body;
            return agent;
        });
    }
};

TEST(CniPlugin, ParsesCniArgs) {
    auto args = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web-0;bad;=x;K8S_POD_NAMESPACE=shop");
    EXPECT_EQ(args.at("K8S_POD_NAME"), "web-0");
    EXPECT_EQ(args.at("K8S_POD_NAMESPACE"), "shop");
    EXPECT_EQ(args.count("bad"), 0u);
}

TEST(CniPlugin, WorkloadNames) {
    EXPECT_EQ(workload_name(parse_cni_args("K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=web-0"), "c1"),
              "shop.web-0");
    std::string long_pod(200, 'p');
    auto name =
        workload_name(parse_cni_args("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=" + long_pod), "c1");
    EXPECT_LE(name.size(), 63u);
    EXPECT_TRUE(validate_name(name)) << name;
    EXPECT_NE(
        name,
        workload_name(parse_cni_args("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=" + long_pod + "x"), "c1"));
    EXPECT_EQ(workload_name({}, "ABCDEF0123"), "cni-abcdef0123");
}

TEST(CniPlugin, AddEnrollsAndPassesPrevResultThrough) {
    Harness h;
    auto out = h.run(add_env(), config_text(R"("runtimeConfig":{"cgroupPath":"/kubepods/pod1"},)"));
    ASSERT_EQ(out.exit_code, 0) << out.output;
    EXPECT_EQ(json::parse(out.output), json::parse(kPrev));
    ASSERT_EQ(h.calls.size(), 1u);
    EXPECT_EQ(h.calls[0].method, http::verb::post);
    EXPECT_EQ(h.calls[0].target, "/v1/workloads");
    const auto& body = h.calls[0].body->as_object();
    EXPECT_EQ(body.at("name").as_string(), "shop.web-0");
    // Not a directory here: sent relative to the agent's cgroup2 mount.
    EXPECT_EQ(body.at("cgroup").as_string(), "kubepods/pod1");
    EXPECT_EQ(body.at("netns").as_string(), "/var/run/netns/cni-1");
}

TEST(CniPlugin, IstioAnnotationsBecomeTheSpec) {
    const std::string annotations =
        R"("runtimeConfig":{"cgroupPath":"/kubepods/pod1","podAnnotations":{
        "traffic.sidecar.istio.io/excludeOutboundPorts":"9999,5432",
        "traffic.sidecar.istio.io/excludeInboundPorts":"2222",
        "traffic.sidecar.istio.io/includeInboundPorts":"8080,9090",
        "traffic.sidecar.istio.io/includeOutboundPorts":"7777",
        "traffic.sidecar.istio.io/includeOutboundIPRanges":"10.0.0.0/8",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges":"169.254.169.254/32",
        "unrelated/annotation":"x"}},)";
    Harness h;
    auto out = h.run(add_env(), config_text(annotations));
    ASSERT_EQ(out.exit_code, 0) << out.output;
    auto spec = workload_spec_from_json(*h.calls.at(0).body);
    ASSERT_TRUE(spec) << spec.error().message;
    EXPECT_EQ(spec->exclude_outbound_ports, (std::vector<std::uint16_t>{5432, 9999}));
    EXPECT_EQ(spec->exclude_inbound_ports, (std::vector<std::uint16_t>{2222}));
    EXPECT_FALSE(spec->include_all_inbound_ports);
    EXPECT_EQ(spec->include_inbound_ports, (std::vector<std::uint16_t>{8080, 9090}));
    EXPECT_EQ(spec->include_outbound_ports, (std::vector<std::uint16_t>{7777}));
    EXPECT_FALSE(spec->include_all_cidrs);
    ASSERT_EQ(spec->include_cidrs.size(), 1u);
    EXPECT_EQ(spec->include_cidrs[0].to_string(), "10.0.0.0/8");
    ASSERT_EQ(spec->exclude_cidrs.size(), 1u);
}

TEST(CniPlugin, AnnotationsFromArgsConvention) {
    Harness h;
    auto out =
        h.run(add_env(), config_text(R"("args":{"cni":{"cgroup":"/kubepods/pod2","podAnnotations":{
        "traffic.sidecar.istio.io/excludeOutboundPorts":"1234"}}},)"));
    ASSERT_EQ(out.exit_code, 0) << out.output;
    auto spec = workload_spec_from_json(*h.calls.at(0).body);
    EXPECT_EQ(spec->cgroup_path, "kubepods/pod2");
    EXPECT_EQ(spec->exclude_outbound_ports, (std::vector<std::uint16_t>{1234}));
}

TEST(CniPlugin, BadAnnotationIsAClearError) {
    Harness h;
    auto out = h.run(add_env(), config_text(R"("runtimeConfig":{"cgroupPath":"/p","podAnnotations":{
        "traffic.sidecar.istio.io/excludeOutboundPorts":"http"}},)"));
    EXPECT_EQ(out.exit_code, 1);
    auto error = json::parse(out.output).as_object();
    EXPECT_EQ(error.at("code").as_int64(), kInvalidConfig);
    EXPECT_NE(std::string(error.at("msg").as_string()).find("excludeOutboundPorts"),
              std::string::npos);
    EXPECT_TRUE(h.calls.empty());
}

TEST(CniPlugin, AgentDownFailsTheSandboxByDefault) {
    Harness h;
    h.down = true;
    auto out = h.run(add_env(), config_text(R"("runtimeConfig":{"cgroupPath":"/p"},)"));
    EXPECT_EQ(out.exit_code, 1);
    auto error = json::parse(out.output).as_object();
    EXPECT_EQ(error.at("cniVersion").as_string(), "1.0.0");
    EXPECT_EQ(error.at("code").as_int64(), kTryAgainLater);
    EXPECT_NE(std::string(error.at("msg").as_string()).find("meshlane agent unreachable"),
              std::string::npos);
}

TEST(CniPlugin, AgentDownWithFailOpenPassesThrough) {
    Harness h;
    h.down = true;
    auto out =
        h.run(add_env(), config_text(R"("failOpen":true,"runtimeConfig":{"cgroupPath":"/p"},)"));
    EXPECT_EQ(out.exit_code, 0);
    EXPECT_EQ(json::parse(out.output), json::parse(kPrev));
    EXPECT_FALSE(out.log.empty());
}

TEST(CniPlugin, AgentRefusalFails) {
    Harness h;
    h.status = 404;
    h.reply_body = R"({"error":"cgroup /p: No such file or directory"})";
    auto out = h.run(add_env(), config_text(R"("runtimeConfig":{"cgroupPath":"/p"},)"));
    EXPECT_EQ(out.exit_code, 1);
    auto error = json::parse(out.output).as_object();
    EXPECT_EQ(error.at("code").as_int64(), kEnrolmentRefused);
    EXPECT_NE(std::string(error.at("details").as_string()).find("No such file"), std::string::npos);
}

TEST(CniPlugin, AddWithoutPrevResultIsAConfigError) {
    Harness h;
    auto out = h.run(add_env(), R"({"cniVersion":"1.0.0","name":"n","type":"meshlane-cni"})");
    EXPECT_EQ(out.exit_code, 1);
    EXPECT_EQ(json::parse(out.output).at("code").as_int64(), kInvalidConfig);
}

TEST(CniPlugin, ExcludedNamespaceAndInjectFalsePassThrough) {
    Harness h;
    auto env = add_env();
    env.args = "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns";
    auto out = h.run(env, config_text(R"("excludeNamespaces":["kube-system"],)"));
    EXPECT_EQ(out.exit_code, 0) << out.output;
    out = h.run(
        add_env(),
        config_text(R"("runtimeConfig":{"podAnnotations":{"sidecar.istio.io/inject":"false"}},)"));
    EXPECT_EQ(out.exit_code, 0) << out.output;
    EXPECT_TRUE(h.calls.empty());
}

TEST(CniPlugin, DelNeverFails) {
    Harness h;
    auto env = add_env();
    env.command = "DEL";
    h.status = 200;
    EXPECT_EQ(h.run(env, config_text()).exit_code, 0);
    EXPECT_EQ(h.calls.back().method, http::verb::delete_);
    EXPECT_EQ(h.calls.back().target, "/v1/workloads/shop.web-0");
    h.down = true;
    auto out = h.run(env, config_text());
    EXPECT_EQ(out.exit_code, 0);
    EXPECT_TRUE(out.output.empty());
    env.netns = "";  // the runtime may call DEL after the netns is gone
    EXPECT_EQ(h.run(env, config_text()).exit_code, 0);
}

TEST(CniPlugin, CheckReportsNotEnrolled) {
    Harness h;
    auto env = add_env();
    env.command = "CHECK";
    h.status = 404;
    auto out = h.run(env, config_text(R"("runtimeConfig":{"cgroupPath":"/p"},)"));
    EXPECT_EQ(out.exit_code, 1);
    EXPECT_EQ(json::parse(out.output).at("code").as_int64(), kNotEnrolled);
    h.status = 200;
    out = h.run(env, config_text(R"("runtimeConfig":{"cgroupPath":"/p"},)"));
    EXPECT_EQ(out.exit_code, 0);
    EXPECT_TRUE(out.output.empty());
}

TEST(CniPlugin, VersionAndUnknownCommand) {
    Harness h;
    auto out = h.run({"VERSION", "", "", "", ""}, "");
    EXPECT_EQ(out.exit_code, 0);
    auto doc = json::parse(out.output).as_object();
    EXPECT_EQ(doc.at("cniVersion").as_string(), "1.0.0");
    EXPECT_EQ(doc.at("supportedVersions").as_array().size(), 4u);
    out = h.run({"BOGUS", "c", "/n", "eth0", ""}, config_text());
    EXPECT_EQ(out.exit_code, 1);
    EXPECT_EQ(json::parse(out.output).at("code").as_int64(), kInvalidEnvironment);
    out = h.run(add_env(), R"({"cniVersion":"9.9.9","name":"n","prevResult":{}})");
    EXPECT_EQ(json::parse(out.output).at("code").as_int64(), kIncompatibleVersion);
}

}  // namespace
}  // namespace meshlane::cni

namespace meshlane::cni {
namespace {

TEST(CniPlugin, DnsCaptureFromProxyConfigAnnotation) {
    // The per-pod form Istio documents (proxy.istio.io/config proxyMetadata), YAML or JSON.
    EXPECT_EQ(dns_capture_from_proxy_config("proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n"),
              true);
    EXPECT_EQ(
        dns_capture_from_proxy_config(
            R"({"proxyMetadata":{"ISTIO_META_DNS_AUTO_ALLOCATE":"true","ISTIO_META_DNS_CAPTURE":"false"}})"),
        false);
    EXPECT_EQ(dns_capture_from_proxy_config("proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: True"),
              true);
    EXPECT_EQ(dns_capture_from_proxy_config("proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: maybe"),
              std::nullopt);
    EXPECT_EQ(dns_capture_from_proxy_config("holdApplicationUntilProxyStarts: true"), std::nullopt);

    const std::string annotations =
        R"("runtimeConfig":{"cgroupPath":"/kubepods/pod1","podAnnotations":{
        "proxy.istio.io/config":"proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n"}},)";
    Harness h;
    auto out = h.run(add_env(), config_text(annotations));
    ASSERT_EQ(out.exit_code, 0) << out.output;
    auto spec = workload_spec_from_json(*h.calls.at(0).body);
    ASSERT_TRUE(spec) << spec.error().message;
    // istio-cni cannot read the pod's resolv.conf: it captures all DNS (CaptureAllDNS).
    EXPECT_EQ(spec->dns_capture, DnsCapture::kAll);
    EXPECT_EQ(spec->dns_port, 15053);
}

}  // namespace
}  // namespace meshlane::cni
