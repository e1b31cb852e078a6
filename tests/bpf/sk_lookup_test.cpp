// The real inbound capture program (bpf/redirect_inbound.bpf.c, redirect_sk_lookup) run with
// BPF_PROG_RUN on crafted sk_lookup contexts: no namespace, no attach, no traffic. The kernel's
// bpf_prog_test_run_sk_lookup (net/bpf/test_run.c, 5.15+) builds the lookup context from a
// struct bpf_sk_lookup, returns the program's verdict as retval and, when the program selected
// a socket, that socket's cookie in the context. Every verdict and counter is compared with the
// host build of inbound_decide (include/meshlane/redirect_rules.h). Root only.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "meshlane/redirect_abi.h"
#include "meshlane/redirect_rules.h"
#include "redirect_inbound.skel.h"

namespace {

constexpr std::uint32_t kWorkload = 3;
constexpr std::uint32_t kMaxWorkloads = 4;  // maps sized small: the test owns them
constexpr std::uint16_t kInboundPort = MESHLANE_DEFAULT_INBOUND_PORT;
constexpr std::uint16_t kAppPort = 8080;
constexpr std::uint16_t kUserExcludedPort = 8081;  // --exclude-inbound-ports
// Addresses only written into crafted contexts, never used for traffic (RFC 5737 / RFC 3849).
constexpr const char* kRemoteV4 = "192.0.2.10";
constexpr const char* kPodV4 = "198.51.100.7";
constexpr const char* kRemoteV6 = "2001:db8::10";

class Fd {
  public:
    explicit Fd(int fd = -1) : fd_(fd) {}
    Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Fd& operator=(Fd&& other) noexcept {
        std::swap(fd_, other.fd_);
        return *this;
    }
    ~Fd() {
        if (fd_ >= 0) ::close(fd_);
    }
    int get() const { return fd_; }

  private:
    int fd_;
};

// A listening TCP socket on loopback (port chosen by the kernel), like the proxy's inbound
// listener. No SO_REUSEPORT: test_run refuses to select a reuseport socket (EOPNOTSUPP).
Fd listen_on_loopback(int family) {
    Fd fd(::socket(family, SOCK_STREAM, 0));
    if (fd.get() < 0) return fd;
    sockaddr_storage addr{};
    socklen_t len;
    if (family == AF_INET) {
        auto* in = reinterpret_cast<sockaddr_in*>(&addr);
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof(sockaddr_in);
    } else {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
        in6->sin6_family = AF_INET6;
        in6->sin6_addr = in6addr_loopback;
        len = sizeof(sockaddr_in6);
    }
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        ::listen(fd.get(), 4) != 0)
        return Fd();
    return fd;
}

std::uint64_t socket_cookie(int fd) {
    std::uint64_t cookie = 0;
    socklen_t len = sizeof cookie;
    if (::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0) return 0;
    return cookie;
}

// One crafted lookup: a SYN from `src` to local port `port`.
struct Lookup {
    int family = AF_INET;
    std::string src = kRemoteV4;
    std::uint16_t port = kAppPort;
    std::uint32_t protocol = IPPROTO_TCP;
};

struct Outcome {
    std::uint32_t verdict;  // SK_PASS / SK_DROP
    std::uint64_t cookie;   // the selected socket, 0 when none
};

