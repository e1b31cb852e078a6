// The capture decision compiled for the host: each ISTIO_OUTPUT / ISTIO_INBOUND rule of
// istio-iptables, in chain order, against the same function the BPF programs run.
#include "meshlane/redirect_rules.h"

#include <gtest/gtest.h>

#include <cstring>

namespace {

outbound_facts app_to_remote() {
    outbound_facts f{};
    f.dst_cidr_included = 1;  // include-cidrs "*"
    return f;
}

// The (first) proxy uid: facts set both flags for it.
void first_proxy_uid(outbound_facts& f) {
    f.uid_is_proxy = 1;
    f.uid_is_first_proxy = 1;
}

enum outbound_verdict decide(const outbound_facts& f, __u32* counter = nullptr) {
    __u32 unused = 0;
    return outbound_decide(&f, counter ? counter : &unused);
}

TEST(OutboundRules, AppToRemoteIsRedirected) {
    __u32 counter = 0;
    EXPECT_EQ(decide(app_to_remote(), &counter), OUTBOUND_REDIRECT);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_REDIRECTED);
}

TEST(OutboundRules, ExcludedPortWinsOverEverything) {
    auto f = app_to_remote();
    f.dst_port_excluded = 1;
    f.dst_port_included = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_EXCLUDED_PORT);
}

TEST(OutboundRules, InboundPassthroughSourceOnLoPasses) {
    auto f = app_to_remote();
    f.dst_is_local = 1;
    f.bound_to_passthrough = 1;
    first_proxy_uid(f);
    f.proxy_self_to_inbound = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_INBOUND_PASSTHROUGH_SOURCE);
}

TEST(OutboundRules, ProxyToOwnPodIpGoesInboundOnlyWhenEnabled) {
    auto f = app_to_remote();
    f.dst_is_local = 1;
    first_proxy_uid(f);
    EXPECT_EQ(decide(f), OUTBOUND_PASS);  // default: no loop for proxies that don't bind .6
    f.proxy_self_to_inbound = 1;
    EXPECT_EQ(decide(f), OUTBOUND_TO_INBOUND);
    f.dst_is_localhost = 1;  // "! -d 127.0.0.1"
    EXPECT_EQ(decide(f), OUTBOUND_PASS);
}

TEST(OutboundRules, GidAloneNeverSendsLoTrafficInbound) {
    // "-o lo ! --uid-owner 1337 -j RETURN" precedes every gid rule.
    auto f = app_to_remote();
    f.dst_is_local = 1;
    f.gid_is_proxy = 1;
    f.proxy_self_to_inbound = 1;
    EXPECT_EQ(decide(f), OUTBOUND_PASS);
}

TEST(OutboundRules, AppToAppOnLoopbackPasses) {
    auto f = app_to_remote();
    f.dst_is_local = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_LOOPBACK);
}

TEST(OutboundRules, ProxyUidAndGidPass) {
    for (int which = 0; which < 2; ++which) {
        auto f = app_to_remote();
        if (which)
            f.gid_is_proxy = 1;
        else
            first_proxy_uid(f);
        __u32 counter = 0;
        EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
        EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_PROXY_OWNER);
    }
}

TEST(OutboundRules, ExcludedCidrBeatsIncludedPortAndCidr) {
    auto f = app_to_remote();
    f.dst_cidr_excluded = 1;
    f.dst_port_included = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_EXCLUDED_CIDR);
}

TEST(OutboundRules, IncludedPortRedirectsOutsideIncludedCidrs) {
    auto f = app_to_remote();
    f.dst_cidr_included = 0;
    EXPECT_EQ(decide(f), OUTBOUND_PASS);
    f.dst_port_included = 1;
    EXPECT_EQ(decide(f), OUTBOUND_REDIRECT);
}

TEST(OutboundRules, NotIncludedPasses) {
    auto f = app_to_remote();
    f.dst_cidr_included = 0;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_NOT_INCLUDED);
}

// Issue 13, case 1: "-o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 --uid-owner 1337 ->
// ISTIO_IN_REDIRECT": the proxy's own HBONE call to its pod IP reaches the 15008 listener.
TEST(OutboundRules, ProxyToOwnPodIpOnTunnelPortPasses) {
    auto f = app_to_remote();
    f.dst_is_local = 1;
    first_proxy_uid(f);
    f.proxy_self_to_inbound = 1;
    f.dst_port_is_tunnel = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_LOOPBACK);
}

