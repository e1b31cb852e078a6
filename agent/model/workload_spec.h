// What an operator asks for when enrolling a workload (a pod: one cgroup v2 + one network
// namespace), parsed and validated without touching the kernel. The same fields travel through
// the CLI flags, the REST JSON body and the persisted state file.
#pragma once

#include <array>
#include <boost/json/value.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/common/result.h"

namespace meshlane {

// An IPv4 or IPv6 prefix. IPv4 is held v4-mapped (::ffff:a.b.c.d) so one LPM trie serves both.
struct Cidr {
    std::array<std::uint8_t, 16> addr{};  // network order, host bits cleared
    std::uint8_t prefix_len = 0;          // of the family's own address: 0..32 or 0..128
    bool is_v4 = false;

    static Result<Cidr> parse(std::string_view text);
    std::string to_string() const;
    // Prefix length counted over the 16-byte v4-mapped form.
    std::uint8_t mapped_prefix_len() const { return is_v4 ? prefix_len + 96 : prefix_len; }
    bool operator==(const Cidr&) const = default;
    // Is the address (as held: host bits cleared) a loopback one: 127.0.0.0/8 or ::1?
    bool is_loopback() const;
    // 127.0.0.1/32: the "localhost" of istio-iptables' rules unless --host-ipv4-loopback-cidr.
    static Cidr localhost_v4();
};

enum class StartupPolicy {
    kRefuse,       // iptables behaviour: nothing reaches the app before the proxy listens
    kPassthrough,  // connections bypass the mesh until the proxy listens (counted, warned)
};
std::string_view to_string(StartupPolicy policy);
Result<StartupPolicy> parse_startup_policy(std::string_view text);

// Istio's DNS proxy capture (ISTIO_META_DNS_CAPTURE / istio-iptables --redirect-dns): port 53,
// UDP and TCP, from the app to the proxy's DNS listener. docs/dns-capture.md.
enum class DnsCapture {
    kOff,
    kNameservers,  // only to dns_servers (istio-init: the pod's /etc/resolv.conf nameservers)
    kAll,          // to any address (--capture-all-dns; what istio-cni does)
};
std::string_view to_string(DnsCapture mode);
Result<DnsCapture> parse_dns_capture(std::string_view text);
// The proxy's DNS listener, as in Istio (IstioAgentDNSListenerPort).
inline constexpr std::uint16_t kDefaultDnsPort = 15053;

struct WorkloadSpec {
    std::string name;
    std::string cgroup_path;  // as given: absolute, or relative to the cgroup2 mount
    std::string netns_path;   // /var/run/netns/X or /proc/PID/ns/net
    std::uint32_t proxy_uid = 1337;
    std::uint32_t proxy_gid = 1337;
    // istio -u 3,4 / -g 1,2: the proxy ids after the first (proxy_uid / proxy_gid). ISTIO_OUTPUT
    // returns all of them; on lo only the first uid's rules are reached (docs/istio-mapping.md).
    std::vector<std::uint32_t> additional_proxy_uids;
    std::vector<std::uint32_t> additional_proxy_gids;
    // Families captured at all (istio-iptables without ip6tables rules leaves IPv6 alone).
    bool capture_ipv4 = true;
    bool capture_ipv6 = true;
    // istio --host-ipv4-loopback-cidr: the IPv4 "localhost" the ISTIO_OUTPUT rules never capture.
    Cidr host_loopback_cidr = Cidr::localhost_v4();
    std::uint16_t outbound_port = 15001;
    std::uint16_t inbound_port = 15006;
    std::vector<std::uint16_t> exclude_outbound_ports;  // istio -o
    std::vector<std::uint16_t> exclude_inbound_ports;   // istio -d (15008/15020/15021/15090 added)
    bool include_all_cidrs = true;                      // istio -i "*"
    std::vector<Cidr> include_cidrs;                    // istio -i CIDR,...
    std::vector<Cidr> exclude_cidrs;                    // istio -x
    bool include_all_inbound_ports = true;              // istio -b "*"
    std::vector<std::uint16_t> include_inbound_ports;   // istio -b P,...
    std::vector<std::uint16_t> include_outbound_ports;  // istio -q
    bool proxy_self_to_inbound = false;                 // see MESHLANE_WL_PROXY_SELF_TO_INBOUND
    StartupPolicy startup_policy = StartupPolicy::kRefuse;
    // sk_msg fast path for app <-> proxy connections (docs/fastpath.md); only takes effect when
    // the agent's kernel self-test passed.
    bool fast_path = false;
    // ... and for proxy <-> proxy connections with another pod on this node that enables it too.
    bool fast_path_proxy_proxy = false;
    DnsCapture dns_capture = DnsCapture::kOff;
    std::uint16_t dns_port = kDefaultDnsPort;
    std::vector<Cidr> dns_servers;  // host addresses (/32, /128); only with kNameservers
    // The Kubernetes pod this workload is, when it came from Kubernetes (meshlane-cni and pod
    // discovery set both from CNI_ARGS K8S_POD_NAMESPACE / K8S_POD_NAME); empty otherwise. They
    // label the workload's metrics (namespace, pod). Both or neither.
    std::string k8s_namespace;
    std::string k8s_pod;