class BpfSkLookup : public ::testing::Test {
  protected:
    void SetUp() override {
        if (::geteuid() != 0) GTEST_SKIP() << "BPF_PROG_RUN needs root";
        skel_ = redirect_inbound_bpf::open();
        ASSERT_NE(skel_, nullptr) << "open redirect_inbound: " << std::strerror(errno);
        // The maps are declared LIBBPF_PIN_BY_NAME (shared with the agent's other objects).
        // Clearing the pin path keeps every map private to this test: nothing is pinned, nothing
        // of a running agent is reused.
        bpf_map* map;
        bpf_object__for_each_map(map, skel_->obj) ASSERT_EQ(bpf_map__set_pin_path(map, nullptr), 0);
        bpf_map__set_max_entries(skel_->maps.workload_by_netns, kMaxWorkloads);
        bpf_map__set_max_entries(skel_->maps.inbound_listener,
                                 kMaxWorkloads * MESHLANE_LISTENER_SLOTS);
        bpf_map__set_max_entries(skel_->maps.redirect_counters,
                                 kMaxWorkloads * MESHLANE_REDIRECT_COUNTER_STRIDE);
        bpf_map__set_max_entries(skel_->maps.orig_dst_by_tuple, 16);
        // As the agent's attach_workload sets them (agent/loader/redirect_datapath.cpp).
        skel_->rodata->workload_id = kWorkload;
        skel_->rodata->netns_cookie = netns_cookie_;
        ASSERT_EQ(redirect_inbound_bpf::load(skel_), 0) << "load redirect_inbound";
        for (const auto* m : {skel_->maps.workload_by_netns, skel_->maps.inbound_listener})
            ASSERT_FALSE(bpf_map__is_pinned(m));
    }
    void TearDown() override { redirect_inbound_bpf::destroy(skel_); }

    // workload_by_netns[netns cookie], as RedirectDatapath::activate writes it.
    void activate(std::uint32_t flags) {
        workload_config config{};
        config.workload_id = kWorkload;
        config.flags = flags;
        config.proxy_uid = MESHLANE_DEFAULT_PROXY_UID;
        config.proxy_gid = MESHLANE_DEFAULT_PROXY_UID;
        config.outbound_port = MESHLANE_DEFAULT_OUTBOUND_PORT;
        config.inbound_port = kInboundPort;
        ASSERT_EQ(bpf_map_update_elem(bpf_map__fd(skel_->maps.workload_by_netns), &netns_cookie_,
                                      &config, BPF_ANY),
                  0);
    }

    void port_rule(std::uint16_t port, std::uint8_t kind, bool present) {
        port_rule_key key{};
        key.workload_id = kWorkload;
        key.port = port;
        key.kind = kind;
        const int fd = bpf_map__fd(skel_->maps.port_rules);
        if (present) {
            const std::uint8_t one = 1;
            ASSERT_EQ(bpf_map_update_elem(fd, &key, &one, BPF_ANY), 0);
        } else {
            bpf_map_delete_elem(fd, &key);
        }
    }

    // The rules RedirectDatapath::write_rules writes for --exclude-inbound-ports=8081 and
    // --include-ports=8080 (plus the always excluded ports).
    void write_agent_rules() {
        for (std::uint16_t port : MESHLANE_ALWAYS_EXCLUDED_INBOUND_PORTS)
            port_rule(port, MESHLANE_PORT_EXCLUDE_INBOUND, true);
        port_rule(kUserExcludedPort, MESHLANE_PORT_EXCLUDE_INBOUND, true);
        port_rule(kAppPort, MESHLANE_PORT_INCLUDE_INBOUND, true);
    }

    // A pod address: cidr_rules POD_LOCAL /32 (v4-mapped), as write_rules does for PodAddress.
    void pod_local_v4(const char* address) {
        cidr_rule_key key{};
        key.prefixlen = MESHLANE_CIDR_KEY_PREFIX_BITS + 128;
        key.workload_id = htonl(kWorkload);
        key.kind = htonl(MESHLANE_CIDR_KEY_KIND(MESHLANE_CIDR_POD_LOCAL, true));
        key.addr[10] = key.addr[11] = 0xff;
        ASSERT_EQ(inet_pton(AF_INET, address, &key.addr[12]), 1);
        const std::uint8_t one = 1;
        ASSERT_EQ(bpf_map_update_elem(bpf_map__fd(skel_->maps.cidr_rules), &key, &one, BPF_ANY), 0);
    }

    // The proxy's inbound listener in its slot, as on_listen (redirect_outbound) registers it.
    void register_listener(int family, int fd) {
        const std::uint32_t slot =
            family == AF_INET ? MESHLANE_LISTENER_SLOT_V4 : MESHLANE_LISTENER_SLOT_V6;
        const std::uint32_t key = kWorkload * MESHLANE_LISTENER_SLOTS + slot;
        const std::uint64_t value = static_cast<std::uint64_t>(fd);
        ASSERT_EQ(
            bpf_map_update_elem(bpf_map__fd(skel_->maps.inbound_listener), &key, &value, BPF_ANY),
            0)
            << std::strerror(errno);
    }

