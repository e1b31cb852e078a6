// The parts of meshlane-cni that are pure CNI knowledge: the network config a plugin receives on
// stdin, CNI_ARGS, the workload name of a pod, and the enrolment request for it (Istio
// annotations applied). Shared by the plugin (cni/cni_plugin.*) and by the agent's pod
// discovery (agent/workload/discovery.*), which rebuilds what the plugin would have received
// from the runtime's CNI result cache. The configuration keys are documented in cni_plugin.h.
#pragma once

#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/common/result.h"
#include "agent/model/workload_spec.h"

namespace meshlane::cni {

inline constexpr const char* kPluginType = "meshlane-cni";
inline constexpr const char* kDefaultAgentSocket = "/run/meshlane/api.sock";

struct Environment {
    std::string command;       // CNI_COMMAND
    std::string container_id;  // CNI_CONTAINERID
    std::string netns;         // CNI_NETNS
    std::string ifname;        // CNI_IFNAME
    std::string args;          // CNI_ARGS
    std::string path;          // CNI_PATH (only GC requires it; meshlane-cni delegates nothing)
};

// One entry of "cni.dev/valid-attachments" (GC, CNI 1.1).
struct AttachmentKey {
    std::string container_id;
    std::string ifname;
};

struct PluginConfig {
    std::string cni_version = "1.0.0";
    std::string name;
    std::string agent_socket = kDefaultAgentSocket;
    bool fail_open = false;
    std::string cgroup_root;
    // "/pods/{K8S_POD_NAME}": the pod cgroup from CNI_ARGS keys and {CNI_CONTAINERID}, for
    // runtimes that pass no cgroupPath (podman: pods created with --cgroup-parent to match).
    std::string cgroup_template;
    std::vector<std::string> exclude_namespaces;
    unsigned timeout_ms = 10000;
    std::string data_dir = "/var/lib/cni/meshlane";  // see cni/attachment_store.h
    std::vector<AttachmentKey> valid_attachments;    // GC input
    std::optional<boost::json::value> prev_result;
    std::string cgroup;  // from runtimeConfig / args, empty when not given
    std::map<std::string, std::string> annotations;
};

// "A=1;B=2" -> {A:1, B:2}; malformed pairs are skipped (runtimes add their own keys).
std::map<std::string, std::string> parse_cni_args(std::string_view text);

Result<PluginConfig> parse_config(std::string_view stdin_text);

// "<namespace>.<pod>" when CNI_ARGS names the pod and that is a valid workload name; a shortened
// form with a hash suffix when it is too long; "cni-<container id prefix>" without pod names.
std::string workload_name(const std::map<std::string, std::string>& cni_args,
                          const std::string& container_id);

// cgroupTemplate with its {KEY}s replaced by CNI_ARGS values ({CNI_CONTAINERID}: the container
// ID); errors name a key the runtime did not pass.
Result<std::string> expand_cgroup_template(std::string_view text,
                                           const std::map<std::string, std::string>& cni_args,
                                           const std::string& container_id);

// ISTIO_META_DNS_CAPTURE in the proxyMetadata of a proxy.istio.io/config annotation (YAML or
// JSON); nullopt when absent or not a boolean.
std::optional<bool> dns_capture_from_proxy_config(std::string_view config);

// The enrolment request for this pod (annotations applied). nullopt: the pod is passed through
// (excluded namespace, or sidecar injection disabled).
Result<std::optional<WorkloadSpec>> build_spec(const PluginConfig& config, const Environment& env);

// What a runtime (libcni) hands the plugin of type `plugin_type` in the network config list
// `conflist` (a .conflist document): the plugin's entry with the list's cniVersion and name, and
// "runtimeConfig" holding the capability args the entry declares in "capabilities".
// nullopt: no plugin of that type in the list. Errors name what is malformed.
Result<std::optional<std::string>> plugin_stdin_from_list(
    const boost::json::value& conflist, const boost::json::object& capability_args,
    std::string_view plugin_type = kPluginType);

}  // namespace meshlane::cni
