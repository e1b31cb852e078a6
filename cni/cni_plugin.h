// meshlane-cni: a chained CNI plugin (CNI spec 1.0; 0.3.x/0.4.0 accepted) that enrolls a pod with
// the node's meshlane agent on ADD and unenrolls it on DEL, through the agent's unix socket.
//
// Everything here is pure (environment, stdin and the agent are inputs), so it is unit-tested
// without a runtime; cni/main.cpp only wires it to the process.
//
// Inputs, per the CNI spec and conventions:
//   CNI_COMMAND ADD|DEL|CHECK|VERSION, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
//   CNI_ARGS "K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;..." (set by the kubelet / CRI runtime).
//   stdin: the network config with "prevResult" (passed through unchanged on ADD) and:
//     "agentSocket"  the agent's API socket (default /run/meshlane/api.sock)
//     "failOpen"     false (default): ADD fails the sandbox when the agent cannot enroll the pod;
//                    true: the pod starts uncaptured, the failure is only logged
//     "cgroupRoot"   fallback cgroup: <cgroupRoot>/<CNI_CONTAINERID> (see pod cgroup below)
//     "excludeNamespaces" pods of these Kubernetes namespaces are passed through (kube-system…)
//     "timeoutMs"    agent request timeout (default 10000)
//     "runtimeConfig": {"cgroupPath": ..., "podAnnotations": {...}}  (capability args)
//     "args": {"cni": {"cgroup": ..., "podAnnotations": {...}}}       (the "args" convention)
//   The pod cgroup, first found wins: runtimeConfig.cgroupPath (the CNI "cgroupPath" capability,
//   which containerd fills with the sandbox's cgroup parent, i.e. the pod cgroup),
//   runtimeConfig.cgroup, args.cni.cgroup, then cgroupRoot + "/" + CNI_CONTAINERID.
//   Istio annotations honoured (same meaning as with istio-cni / istio-iptables):
//     traffic.sidecar.istio.io/excludeOutboundPorts, excludeInboundPorts, includeInboundPorts,
//     includeOutboundPorts, includeOutboundIPRanges, excludeOutboundIPRanges;
//     sidecar.istio.io/inject: "false" passes the pod through;
//     proxy.istio.io/config with proxyMetadata ISTIO_META_DNS_CAPTURE "true": DNS capture of all
//     port-53 traffic (dns_capture "all"), as istio-cni does.
#pragma once

#include <boost/beast/http/verb.hpp>
#include <boost/json/value.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/common/result.h"
#include "api/rest/unix_http_client.h"
#include "cni/cni_config.h"

namespace meshlane::cni {

// CNI error codes (spec section "Error"); 100+ are plugin-specific.
enum ErrorCode : int {
    kIncompatibleVersion = 1,
    kInvalidEnvironment = 4,
    kIoFailure = 5,
    kDecodeFailure = 6,
    kInvalidConfig = 7,
    kTryAgainLater = 11,
    kEnrolmentRefused = 100,
    kNotEnrolled = 101,
};

// The agent, as the plugin sees it; the real one talks to the unix socket.
class AgentClient {
  public:
    virtual ~AgentClient() = default;
    virtual Result<rest::HttpReply> request(boost::beast::http::verb method,
                                            const std::string& target,
                                            const std::optional<boost::json::value>& body) = 0;
};

struct Outcome {
    int exit_code = 0;
    std::string output;            // stdout: a result, a version document, or an error document
    std::vector<std::string> log;  // stderr lines
};

// Runs one CNI command. `client_for` builds the agent client from the parsed config.
Outcome run(const Environment& env, std::string_view stdin_text,
            const std::function<std::unique_ptr<AgentClient>(const PluginConfig&)>& client_for);

std::string error_document(const std::string& cni_version, int code, const std::string& msg,
                           const std::string& details = "");

}  // namespace meshlane::cni