    Outcome run(const Lookup& lookup) {
        bpf_sk_lookup ctx{};
        ctx.family = lookup.family;
        ctx.protocol = lookup.protocol;
        ctx.remote_port = htons(40000);
        ctx.local_port = lookup.port;
        if (lookup.family == AF_INET) {
            EXPECT_EQ(inet_pton(AF_INET, lookup.src.c_str(), &ctx.remote_ip4), 1) << lookup.src;
            ctx.local_ip4 = htonl(INADDR_LOOPBACK);
        } else {
            EXPECT_EQ(inet_pton(AF_INET6, lookup.src.c_str(), ctx.remote_ip6), 1) << lookup.src;
            std::memcpy(ctx.local_ip6, &in6addr_loopback, 16);
        }
        LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &ctx, .ctx_out = &ctx,
                    .ctx_size_in = sizeof ctx, .ctx_size_out = sizeof ctx);
        const int rc =
            bpf_prog_test_run_opts(bpf_program__fd(skel_->progs.redirect_sk_lookup), &opts);
        EXPECT_EQ(rc, 0) << std::strerror(-rc);
        return Outcome{opts.retval, ctx.cookie};
    }

    // The workload's counter stride, summed over CPUs.
    std::array<std::uint64_t, MESHLANE_REDIRECT_COUNTER_STRIDE> counters() {
        std::array<std::uint64_t, MESHLANE_REDIRECT_COUNTER_STRIDE> sums{};
        const int cpus = libbpf_num_possible_cpus();
        std::vector<std::uint64_t> values(static_cast<std::size_t>(cpus));
        for (std::uint32_t i = 0; i < MESHLANE_REDIRECT_COUNTER_STRIDE; ++i) {
            const std::uint32_t key = kWorkload * MESHLANE_REDIRECT_COUNTER_STRIDE + i;
            EXPECT_EQ(bpf_map_lookup_elem(bpf_map__fd(skel_->maps.redirect_counters), &key,
                                          values.data()),
                      0);
            for (auto v : values) sums[i] += v;
        }
        return sums;
    }

    // Runs one lookup; returns the outcome and the one counter it bumped (COUNTER_MAX: none).
    // Fails if more than one counter moved.
    std::pair<Outcome, std::uint32_t> run_counted(const Lookup& lookup) {
        const auto before = counters();
        const Outcome outcome = run(lookup);
        const auto after = counters();
        std::uint32_t bumped = MESHLANE_REDIRECT_COUNTER_MAX;
        for (std::uint32_t i = 0; i < MESHLANE_REDIRECT_COUNTER_MAX; ++i) {
            if (after[i] == before[i]) continue;
            EXPECT_EQ(after[i], before[i] + 1) << "counter " << i;
            EXPECT_EQ(bumped, static_cast<std::uint32_t>(MESHLANE_REDIRECT_COUNTER_MAX))
                << "a second counter moved: " << i;
            bumped = i;
        }
        return {outcome, bumped};
    }

    std::uint64_t netns_cookie_ = 0x6d65736800000000ull | static_cast<std::uint32_t>(::getpid());
    redirect_inbound_bpf* skel_ = nullptr;
};

// What the program must do with a lookup whose facts are `facts`, by the host build: the
// verdict and counter of inbound_decide, then (STEER) the listener or the startup policy.
struct Expected {
    std::uint32_t verdict;
    bool selects_listener;
    std::uint32_t counter;
};

Expected expected_for(const inbound_facts& facts, bool listener, bool startup_passthrough) {
    __u32 counter = MESHLANE_REDIRECT_COUNTER_MAX;
    if (inbound_decide(&facts, &counter) == INBOUND_PASS) return {SK_PASS, false, counter};
    if (listener) return {SK_PASS, true, MESHLANE_CNT_INBOUND_STEERED};
    if (startup_passthrough) return {SK_PASS, false, MESHLANE_CNT_INBOUND_STARTUP_PASSTHROUGH};
    return {SK_DROP, false, MESHLANE_CNT_INBOUND_REFUSED_NO_LISTENER};
}

