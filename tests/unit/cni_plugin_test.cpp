// meshlane-cni without a runtime: config parsing, naming, Istio annotations, and the ADD / DEL /
// CHECK / STATUS / GC / VERSION flows against a fake agent; the agent client's reply parser.
#include "cni/cni_plugin.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <filesystem>

#include "cni/attachment_store.h"

namespace meshlane::cni {
namespace {

namespace json = boost::json;
using Verb = Method;

struct Call {
    Verb method;
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
    Result<AgentReply> request(Verb method, const std::string& target,
                               const std::optional<json::value>& body) override {
        calls->push_back({method, target, body});
        if (down) return Error{ECONNREFUSED, "connect /run/meshlane/api.sock: Connection refused"};
        return AgentReply{status, reply_body};
    }
};

const char* kPrev =
    R"({"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.200.1.5/24","interface":0}]})";

// Attachment records go to a directory of this test process, removed at exit.
const std::string& data_dir() {
    static const std::string dir = [] {
        auto path = std::filesystem::temp_directory_path() /
                    ("meshlane-cni-test-" + std::to_string(::getpid()));
        std::filesystem::create_directories(path);
        static struct Remover {
            std::filesystem::path path;
            ~Remover() {
                std::error_code ec;
                std::filesystem::remove_all(path, ec);
            }
        } remover{path};
        return path.string();
    }();
    return dir;
}

std::string config_text(const std::string& extra = "", const std::string& version = "1.0.0") {
    return R"({"cniVersion":")" + version + R"(","name":"k8s-pod-network","type":"meshlane-cni",)" +
           R"("dataDir":")" + data_dir() + R"(",)" + extra + R"("prevResult":)" + kPrev + "}";
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

std::int64_t code_of(const Outcome& out) {
    EXPECT_EQ(out.exit_code, 1) << out.output;
    if (out.output.empty()) return 0;
    return json::parse(out.output).at("code").as_int64();
}

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
    EXPECT_EQ(h.calls[0].method, Verb::kPost);
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

TEST(CniPlugin, CgroupTemplateNamesThePodCgroupFromCniArgs) {
    Harness h;
    auto out = h.run(
        add_env(), config_text(R"("cgroupTemplate":"/pods/{K8S_POD_NAMESPACE}/{K8S_POD_NAME}",)"));
    ASSERT_EQ(out.exit_code, 0) << out.output;
    EXPECT_EQ(workload_spec_from_json(*h.calls.at(0).body)->cgroup_path, "pods/shop/web-0");
    // The runtime's cgroupPath wins over the template.
    out = h.run(add_env(), config_text(R"("cgroupTemplate":"/pods/{K8S_POD_NAME}",)"
                                       R"("runtimeConfig":{"cgroupPath":"/kubepods/p9"},)"));
    EXPECT_EQ(workload_spec_from_json(*h.calls.at(1).body)->cgroup_path, "kubepods/p9");
    out = h.run(add_env(), config_text(R"("cgroupTemplate":"/pods/{K8S_POD_UIDX}",)"));
    EXPECT_EQ(code_of(out), kInvalidConfig);
    EXPECT_NE(out.output.find("K8S_POD_UIDX"), std::string::npos);
    EXPECT_EQ(expand_cgroup_template("/c/{CNI_CONTAINERID}", {}, "abc").value(), "/c/abc");
    EXPECT_FALSE(expand_cgroup_template("/c/{X}/..", {{"X", ".."}}, "a"));
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
    EXPECT_EQ(h.calls.back().method, Verb::kDelete);
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
    EXPECT_EQ(doc.at("cniVersion").as_string(), "1.1.0");
    EXPECT_EQ(doc.at("supportedVersions"),
              json::parse(R"(["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"])"));
    // The output names the version the runtime asked in.
    out = h.run({"VERSION", "", "", "", ""}, R"({"cniVersion":"0.4.0"})");
    EXPECT_EQ(json::parse(out.output).at("cniVersion").as_string(), "0.4.0");
    out = h.run({"BOGUS", "c", "/n", "eth0", ""}, config_text());
    EXPECT_EQ(out.exit_code, 1);
    EXPECT_EQ(json::parse(out.output).at("code").as_int64(), kInvalidEnvironment);
    out = h.run(add_env(), R"({"cniVersion":"9.9.9","name":"n","prevResult":{}})");
    EXPECT_EQ(json::parse(out.output).at("code").as_int64(), kIncompatibleVersion);
    EXPECT_TRUE(h.calls.empty());
}

TEST(CniPlugin, EnvironmentErrorsAreCode4AndNameTheVariable) {
    Harness h;
    auto env = add_env();
    env.ifname = "";
    auto out = h.run(env, config_text());
    EXPECT_EQ(code_of(out), kInvalidEnvironment);
    EXPECT_NE(out.output.find("CNI_IFNAME"), std::string::npos) << out.output;
    env = add_env();
    env.command = "DEL";
    env.container_id = "";
    out = h.run(env, config_text());
    EXPECT_EQ(code_of(out), kInvalidEnvironment);
    EXPECT_NE(out.output.find("CNI_CONTAINERID"), std::string::npos) << out.output;
    env = add_env();
    env.container_id = "-starts-with-dash";
    EXPECT_EQ(code_of(h.run(env, config_text())), kInvalidEnvironment);
    env = add_env();
    env.ifname = "a-name-too-long-0";
    EXPECT_EQ(code_of(h.run(env, config_text())), kInvalidEnvironment);
    env.ifname = "eth:0";
    EXPECT_EQ(code_of(h.run(env, config_text())), kInvalidEnvironment);
    env = add_env();
    env.command = "GC";  // GC needs CNI_PATH
    EXPECT_EQ(code_of(h.run(env, config_text("", "1.1.0"))), kInvalidEnvironment);
    EXPECT_TRUE(h.calls.empty());
}

TEST(CniPlugin, ConfigErrorsAndVersionGates) {
    Harness h;
    auto env = add_env();
    EXPECT_EQ(code_of(h.run(env, "not json")), kDecodeFailure);
    EXPECT_EQ(code_of(h.run(env, R"({"cniVersion":"1.0.0","prevResult":{}})")), kInvalidConfig);
    EXPECT_EQ(code_of(h.run(env, R"({"cniVersion":"1.0.0","name":"a/b"})")), kInvalidConfig);
    EXPECT_EQ(code_of(h.run(env, R"({"name":"n","prevResult":{}})")), kIncompatibleVersion);
    EXPECT_EQ(code_of(h.run(env, R"({"cniVersion":"one","name":"n"})")), kIncompatibleVersion);
    EXPECT_EQ(code_of(h.run(env, config_text(R"("failOpen":"yes",)"))), kInvalidConfig);
    // CHECK came with 0.4.0, STATUS and GC with 1.1.0.
    env.command = "CHECK";
    EXPECT_EQ(code_of(h.run(env, config_text("", "0.3.1"))), kIncompatibleVersion);
    env.command = "STATUS";
    EXPECT_EQ(code_of(h.run(env, config_text("", "1.0.0"))), kIncompatibleVersion);
    env.command = "GC";
    env.path = "/opt/cni/bin";
    EXPECT_EQ(code_of(h.run(env, config_text("", "1.0.0"))), kIncompatibleVersion);
    EXPECT_TRUE(h.calls.empty());
}

TEST(CniPlugin, EveryVersionAddsAndErrorsSpeakTheConfigVersion) {
    for (const char* version : kSupportedVersions) {
        Harness h;
        auto out =
            h.run(add_env(), config_text(R"("runtimeConfig":{"cgroupPath":"/p"},)", version));
        EXPECT_EQ(out.exit_code, 0) << version << ": " << out.output;
        h.down = true;
        out = h.run(add_env(), config_text(R"("runtimeConfig":{"cgroupPath":"/p"},)", version));
        EXPECT_EQ(code_of(out), kTryAgainLater);
        EXPECT_EQ(json::parse(out.output).at("cniVersion").as_string(), version);
    }
}

TEST(CniPlugin, PrevResultIsPassedThroughUnchanged) {
    Harness h;
    const std::string prev =
        R"({"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mac":"0a:58:0a:f4:01:05",)"
        R"("sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.244.1.5/24","gateway":)"
        R"("10.244.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{},"x-extra":[1,2.5]})";
    std::string input = R"({"cniVersion":"1.1.0","name":"n","type":"meshlane-cni","dataDir":")" +
                        data_dir() + R"(","runtimeConfig":{"cgroupPath":"/p"},"prevResult":)" +
                        prev + "}";
    auto out = h.run(add_env(), input);
    ASSERT_EQ(out.exit_code, 0) << out.output;
    EXPECT_EQ(json::parse(out.output), json::parse(prev));
}

