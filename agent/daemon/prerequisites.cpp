#include "agent/daemon/prerequisites.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <string_view>

#include "agent/common/unique_fd.h"
#include "agent/loader/libbpf_log.h"
#include "agent/loader/mounts.h"

namespace meshlane {

namespace {

constexpr const char* kVmlinuxBtf = "/sys/kernel/btf/vmlinux";

// The helpers each program type of bpf/redirect_*.bpf.c calls (keep in step with the sources).
struct HelperUse {
    const char* prog_type_name;
    bpf_prog_type prog_type;
    const char* helper_name;
    bpf_func_id helper;
};

constexpr HelperUse kHelpers[] = {
    {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "get_netns_cookie",
     BPF_FUNC_get_netns_cookie},
    {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "get_current_uid_gid",
     BPF_FUNC_get_current_uid_gid},
    {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "sk_lookup_tcp", BPF_FUNC_sk_lookup_tcp},
    {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "sk_release", BPF_FUNC_sk_release},
    {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "sk_storage_get", BPF_FUNC_sk_storage_get},
    {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "get_socket_cookie",
     BPF_FUNC_get_socket_cookie},
    {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "ktime_get_ns", BPF_FUNC_ktime_get_ns},
    {"sock_ops", BPF_PROG_TYPE_SOCK_OPS, "get_netns_cookie", BPF_FUNC_get_netns_cookie},
    {"sock_ops", BPF_PROG_TYPE_SOCK_OPS, "get_current_uid_gid", BPF_FUNC_get_current_uid_gid},
    {"sock_ops", BPF_PROG_TYPE_SOCK_OPS, "sk_storage_get", BPF_FUNC_sk_storage_get},
    {"sock_ops", BPF_PROG_TYPE_SOCK_OPS, "sock_ops_cb_flags_set", BPF_FUNC_sock_ops_cb_flags_set},
    {"sock_ops", BPF_PROG_TYPE_SOCK_OPS, "sock_map_update", BPF_FUNC_sock_map_update},
    {"cgroup_sockopt", BPF_PROG_TYPE_CGROUP_SOCKOPT, "get_netns_cookie", BPF_FUNC_get_netns_cookie},
    {"cgroup_sockopt", BPF_PROG_TYPE_CGROUP_SOCKOPT, "sk_storage_get", BPF_FUNC_sk_storage_get},
    {"sk_lookup", BPF_PROG_TYPE_SK_LOOKUP, "sk_assign", BPF_FUNC_sk_assign},
    {"sk_lookup", BPF_PROG_TYPE_SK_LOOKUP, "sk_release", BPF_FUNC_sk_release},
};

struct ProgTypeUse {
    const char* name;
    bpf_prog_type type;
};
constexpr ProgTypeUse kProgTypes[] = {
    {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR},
    {"sock_ops", BPF_PROG_TYPE_SOCK_OPS},
    {"cgroup_sockopt", BPF_PROG_TYPE_CGROUP_SOCKOPT},
    {"sk_lookup", BPF_PROG_TYPE_SK_LOOKUP},
    {"sk_msg", BPF_PROG_TYPE_SK_MSG},
};

// Attach types the kernel checks at load time (expected_attach_type); sock_ops has none.
struct AttachUse {
    const char* name;
    bpf_prog_type prog_type;
    bpf_attach_type attach_type;
};
constexpr AttachUse kAttachTypes[] = {
    {"cgroup_inet4_connect", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT},
    {"cgroup_inet6_connect", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_CONNECT},
    {"cgroup_inet4_getpeername", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_GETPEERNAME},
    {"cgroup_inet6_getpeername", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_GETPEERNAME},
    {"cgroup_inet4_getsockname", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_GETSOCKNAME},
    {"cgroup_inet6_getsockname", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_GETSOCKNAME},
    {"cgroup_getsockopt", BPF_PROG_TYPE_CGROUP_SOCKOPT, BPF_CGROUP_GETSOCKOPT},
    {"sk_lookup", BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP},
    {"cgroup_udp4_sendmsg", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_SENDMSG},
    {"cgroup_udp6_sendmsg", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP6_SENDMSG},
    {"cgroup_udp4_recvmsg", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_RECVMSG},
    {"cgroup_udp6_recvmsg", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP6_RECVMSG},
};

struct MapUse {
    const char* name;
    bpf_map_type type;
};
constexpr MapUse kMapTypes[] = {
    {"hash", BPF_MAP_TYPE_HASH},
    {"lpm_trie", BPF_MAP_TYPE_LPM_TRIE},
    {"lru_hash", BPF_MAP_TYPE_LRU_HASH},
    {"percpu_array", BPF_MAP_TYPE_PERCPU_ARRAY},
    {"sk_storage", BPF_MAP_TYPE_SK_STORAGE},
    {"sockmap", BPF_MAP_TYPE_SOCKMAP},
    {"sockhash", BPF_MAP_TYPE_SOCKHASH},
    {"ringbuf", BPF_MAP_TYPE_RINGBUF},
};

std::string helper_key(const HelperUse& use) {
    return std::string("helper.") + use.prog_type_name + "." + use.helper_name;
}

std::vector<std::string> helpers_of(std::string_view prog_type) {
    std::vector<std::string> keys;
    for (const auto& use : kHelpers)
        if (prog_type == use.prog_type_name) keys.push_back(helper_key(use));
    return keys;
}

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

std::string errno_text(int code) {
    std::string text = std::strerror(code);
    if (code == EPERM || code == EACCES) text += " (needs root, or CAP_BPF and CAP_SYS_ADMIN)";
    return text;
}

ProbeResult from_libbpf_probe(const std::string& key, int ret, const std::string& missing_text) {
    if (ret == 1) return {key, true, ""};
    if (ret == 0) return {key, false, missing_text};
    return {key, false, "probe failed: " + errno_text(-ret)};
}

// A two-instruction program (r0 = 1; exit) of the type, loaded with the attach type: the kernel
// rejects an attach type it does not know at load time.
ProbeResult probe_attach_type(const AttachUse& use) {
    const std::string key = std::string("attach.") + use.name;
    const bpf_insn insns[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1},
        {.code = BPF_JMP | BPF_EXIT},
    };
    LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = use.attach_type);
    UniqueFd fd(bpf_prog_load(use.prog_type, nullptr, "GPL", insns, 2, &opts));
    if (fd.valid()) return {key, true, ""};
    const int code = errno;
    if (code == EINVAL) return {key, false, "the kernel does not know this attach type"};
    return {key, false, "probe load failed: " + errno_text(code)};
}