// Every combination of the four inbound facts, realised through the maps and the context (the
// destination port's rules, the source address), for both families, with the listener
// registered and without it under both startup policies.
TEST_F(BpfSkLookup, EveryFactCombinationMatchesInboundDecide) {
    pod_local_v4(kPodV4);
    Fd listeners[2] = {listen_on_loopback(AF_INET), listen_on_loopback(AF_INET6)};
    ASSERT_GE(listeners[0].get(), 0);
    ASSERT_GE(listeners[1].get(), 0);
    unsigned runs = 0;
    for (int setup = 0; setup < 3; ++setup) {
        const bool listener = setup == 0, passthrough = setup == 2;
        activate(passthrough ? MESHLANE_WL_STARTUP_PASSTHROUGH : 0);
        if (listener) {
            register_listener(AF_INET, listeners[0].get());
            register_listener(AF_INET6, listeners[1].get());
        } else {
            for (std::uint32_t slot = 0; slot < MESHLANE_LISTENER_SLOTS; ++slot) {
                const std::uint32_t key = kWorkload * MESHLANE_LISTENER_SLOTS + slot;
                bpf_map_delete_elem(bpf_map__fd(skel_->maps.inbound_listener), &key);
            }
        }
        for (int family : {AF_INET, AF_INET6}) {
            for (unsigned bits = 0; bits < 16; ++bits) {
                const inbound_facts facts{
                    .dst_is_inbound_listener = static_cast<__u8>(bits & 1),
                    .dst_port_excluded = static_cast<__u8>((bits >> 1) & 1),
                    .dst_port_included = static_cast<__u8>((bits >> 2) & 1),
                    .src_is_local = static_cast<__u8>((bits >> 3) & 1),
                };
                Lookup lookup;
                lookup.family = family;
                lookup.port = facts.dst_is_inbound_listener ? kInboundPort : kAppPort;
                port_rule(lookup.port, MESHLANE_PORT_EXCLUDE_INBOUND, facts.dst_port_excluded);
                port_rule(lookup.port, MESHLANE_PORT_INCLUDE_INBOUND, facts.dst_port_included);
                // Local sources: 127.0.0.6 / ::6 (Envoy's passthrough) and a pod address.
                if (family == AF_INET)
                    lookup.src = facts.src_is_local ? (bits & 1 ? "127.0.0.6" : kPodV4) : kRemoteV4;
                else
                    lookup.src = facts.src_is_local ? "::6" : kRemoteV6;

                const Expected want = expected_for(facts, listener, passthrough);
                const auto [got, counter] = run_counted(lookup);
                const std::string where = "setup " + std::to_string(setup) + " family " +
                                          std::to_string(family) + " facts " + std::to_string(bits);
                ASSERT_EQ(got.verdict, want.verdict) << where;
                const int selected =
                    want.selects_listener ? listeners[family == AF_INET6].get() : -1;
                ASSERT_EQ(got.cookie, selected >= 0 ? socket_cookie(selected) : 0) << where;
                ASSERT_EQ(counter, want.counter) << where;
                port_rule(lookup.port, MESHLANE_PORT_EXCLUDE_INBOUND, false);
                port_rule(lookup.port, MESHLANE_PORT_INCLUDE_INBOUND, false);
                ++runs;
            }
        }
    }
    EXPECT_EQ(runs, 3u * 2u * 16u);
}

class BpfSkLookupAgentRules : public BpfSkLookup {
  protected:
    void SetUp() override {
        BpfSkLookup::SetUp();
        if (IsSkipped() || HasFatalFailure()) return;
        write_agent_rules();
        pod_local_v4(kPodV4);
        activate(0);
        listener_ = listen_on_loopback(AF_INET);
        ASSERT_GE(listener_.get(), 0);
        register_listener(AF_INET, listener_.get());
    }
    Fd listener_;
};

TEST_F(BpfSkLookupAgentRules, IncludedPortFromRemoteIsSteeredToTheListener) {
    const auto [got, counter] = run_counted(Lookup{});
    EXPECT_EQ(got.verdict, static_cast<std::uint32_t>(SK_PASS));
    EXPECT_EQ(got.cookie, socket_cookie(listener_.get()));
    EXPECT_NE(got.cookie, 0u);
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_CNT_INBOUND_STEERED));
}

