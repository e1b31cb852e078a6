// The capture decision compiled for the host: each ISTIO_OUTPUT / ISTIO_INBOUND rule of
// istio-iptables, in chain order, against the same function the BPF programs run.
#include "meshlane/redirect_rules.h"

#include <gtest/gtest.h>

namespace {

outbound_facts app_to_remote() {
    outbound_facts f{};
    f.dst_cidr_included = 1;  // include-cidrs "*"
    return f;
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
    f.uid_is_proxy = 1;
    f.proxy_self_to_inbound = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide(f, &counter), OUTBOUND_PASS);
    EXPECT_EQ(counter, MESHLANE_CNT_OUTBOUND_PASS_INBOUND_PASSTHROUGH_SOURCE);
}

TEST(OutboundRules, ProxyToOwnPodIpGoesInboundOnlyWhenEnabled) {
    auto f = app_to_remote();
    f.dst_is_local = 1;
    f.uid_is_proxy = 1;
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
        (which ? f.gid_is_proxy : f.uid_is_proxy) = 1;
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

TEST(InboundRules, ListenerPortItselfIsNotCounted) {
    auto f = remote_to_app();
    f.dst_is_inbound_listener = 1;
    __u32 counter = 0;
    EXPECT_EQ(decide_in(f, &counter), INBOUND_PASS);
    EXPECT_EQ(counter, static_cast<__u32>(MESHLANE_REDIRECT_COUNTER_MAX));
}

}  // namespace