// libbpf's probes read "not permitted" as "not supported" (prog types) or "supported" (helpers):
// find out once whether this process may load programs at all.
std::optional<std::string> load_not_permitted() {
    static const std::optional<std::string> verdict = []() -> std::optional<std::string> {
        const bpf_insn insns[] = {
            {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0},
            {.code = BPF_JMP | BPF_EXIT},
        };
        UniqueFd fd(bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, nullptr, "GPL", insns, 2, nullptr));
        if (fd.valid() || (errno != EPERM && errno != EACCES)) return std::nullopt;
        return "not probed: this process may not load BPF programs: " + errno_text(errno);
    }();
    return verdict;
}

ProbeResult probe_bpf_key(const std::string& key) {
    if (auto denied = load_not_permitted()) return {key, false, *denied};
    for (const auto& use : kProgTypes)
        if (key == std::string("prog_type.") + use.name)
            return from_libbpf_probe(key, libbpf_probe_bpf_prog_type(use.type, nullptr),
                                     "the kernel does not support this program type");
    for (const auto& use : kAttachTypes)
        if (key == std::string("attach.") + use.name) return probe_attach_type(use);
    for (const auto& use : kMapTypes)
        if (key == std::string("map.") + use.name)
            return from_libbpf_probe(key, libbpf_probe_bpf_map_type(use.type, nullptr),
                                     "the kernel does not support this map type");
    for (const auto& use : kHelpers)
        if (key == helper_key(use))
            return from_libbpf_probe(key,
                                     libbpf_probe_bpf_helper(use.prog_type, use.helper, nullptr),
                                     "helper not available to this program type");
    return {key, false, "no probe for this feature"};
}

}  // namespace

const std::vector<Capability>& redirect_capabilities() {
    static const std::vector<Capability> capabilities = {
        {"kernel BTF for CO-RE relocations", {"btf"}},
        {"workload cgroups (cgroup v2)", {"cgroup2"}},
        {"pinned datapath that survives agent restarts (bpffs)", {"bpffs"}},
        {"outbound capture (cgroup connect4/connect6)",
         concat({"prog_type.cgroup_sock_addr", "attach.cgroup_inet4_connect",
                 "attach.cgroup_inet6_connect", "map.hash", "map.lpm_trie", "map.sk_storage",
                 "map.percpu_array"},
                helpers_of("cgroup_sock_addr"))},
        {"original destination for the proxy (sockops + getsockopt SO_ORIGINAL_DST)",
         concat(concat({"prog_type.sock_ops", "prog_type.cgroup_sockopt",
                        "attach.cgroup_getsockopt", "map.lru_hash", "map.sk_storage"},
                       helpers_of("sock_ops")),
                helpers_of("cgroup_sockopt"))},
        {"original peer for the app (getpeername4/6)",
         {"attach.cgroup_inet4_getpeername", "attach.cgroup_inet6_getpeername"}},
        {"original destination as the proxy's local address (getsockname4/6)",
         {"attach.cgroup_inet4_getsockname", "attach.cgroup_inet6_getsockname"}},
        {"inbound capture (sk_lookup to the proxy's listener)",
         concat({"prog_type.sk_lookup", "attach.sk_lookup", "map.sockmap",
                 "helper.sock_ops.sock_map_update"},
                helpers_of("sk_lookup"))},
    };
    return capabilities;
}