TEST_F(BpfSkLookupAgentRules, ExcludedPortsPass) {
    std::vector<std::uint16_t> excluded = MESHLANE_ALWAYS_EXCLUDED_INBOUND_PORTS;
    excluded.push_back(kUserExcludedPort);
    // Excluded wins over included (ISTIO_INBOUND returns excluded ports first).
    port_rule(15020, MESHLANE_PORT_INCLUDE_INBOUND, true);
    for (std::uint16_t port : excluded) {
        Lookup lookup;
        lookup.port = port;
        const auto [got, counter] = run_counted(lookup);
        EXPECT_EQ(got.verdict, static_cast<std::uint32_t>(SK_PASS)) << port;
        EXPECT_EQ(got.cookie, 0u) << port;
        EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_CNT_INBOUND_PASS_EXCLUDED_PORT))
            << port;
    }
}

// 15008 is excluded by the program itself, even without a port rule.
TEST_F(BpfSkLookupAgentRules, TunnelPortPassesWithoutARule) {
    port_rule(MESHLANE_INBOUND_TUNNEL_PORT, MESHLANE_PORT_EXCLUDE_INBOUND, false);
    activate(MESHLANE_WL_INCLUDE_ALL_INBOUND_PORTS);
    Lookup lookup;
    lookup.port = MESHLANE_INBOUND_TUNNEL_PORT;
    const auto [got, counter] = run_counted(lookup);
    EXPECT_EQ(got.cookie, 0u);
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_CNT_INBOUND_PASS_EXCLUDED_PORT));
}

TEST_F(BpfSkLookupAgentRules, PortNotIncludedPassesUnlessIncludeAll) {
    Lookup lookup;
    lookup.port = 9000;
    auto [got, counter] = run_counted(lookup);
    EXPECT_EQ(got.cookie, 0u);
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_CNT_INBOUND_PASS_EXCLUDED_PORT));
    activate(MESHLANE_WL_INCLUDE_ALL_INBOUND_PORTS);
    std::tie(got, counter) = run_counted(lookup);
    EXPECT_EQ(got.cookie, socket_cookie(listener_.get()));
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_CNT_INBOUND_STEERED));
}

TEST_F(BpfSkLookupAgentRules, LocalSourcesPass) {
    for (const char* src : {"127.0.0.6", "127.0.0.1", kPodV4}) {
        Lookup lookup;
        lookup.src = src;
        const auto [got, counter] = run_counted(lookup);
        EXPECT_EQ(got.verdict, static_cast<std::uint32_t>(SK_PASS)) << src;
        EXPECT_EQ(got.cookie, 0u) << src;
        EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_CNT_INBOUND_PASS_LOCAL_SOURCE))
            << src;
    }
}

// Addressed to the listener's own port: passes, and nothing is counted.
TEST_F(BpfSkLookupAgentRules, ListenerPortPassesUncounted) {
    activate(MESHLANE_WL_INCLUDE_ALL_INBOUND_PORTS);
    Lookup lookup;
    lookup.port = kInboundPort;
    const auto [got, counter] = run_counted(lookup);
    EXPECT_EQ(got.verdict, static_cast<std::uint32_t>(SK_PASS));
    EXPECT_EQ(got.cookie, 0u);
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_REDIRECT_COUNTER_MAX));
}

// Startup policy, before the proxy's listener is registered.
TEST_F(BpfSkLookupAgentRules, NoListenerRefusesAndDatesTheRefusal) {
    const std::uint32_t key = kWorkload * MESHLANE_LISTENER_SLOTS + MESHLANE_LISTENER_SLOT_V4;
    ASSERT_EQ(bpf_map_delete_elem(bpf_map__fd(skel_->maps.inbound_listener), &key), 0);
    const auto [got, counter] = run_counted(Lookup{});
    EXPECT_EQ(got.verdict, static_cast<std::uint32_t>(SK_DROP));
    EXPECT_EQ(got.cookie, 0u);
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_CNT_INBOUND_REFUSED_NO_LISTENER));
    const auto after = counters();
    EXPECT_NE(after[MESHLANE_TIME_INBOUND_REFUSED_FIRST], 0u);
    EXPECT_NE(after[MESHLANE_TIME_INBOUND_REFUSED_LAST], 0u);
}