TEST(CniPlugin, StatusAsksTheAgent) {
    Harness h;
    auto env = Environment{"STATUS", "", "", "", "", "/opt/cni/bin"};
    auto out = h.run(env, config_text("", "1.1.0"));
    EXPECT_EQ(out.exit_code, 0) << out.output;
    EXPECT_TRUE(out.output.empty());
    EXPECT_EQ(h.calls.back().target, "/v1/health");
    h.down = true;
    EXPECT_EQ(code_of(h.run(env, config_text("", "1.1.0"))), kPluginNotAvailable);
    out = h.run(env, config_text(R"("failOpen":true,)", "1.1.0"));
    EXPECT_EQ(out.exit_code, 0) << out.output;
}

Environment add_env_for(const std::string& container, const std::string& pod) {
    return {"ADD",
            container,
            "/var/run/netns/" + container,
            "eth0",
            "K8S_POD_NAMESPACE=gc;K8S_POD_NAME=" + pod,
            "/opt/cni/bin"};
}

std::string gc_config(const std::string& valid) {
    return R"({"cniVersion":"1.1.0","name":"gc-net","type":"meshlane-cni","dataDir":")" +
           data_dir() + R"(","cni.dev/valid-attachments":)" + valid + "}";
}

TEST(CniPlugin, GcUnenrollsWhatTheRuntimeNoLongerKnows) {
    Harness h;
    const std::string add_config =
        R"({"cniVersion":"1.1.0","name":"gc-net","type":"meshlane-cni","dataDir":")" + data_dir() +
        R"(","runtimeConfig":{"cgroupPath":"/p"},"prevResult":{}})";
    ASSERT_EQ(h.run(add_env_for("keep1", "a"), add_config).exit_code, 0);
    ASSERT_EQ(h.run(add_env_for("gone1", "b"), add_config).exit_code, 0);
    AttachmentStore store(data_dir(), "gc-net");
    ASSERT_EQ(store.list().size(), 2u);

    Environment gc{"GC", "", "", "", "", "/opt/cni/bin"};
    const std::string valid = R"([{"containerID":"keep1","ifname":"eth0"}])";
    h.down = true;  // errors are reported, the record kept for the next GC
    auto out = h.run(gc, gc_config(valid));
    EXPECT_EQ(code_of(out), kTryAgainLater);
    EXPECT_EQ(store.list().size(), 2u);

    h.down = false;
    h.calls.clear();
    h.status = 200;
    out = h.run(gc, gc_config(valid));
    EXPECT_EQ(out.exit_code, 0) << out.output;
    EXPECT_TRUE(out.output.empty());
    ASSERT_EQ(h.calls.size(), 1u);
    EXPECT_EQ(h.calls[0].method, Verb::kDelete);
    EXPECT_EQ(h.calls[0].target, "/v1/workloads/gc.b");
    ASSERT_EQ(store.list().size(), 1u);
    EXPECT_EQ(store.list()[0].container_id, "keep1");

    // DEL finds the workload from the record (here: without CNI_ARGS) and forgets it.
    auto del = add_env_for("keep1", "a");
    del.command = "DEL";
    del.args = "";
    h.calls.clear();
    EXPECT_EQ(h.run(del, add_config).exit_code, 0);
    EXPECT_EQ(h.calls.at(0).target, "/v1/workloads/gc.a");
    EXPECT_TRUE(store.list().empty());
    EXPECT_EQ(code_of(h.run(gc, gc_config(R"({"containerID":"x"})"))), kInvalidConfig);
}

TEST(AgentClient, ParsesReplies) {
    auto reply = parse_http_reply(
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}");
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(reply->status, 201u);
    EXPECT_EQ(reply->body, "{}");
    reply = parse_http_reply(
        "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}"
        "\r\n0\r\n\r\n");
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(reply->status, 404u);
    EXPECT_EQ(reply->body, R"({"a":1})");
    reply = parse_http_reply("HTTP/1.0 200 OK\r\n\r\nuntil close");
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->body, "until close");
    EXPECT_FALSE(parse_http_reply("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"));
    EXPECT_FALSE(parse_http_reply("HTTP/1.1 200 OK\r\nContent-Le"));
    EXPECT_FALSE(parse_http_reply("SSH-2.0-OpenSSH\r\n\r\n"));
}

TEST(AgentClient, UnreachableSocketIsATransportError) {
    auto reply = unix_http_request(data_dir() + "/no-agent.sock", Method::kGet, "/v1/health", "",
                                   std::chrono::milliseconds(500));
    ASSERT_FALSE(reply);
    EXPECT_EQ(reply.error().code, ENOENT);
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