bool PrerequisiteReport::all_available() const {
    return std::all_of(probes.begin(), probes.end(), [](const auto& p) { return p.available; });
}

std::vector<const ProbeResult*> PrerequisiteReport::missing() const {
    std::vector<const ProbeResult*> out;
    for (const auto& p : probes)
        if (!p.available) out.push_back(&p);
    return out;
}

std::map<std::string, bool> PrerequisiteReport::features() const {
    std::map<std::string, bool> out;
    for (const auto& p : probes) out[p.name] = p.available;
    return out;
}

std::vector<std::string> PrerequisiteReport::working_capabilities() const {
    const auto available = features();
    std::vector<std::string> out;
    for (const auto& capability : redirect_capabilities()) {
        bool works =
            std::all_of(capability.needs.begin(), capability.needs.end(), [&](const auto& k) {
                auto it = available.find(k);
                return it != available.end() && it->second;
            });
        if (works) out.push_back(capability.name);
    }
    return out;
}

std::vector<std::string> PrerequisiteReport::broken_capabilities() const {
    const auto working = working_capabilities();
    std::vector<std::string> out;
    for (const auto& capability : redirect_capabilities())
        if (std::find(working.begin(), working.end(), capability.name) == working.end())
            out.push_back(capability.name);
    return out;
}

std::string PrerequisiteReport::describe() const {
    std::string text;
    for (const auto* p : missing()) text += "  missing: " + p->name + ": " + p->detail + "\n";
    for (const auto& name : broken_capabilities()) text += "  does not work: " + name + "\n";
    for (const auto& name : working_capabilities()) text += "  still works: " + name + "\n";
    return text;
}

ProbeEnvironment kernel_probe_environment(const std::string& bpffs_wanted) {
    ProbeEnvironment environment;
    environment.btf_probe = []() -> ProbeResult {
        if (::access(kVmlinuxBtf, R_OK) == 0) return {"btf", true, ""};
        return {"btf", false,
                std::string(kVmlinuxBtf) + ": " + std::strerror(errno) +
                    " (kernel built without CONFIG_DEBUG_INFO_BTF)"};
    };
    environment.cgroup2_probe = []() -> ProbeResult {
        auto mount = cgroup2_mount();
        if (mount) return {"cgroup2", true, ""};
        return {"cgroup2", false, mount.error().message};
    };
    environment.bpffs_probe = [bpffs_wanted]() -> ProbeResult {
        auto mount = ensure_bpffs(bpffs_wanted);
        if (mount) return {"bpffs", true, ""};
        return {"bpffs", false, mount.error().message};
    };
    environment.bpf_probe = probe_bpf_key;
    return environment;
}

PrerequisiteReport probe_prerequisites(const ProbeEnvironment& environment) {
    PrerequisiteReport report;
    std::set<std::string> done;
    std::vector<std::vector<std::string>> all_needs;
    for (const auto& capability : redirect_capabilities()) all_needs.push_back(capability.needs);
    for (const auto& feature : agent_features()) all_needs.push_back(feature.needs);
    for (const auto& needs : all_needs) {
        for (const auto& key : needs) {
            if (!done.insert(key).second) continue;
            if (key == "btf")
                report.probes.push_back(environment.btf_probe());
            else if (key == "cgroup2")
                report.probes.push_back(environment.cgroup2_probe());
            else if (key == "bpffs")
                report.probes.push_back(environment.bpffs_probe());
            else
                report.probes.push_back(environment.bpf_probe(key));
        }
    }
    return report;
}