    bool operator==(const WorkloadSpec&) const = default;
};

// Comma-separated uids or gids, e.g. "3,4" (istio -u / -g): at least one, order kept (the first
// one is special on lo), no duplicates. Names `field` in errors.
Result<std::vector<std::uint32_t>> parse_id_list(std::string_view text, std::string_view field);
// "ipv4", "ipv6" or "ipv4,ipv6" -> spec.capture_ipv4 / capture_ipv6.
Status parse_ip_families(std::string_view text, WorkloadSpec& spec);
std::string format_ip_families(const WorkloadSpec& spec);

// Comma-separated ports, e.g. "80,443". Empty string -> empty list. Names `field` in errors.
Result<std::vector<std::uint16_t>> parse_port_list(std::string_view text, std::string_view field);
// Comma-separated CIDRs or "*". Returns nullopt for "*".
Result<std::optional<std::vector<Cidr>>> parse_cidr_list(std::string_view text,
                                                         std::string_view field);
std::string format_port_list(const std::vector<std::uint16_t>& ports);
std::string format_cidr_list(bool all, const std::vector<Cidr>& cidrs);
// Comma-separated IPv4/IPv6 addresses (no prefix), e.g. "10.96.0.10,fd00::a".
Result<std::vector<Cidr>> parse_address_list(std::string_view text, std::string_view field);
std::string format_address_list(const std::vector<Cidr>& hosts);
std::string address_to_string(const Cidr& host);  // "10.96.0.10": the address, no prefix

// Workload names: 1..63 chars of [a-z0-9], '-', '_', '.', starting with a letter or digit
// (a Kubernetes-style name; it becomes a bpffs directory, so no '/' and no "..").
Status validate_name(std::string_view name);
// Field-level checks that need no kernel: name, ports distinct, listener ports not excluded
// from... everything that would make the datapath silently wrong.
Status validate(const WorkloadSpec& spec);

// k8s_namespace / k8s_pod: both or neither, Kubernetes name syntax.
Status validate_pod_identity(const WorkloadSpec& spec);

// Names the fields that differ, for "already enrolled with other settings" errors.
std::vector<std::string> differing_fields(const WorkloadSpec& a, const WorkloadSpec& b);

// JSON form (REST body and state file). Unknown fields and wrong types are errors that name the
// field. Missing optional fields take the defaults above; name, cgroup and netns are required.
boost::json::object to_json(const WorkloadSpec& spec);
Result<WorkloadSpec> workload_spec_from_json(const boost::json::value& json);

}  // namespace meshlane
