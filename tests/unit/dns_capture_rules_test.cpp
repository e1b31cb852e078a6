// The DNS capture decision compiled for the host, rule by rule against istio-iptables' DNS rules
// (tests/unit/testdata/istio-dns-goldens.txt: dns-uid-gid, ipv6-dns-uid-gid and the
// ipv6-dns-outbound-owner-* goldens), with the same function the BPF programs run.
#include "meshlane/dns_capture_rules.h"

#include <gtest/gtest.h>

namespace {

// The app (not the proxy) querying a nameserver listed in the pod's resolv.conf over UDP.
dns_facts app_udp_to_nameserver() {
    dns_facts f{};
    f.capture = 1;
    f.dst_is_nameserver = 1;
    return f;
}

enum dns_verdict decide(const dns_facts& f, __u32* counter = nullptr) {
    __u32 unused = 0;
    return dns_decide(&f, counter ? counter : &unused);
}

TEST(DnsRules, OffLeavesEverythingToTheTcpRules) {
    auto f = app_udp_to_nameserver();
    f.capture = 0;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), DNS_CONTINUE);
    EXPECT_EQ(counter, MESHLANE_REDIRECT_COUNTER_MAX);  // nothing counted
}

TEST(DnsRules, AppToNameserverIsRedirectedUdpAndTcp) {
    // ISTIO_OUTPUT_DNS -p udp|tcp --dport 53 -d NAMESERVER -j REDIRECT --to-ports 15053
    auto f = app_udp_to_nameserver();
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), DNS_REDIRECT);
    EXPECT_EQ(counter, MESHLANE_CNT_DNS_REDIRECTED_UDP);
    f.is_tcp = 1;
    EXPECT_EQ(decide(f, &counter), DNS_REDIRECT);
    EXPECT_EQ(counter, MESHLANE_CNT_DNS_REDIRECTED_TCP);
}

TEST(DnsRules, OtherServersAreNotCapturedUnlessAll) {
    auto f = app_udp_to_nameserver();
    f.dst_is_nameserver = 0;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), DNS_CONTINUE);
    EXPECT_EQ(counter, MESHLANE_CNT_DNS_PASS_NOT_NAMESERVER);
    f.is_tcp = 1;  // TCP continues in ISTIO_OUTPUT, which counts it
    EXPECT_EQ(decide(f, &counter), DNS_CONTINUE);
    EXPECT_EQ(counter, MESHLANE_REDIRECT_COUNTER_MAX);
    f.capture_all = 1;  // --capture-all-dns: the DNS rules have no -d
    EXPECT_EQ(decide(f), DNS_REDIRECT);
    f.is_tcp = 0;
    EXPECT_EQ(decide(f), DNS_REDIRECT);
}

TEST(DnsRules, LoopbackNameserverIsCaptured) {
    // The goldens' nameserver is 127.0.0.53: ISTIO_OUTPUT_DNS comes before "-d 127.0.0.1 RETURN"
    // and the lo RETURN rules say "! --dport 53", so local resolvers are captured too.
    auto f = app_udp_to_nameserver();
    f.dst_is_local = 1;
    EXPECT_EQ(decide(f), DNS_REDIRECT);
    f.is_tcp = 1;
    EXPECT_EQ(decide(f), DNS_REDIRECT);
    f.dst_is_localhost = 1;
    EXPECT_EQ(decide(f), DNS_REDIRECT);
}

TEST(DnsRules, ProxyUidAndGidAreNeverCaptured) {
    // -m owner --uid-owner U -j RETURN / --gid-owner G -j RETURN (no -p), and the udp RETURNs of
    // ISTIO_OUTPUT_DNS; the raw-table zone-1 rules exist for exactly these queries.
    for (int tcp = 0; tcp <= 1; ++tcp) {
        for (int all = 0; all <= 1; ++all) {
            auto f = app_udp_to_nameserver();
            f.is_tcp = tcp;
            f.capture_all = all;
            f.uid_is_proxy = 1;
            __u32 counter = 0;
            EXPECT_EQ(decide(f, &counter), DNS_PASS);
            EXPECT_EQ(counter, MESHLANE_CNT_DNS_PASS_PROXY_OWNER);
            f.uid_is_proxy = 0;
            f.gid_is_proxy = 1;
            EXPECT_EQ(decide(f, &counter), DNS_PASS);
            EXPECT_EQ(counter, MESHLANE_CNT_DNS_PASS_PROXY_OWNER);
        }
    }
}

TEST(DnsRules, ProxyUidOnLoIsNotSentInbound) {
    // "-o lo ! -d 127.0.0.1 -p tcp -m multiport ! --dports 53,15008 --uid-owner U -j IN_REDIRECT"
    auto f = app_udp_to_nameserver();
    f.is_tcp = 1;
    f.dst_is_local = 1;
    f.uid_is_proxy = 1;
    f.proxy_self_to_inbound = 1;
    EXPECT_EQ(decide(f), DNS_PASS);
}

TEST(DnsRules, ProxyGidOnlyToPodAddressOverTcpGoesInbound) {
    // The gid rule excludes only 15008: "-o lo ! -d 127.0.0.1 -p tcp ! --dport 15008
    // --gid-owner G -j ISTIO_IN_REDIRECT", reached because "-o lo -p tcp ! --dport 53 ! --uid-owner
    // U -j RETURN" no longer returns port 53. meshlane's IN_REDIRECT rules are opt-in.
    auto f = app_udp_to_nameserver();
    f.is_tcp = 1;
    f.dst_is_local = 1;
    f.gid_is_proxy = 1;
    EXPECT_EQ(decide(f), DNS_PASS);
    f.proxy_self_to_inbound = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), DNS_TO_INBOUND);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PROXY_SELF_TO_INBOUND);
    f.dst_is_localhost = 1;  // "! -d 127.0.0.1"
    EXPECT_EQ(decide(f), DNS_PASS);
    f.dst_is_localhost = 0;
    f.is_tcp = 0;  // the rule is -p tcp
    EXPECT_EQ(decide(f), DNS_PASS);
}

TEST(DnsRules, ExcludedPort53ReturnsTcpOnly) {
    // "-p tcp --dport 53 -j RETURN" comes first in ISTIO_OUTPUT; it never matches UDP.
    auto f = app_udp_to_nameserver();
    f.dst_port_excluded = 1;
    EXPECT_EQ(decide(f), DNS_REDIRECT);
    f.is_tcp = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), DNS_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_EXCLUDED_PORT);
}

TEST(DnsRules, InboundPassthroughSourceOverLoReturnsAnyProtocol) {
    // "-o lo -s 127.0.0.6/32 -j RETURN" has no -p.
    for (int tcp = 0; tcp <= 1; ++tcp) {
        auto f = app_udp_to_nameserver();
        f.is_tcp = tcp;
        f.dst_is_local = 1;
        f.bound_to_passthrough = 1;
        __u32 counter = 0;
        EXPECT_EQ(decide(f, &counter), DNS_PASS);
        EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_INBOUND_PASSTHROUGH_SOURCE);
        f.dst_is_local = 0;  // -o lo: only towards the pod's own addresses
        EXPECT_EQ(decide(f), DNS_REDIRECT);
    }
}

}  // namespace
