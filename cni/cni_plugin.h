// meshlane-cni: a chained CNI plugin (CNI spec 1.1; configs 0.3.0 to 1.1.0) that enrolls a pod
// with the node's meshlane agent on ADD and unenrolls it on DEL, through the agent's unix socket.
// CHECK asks the agent whether the pod is still enrolled, STATUS whether the agent answers, GC
// unenrolls the pods of attachments the runtime no longer lists. Errors are the spec's error
// documents with its codes (cni/README.md has the table, tests/data/cni/ the spec cases).
//
// Everything here is pure (environment, stdin and the agent are inputs; the attachment records
// live in the configured dataDir), so it is unit-tested without a runtime; cni/main.cpp only
// wires it to the process.
//
// Inputs, per the CNI spec and conventions:
//   CNI_COMMAND ADD|DEL|CHECK|STATUS|GC|VERSION, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH,
//   CNI_ARGS "K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;..." (set by the kubelet / CRI runtime).
//   stdin: the network config with "prevResult" (passed through unchanged on ADD) and:
//     "agentSocket"  the agent's API socket (default /run/meshlane/api.sock)
//     "failOpen"     false (default): ADD fails the sandbox when the agent cannot enroll the pod;
//                    true: the pod starts uncaptured, the failure is only logged
//     "cgroupTemplate" pod cgroup from CNI_ARGS, e.g. "/pods/{K8S_POD_NAME}" (see below)
//     "cgroupRoot"   fallback cgroup: <cgroupRoot>/<CNI_CONTAINERID> (see pod cgroup below)
//     "excludeNamespaces" pods of these Kubernetes namespaces are passed through (kube-system…)
//     "timeoutMs"    agent request timeout (default 10000)
//     "dataDir"      where attachments are recorded for GC (default /var/lib/cni/meshlane)
//     "runtimeConfig": {"cgroupPath": ..., "podAnnotations": {...}}  (capability args)
//     "args": {"cni": {"cgroup": ..., "podAnnotations": {...}}}       (the "args" convention)
//   The pod cgroup, first found wins: runtimeConfig.cgroupPath (the CNI "cgroupPath" capability,
//   which containerd fills with the sandbox's cgroup parent, i.e. the pod cgroup),
//   runtimeConfig.cgroup, args.cni.cgroup, cgroupTemplate expanded ({KEY}: the CNI_ARGS value,
//   {CNI_CONTAINERID}), then cgroupRoot + "/" + CNI_CONTAINERID.
//   Istio annotations honoured (same meaning as with istio-cni / istio-iptables):
//     traffic.sidecar.istio.io/excludeOutboundPorts, excludeInboundPorts, includeInboundPorts,
//     includeOutboundPorts, includeOutboundIPRanges, excludeOutboundIPRanges;
//     sidecar.istio.io/inject: "false" passes the pod through;
//     proxy.istio.io/config with proxyMetadata ISTIO_META_DNS_CAPTURE "true": DNS capture of all
//     port-53 traffic (dns_capture "all"), as istio-cni does.
#pragma once

#include <boost/json/value.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/common/result.h"
#include "cni/agent_client.h"
#include "cni/config/cni_config.h"

namespace meshlane::cni {

// CNI error codes (SPEC.md, section 5 "Error"); 100+ are plugin-specific.
enum ErrorCode : int {
    kIncompatibleVersion = 1,
    kInvalidEnvironment = 4,
    kIoFailure = 5,
    kDecodeFailure = 6,
    kInvalidConfig = 7,
    kTryAgainLater = 11,
    kPluginNotAvailable = 50,  // STATUS: cannot service ADD
    kEnrolmentRefused = 100,
    kNotEnrolled = 101,
};

// The spec versions this plugin speaks, oldest first.
inline constexpr const char* kSupportedVersions[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
inline constexpr const char* kLatestVersion = "1.1.0";

// The agent, as the plugin sees it; the real one talks to the unix socket.
class AgentClient {
  public:
    virtual ~AgentClient() = default;
    virtual Result<AgentReply> request(Method method, const std::string& target,
                                       const std::optional<boost::json::value>& body) = 0;
};

struct Outcome {
    int exit_code = 0;
    std::string output;            // stdout: a result, a version document, or an error document
    std::vector<std::string> log;  // stderr lines
};

// Runs one CNI command. `client_for` builds the agent client from the parsed config. Checks run
// in the order of the reference plugins' skeleton (containernetworking/cni pkg/skel): the
// environment (code 4), the config's JSON (6), its network name (7), its cniVersion (1), the
// version the command needs (CHECK >= 0.4.0, STATUS and GC >= 1.1.0: code 1), then the command.
Outcome run(const Environment& env, std::string_view stdin_text,
            const std::function<std::unique_ptr<AgentClient>(const PluginConfig&)>& client_for);

std::string error_document(const std::string& cni_version, int code, const std::string& msg,
                           const std::string& details = "");

}  // namespace meshlane::cni