void v4(__u8 a, __u8 b, __u8 c, __u8 d, __u8 out[16]) {
    const __u8 mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d};
    for (int i = 0; i < 16; i++) out[i] = mapped[i];
}

void v6_last(__u8 last, __u8 out[16]) {
    for (int i = 0; i < 15; i++) out[i] = 0;
    out[15] = last;
}

// Case 2: connect(0.0.0.0:P) / connect([::]:P) is seen by netfilter as 127.0.0.1 / ::1, so the
// localhost rules apply to it (no self-to-inbound for the proxy).
TEST(OutboundAddresses, UnspecifiedIsLoopbackAsNetfilterSeesIt) {
    __u8 dst[16], want[16];
    v4(0, 0, 0, 0, dst);
    outbound_dst_as_netfilter_sees(dst);
    v4(127, 0, 0, 1, want);
    EXPECT_EQ(0, std::memcmp(dst, want, 16));
    v6_last(0, dst);
    outbound_dst_as_netfilter_sees(dst);
    v6_last(1, want);
    EXPECT_EQ(0, std::memcmp(dst, want, 16));
    v4(10, 1, 2, 3, dst);  // anything else is left alone
    outbound_dst_as_netfilter_sees(dst);
    v4(10, 1, 2, 3, want);
    EXPECT_EQ(0, std::memcmp(dst, want, 16));
}

// Case 3: an unbound IPv6 socket connecting to ::6 leaves from ::6 ("-s ::6/128 -o lo RETURN");
// unbound IPv4 to 127.0.0.6 leaves from 127.0.0.1 and is not the passthrough source.
TEST(OutboundAddresses, PassthroughSourceBoundOrPickedByTheKernel) {
    __u8 src[16], dst[16];
    v6_last(0, src);
    v6_last(6, dst);
    EXPECT_TRUE(outbound_source_is_passthrough(src, dst));
    v6_last(1, dst);
    EXPECT_FALSE(outbound_source_is_passthrough(src, dst));
    v6_last(6, src);  // bound to ::6
    EXPECT_TRUE(outbound_source_is_passthrough(src, dst));
    v4(0, 0, 0, 0, src);  // unbound IPv4 socket
    v4(127, 0, 0, 6, dst);
    EXPECT_FALSE(outbound_source_is_passthrough(src, dst));
    v4(127, 0, 0, 6, src);
    v4(10, 0, 0, 1, dst);
    EXPECT_TRUE(outbound_source_is_passthrough(src, dst));
}

// Case 4: include CIDRs with a loopback range (HasLoopBackIP) drop "-o lo ! --uid-owner -j
// RETURN": the app over lo goes on to the CIDR/port rules, every proxy uid and gid to the
// ISTIO_IN_REDIRECT rule.
TEST(OutboundRules, LoopbackIncludeCapturesAppOverLo) {
    outbound_facts f{};
    f.include_has_loopback = 1;
    f.dst_is_local = 1;
    EXPECT_TRUE(outbound_needs_tail(&f));
    f.dst_cidr_included = 1;  // app -> 127.1.2.3 with -i 127.1.2.0/24
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_REDIRECT);
    f.dst_cidr_included = 0;  // app -> own pod IP, not included
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_NOT_INCLUDED);
    f.dst_is_localhost = 1;  // "-d 127.0.0.1/32 -j RETURN" before the includes
    f.dst_cidr_included = 1;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_LOOPBACK);
}

TEST(OutboundRules, LoopbackIncludeSendsGidOnlyProxyInbound) {
    outbound_facts f{};
    f.include_has_loopback = 1;
    f.dst_is_local = 1;
    f.gid_is_proxy = 1;
    f.proxy_self_to_inbound = 1;
    EXPECT_FALSE(outbound_needs_tail(&f));
    EXPECT_EQ(decide(f), OUTBOUND_TO_INBOUND);
    f.include_has_loopback = 0;  // without: "-o lo ! --uid-owner u1 -j RETURN" comes first
    EXPECT_EQ(decide(f), OUTBOUND_PASS);
}