const std::vector<FeatureDefinition>& agent_features() {
    static const std::vector<FeatureDefinition> features = [] {
        std::vector<std::string> redirect_needs;
        for (const auto& capability : redirect_capabilities())
            for (const auto& key : capability.needs)
                if (std::find(redirect_needs.begin(), redirect_needs.end(), key) ==
                    redirect_needs.end())
                    redirect_needs.push_back(key);
        return std::vector<FeatureDefinition>{
            {kFeatureRedirect, true,
             "interception: connect4/6, sockops, getsockopt SO_ORIGINAL_DST, sk_lookup",
             redirect_needs},
            {kFeatureObserveConnect,
             false,
             "connect latency, failures, resets, retransmits (tracepoints)",
             {"btf", "map.ringbuf", "map.hash"}},
            {kFeatureObserveDrops,
             false,
             "kernel drops by reason (skb:kfree_skb)",
             {"btf", "map.ringbuf"}},
            {kFeatureFastPath,
             false,
             "sk_msg acceleration between local sockets",
             {"prog_type.sock_ops", "prog_type.sk_msg", "map.sockhash"}},
            {kFeatureDnsCapture,
             false,
             "DNS capture to the proxy's DNS listener (sendmsg/recvmsg, docs/dns-capture.md)",
             {"prog_type.cgroup_sock_addr", "attach.cgroup_udp4_sendmsg",
              "attach.cgroup_udp6_sendmsg", "attach.cgroup_udp4_recvmsg",
              "attach.cgroup_udp6_recvmsg", "map.sk_storage"}},
        };
    }();
    return features;
}

std::set<std::string> features_forced_off(std::vector<std::string>* unknown) {
    std::set<std::string> out;
    const char* env = std::getenv("MESHLANE_TEST_DISABLE_FEATURE");
    if (env == nullptr) return out;
    std::string_view text(env);
    while (!text.empty()) {
        const auto comma = text.find(',');
        std::string name(text.substr(0, comma));
        if (!name.empty()) {
            const bool known = std::any_of(agent_features().begin(), agent_features().end(),
                                           [&](const auto& f) { return f.name == name; });
            if (known)
                out.insert(name);
            else if (unknown != nullptr)
                unknown->push_back(name);
        }
        if (comma == std::string_view::npos) break;
        text.remove_prefix(comma + 1);
    }
    return out;
}

std::string forced_probe_failure(const std::string& feature) {
    // r0 = r2 with r2 never written: the verifier rejects it ("R2 !read_ok").
    const bpf_insn insns[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_X, .dst_reg = BPF_REG_0, .src_reg = BPF_REG_2},
        {.code = BPF_JMP | BPF_EXIT},
    };
    std::string log(4096, '\0');
    LIBBPF_OPTS(bpf_prog_load_opts, opts, .log_level = 1, .log_size = (unsigned)log.size(),
                .log_buf = log.data());
    const std::string program = ("probe_" + feature).substr(0, 15);  // BPF_OBJ_NAME_LEN - 1
    UniqueFd fd(
        bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, program.c_str(), "GPL", insns, 2, &opts));
    const int code = errno;
    const std::string prefix = "probe forced to fail by MESHLANE_TEST_DISABLE_FEATURE: ";
    if (fd.valid()) return prefix + "program " + program + " was unexpectedly accepted";
    log.resize(std::strlen(log.c_str()));
    std::string text =
        prefix + "program " + program + " was rejected by the kernel (" + std::strerror(code) + ")";
    if (!log.empty()) text += "; verifier log tail:\n" + last_lines(log, kVerifierLogTailLines);
    return text;
}

std::map<std::string, FeatureState> evaluate_features(
    const PrerequisiteReport& report, const std::set<std::string>& forced_off,
    const std::function<std::string(const std::string&)>& forced_reason) {
    std::map<std::string, FeatureState> states;
    for (const auto& feature : agent_features()) {
        FeatureState state;
        state.essential = feature.essential;
        std::string missing;
        for (const auto& key : feature.needs) {
            auto it = std::find_if(report.probes.begin(), report.probes.end(),
                                   [&](const ProbeResult& p) { return p.name == key; });
            if (it == report.probes.end() || it->available) continue;
            missing += (missing.empty() ? "" : "; ") + key + ": " + it->detail;
        }
        if (forced_off.count(feature.name))
            state.reason = forced_reason(feature.name);
        else if (!missing.empty())
            state.reason = "missing kernel features: " + missing;
        state.enabled = state.reason.empty();
        states[feature.name] = state;
    }
    return states;
}

std::string describe_features(const std::map<std::string, FeatureState>& states) {
    std::string text;
    for (const auto& [name, state] : states) {
        text += "  " + name + (state.enabled ? ": on" : ": OFF");
        if (!state.enabled) text += " (" + state.reason + ")";
        text += "\n";
    }
    return text;
}

}  // namespace meshlane