TEST_F(BpfSkLookupAgentRules, NoListenerWithStartupPassthroughPasses) {
    const std::uint32_t key = kWorkload * MESHLANE_LISTENER_SLOTS + MESHLANE_LISTENER_SLOT_V4;
    ASSERT_EQ(bpf_map_delete_elem(bpf_map__fd(skel_->maps.inbound_listener), &key), 0);
    activate(MESHLANE_WL_STARTUP_PASSTHROUGH);
    const auto [got, counter] = run_counted(Lookup{});
    EXPECT_EQ(got.verdict, static_cast<std::uint32_t>(SK_PASS));
    EXPECT_EQ(got.cookie, 0u);
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_CNT_INBOUND_STARTUP_PASSTHROUGH));
    EXPECT_EQ(counters()[MESHLANE_TIME_INBOUND_REFUSED_FIRST], 0u);
}

// A dual-stack IPv6 listener in the V4 slot (on_listen registers one there, e.g. [::]:15006)
// takes IPv4 lookups. Bound to ::ffff:127.0.0.1 here, not to ::1: binding a plain IPv6 address
// makes the socket IPv6-only (inet6_bind), and bpf_sk_assign then refuses it for IPv4.
TEST_F(BpfSkLookupAgentRules, DualStackListenerInTheV4SlotTakesIPv4) {
    Fd dual(::socket(AF_INET6, SOCK_STREAM, 0));
    ASSERT_GE(dual.get(), 0);
    const int off = 0;
    ASSERT_EQ(::setsockopt(dual.get(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off), 0);
    sockaddr_in6 mapped{};
    mapped.sin6_family = AF_INET6;
    ASSERT_EQ(inet_pton(AF_INET6, "::ffff:127.0.0.1", &mapped.sin6_addr), 1);
    ASSERT_EQ(::bind(dual.get(), reinterpret_cast<sockaddr*>(&mapped), sizeof mapped), 0);
    ASSERT_EQ(::listen(dual.get(), 4), 0);
    register_listener(AF_INET, dual.get());
    const auto [got, counter] = run_counted(Lookup{});
    EXPECT_EQ(got.cookie, socket_cookie(dual.get()));
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_CNT_INBOUND_STEERED));
}

// An IPv6-only listener (bound to ::1) in the V4 slot cannot take IPv4: bpf_sk_assign fails, and
// the program falls back to the startup policy (here: refuse), as if no listener existed.
TEST_F(BpfSkLookupAgentRules, Ipv6OnlyListenerInTheV4SlotFallsBackToTheStartupPolicy) {
    Fd v6only = listen_on_loopback(AF_INET6);
    ASSERT_GE(v6only.get(), 0);
    register_listener(AF_INET, v6only.get());
    const auto [got, counter] = run_counted(Lookup{});
    EXPECT_EQ(got.verdict, static_cast<std::uint32_t>(SK_DROP));
    EXPECT_EQ(got.cookie, 0u);
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_CNT_INBOUND_REFUSED_NO_LISTENER));
}

// Not this program's business: UDP, and a netns the agent has not activated.
TEST_F(BpfSkLookupAgentRules, UdpAndInactiveWorkloadPassUncounted) {
    Lookup udp;
    udp.protocol = IPPROTO_UDP;
    auto [got, counter] = run_counted(udp);
    EXPECT_EQ(got.verdict, static_cast<std::uint32_t>(SK_PASS));
    EXPECT_EQ(got.cookie, 0u);
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_REDIRECT_COUNTER_MAX));
    ASSERT_EQ(bpf_map_delete_elem(bpf_map__fd(skel_->maps.workload_by_netns), &netns_cookie_), 0);
    std::tie(got, counter) = run_counted(Lookup{});
    EXPECT_EQ(got.verdict, static_cast<std::uint32_t>(SK_PASS));
    EXPECT_EQ(got.cookie, 0u);
    EXPECT_EQ(counter, static_cast<std::uint32_t>(MESHLANE_REDIRECT_COUNTER_MAX));
}

}  // namespace