// DNS capture on: SetupDNSRedir writes the app's lo RETURN as "-o lo -p tcp ! --dport 53 -m owner
// ! --uid-owner u -j RETURN", so the app's TCP to a pod-local non-nameserver on 53 (the DNS rules
// did not take it) goes on to "-d 127.0.0.1 -j RETURN" and the include rules: with -i "*" to
// 15001 (dns-uid-gid style rules with an include list).
TEST(OutboundRules, DnsPortOverLoSkipsAppLoReturn) {
    outbound_facts f{};
    f.dst_is_local = 1;
    f.lo_return_skips_port = 1;
    EXPECT_TRUE(outbound_needs_tail(&f));
    f.dst_cidr_included = 1;  // app -> own pod IP:53 with -i "*"
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_REDIRECT);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_REDIRECTED);
    f.dst_cidr_included = 0;  // not included: passes at the end of the chain
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_NOT_INCLUDED);
    f.dst_is_localhost = 1;  // 127.0.0.1:53: "-d 127.0.0.1/32 -j RETURN"
    f.dst_cidr_included = 1;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_LOOPBACK);
    f = outbound_facts{};  // DNS capture off: the plain lo RETURN still covers 53
    f.dst_is_local = 1;
    f.dst_cidr_included = 1;
    EXPECT_FALSE(outbound_needs_tail(&f));
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_LOOPBACK);
}

// Case 5: -u 3,4: on lo only the first uid's rules are reached; off lo every listed uid returns.
TEST(OutboundRules, SecondProxyUidOnLoPassesOffLoReturns) {
    outbound_facts f{};
    f.dst_is_local = 1;
    f.uid_is_proxy = 1;  // uid 4: listed, not first
    f.proxy_self_to_inbound = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_LOOPBACK);
    f.include_has_loopback = 1;  // then its own IN_REDIRECT rule is reached
    EXPECT_EQ(decide(f), OUTBOUND_TO_INBOUND);
    f = app_to_remote();
    f.uid_is_proxy = 1;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_PROXY_OWNER);
}

TEST(OutboundRules, FamilyNotCapturedPassesFirst) {
    auto f = app_to_remote();
    f.family_not_captured = 1;
    f.dst_port_included = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_FAMILY_NOT_CAPTURED);
    EXPECT_FALSE(outbound_needs_tail(&f));
}

inbound_facts remote_to_app() {
    inbound_facts f{};
    f.dst_port_included = 1;  // include-ports "*"
    return f;
}

enum inbound_verdict decide_in(const inbound_facts& f, __u32* counter = nullptr) {
    __u32 unused = 0;
    return inbound_decide(&f, counter ? counter : &unused);
}

TEST(InboundRules, RemoteToAppIsSteered) {
    __u32 counter = 0;
    EXPECT_EQ(decide_in(remote_to_app(), &counter), INBOUND_STEER);
    EXPECT_EQ(counter, MESHLANE_CNT_INBOUND_STEERED);
}

TEST(InboundRules, LocallyOriginatedPasses) {
    auto f = remote_to_app();
    f.src_is_local = 1;
    EXPECT_EQ(decide_in(f), INBOUND_PASS);
}

TEST(InboundRules, ExcludedOrNotIncludedPortPasses) {
    auto f = remote_to_app();
    f.dst_port_excluded = 1;
    EXPECT_EQ(decide_in(f), INBOUND_PASS);
    f = remote_to_app();
    f.dst_port_included = 0;
    EXPECT_EQ(decide_in(f), INBOUND_PASS);
}

TEST(InboundRules, FamilyNotCapturedPasses) {
    auto f = remote_to_app();
    f.family_not_captured = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide_in(f, &counter), INBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_INBOUND_PASS_FAMILY_NOT_CAPTURED);
}

TEST(InboundRules, ListenerPortItselfIsNotCounted) {
    auto f = remote_to_app();
    f.dst_is_inbound_listener = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide_in(f, &counter), INBOUND_PASS);
    EXPECT_EQ(counter, static_cast<__u32>(MESHLANE_REDIRECT_COUNTER_MAX));
}

}  // namespace
