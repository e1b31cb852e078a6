// The diagnosis rules that read observations: startup refusals dated by the kernel (finding 1),
// kernel drops (finding 9) and TLS handshakes (finding 10), on hand-built snapshots.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "agent/diagnose/diagnose_service.h"
#include "agent/diagnose/diagnosis.h"

namespace meshlane::diagnose {
namespace {

constexpr std::int64_t kNow = 1700000100000;

DiagnosisInput observed_pod() {
    DiagnosisInput in;
    in.workload = "pod-b";
    in.spec.name = "pod-b";
    in.spec.netns_path = "/var/run/netns/pod-b";
    in.collected_at_unix_ms = kNow;
    in.window_start_unix_ms = kNow - 600000;
    in.pod_addresses = {"10.0.0.2", "127.0.0.1"};
    in.counters = {{"inbound_refused_no_listener", 0}};
    in.observed = ObservedTraffic{};
    in.listeners = std::vector<ListenSocket>{};
    return in;
}

DropRecord drop(const std::string& reason, std::int64_t ms, const std::string& src,
                const std::string& dst) {
    DropRecord d;
    d.unix_time_ns = ms * 1'000'000;
    d.reason_name = reason;
    d.attributed_by = "device";
    d.ip_proto = 6;
    d.source = src;
    d.destination = dst;
    d.length = 60;
    return d;
}

ConnectionRecord connect(const std::string& outcome, const std::string& side, std::int64_t ms,
                         const std::string& dst) {
    ConnectionRecord c;
    c.unix_time_ns = ms * 1'000'000;
    c.outcome = outcome;
    c.side = side;
    c.source = "10.0.0.1:40000";
    c.destination = dst;
    c.pid = 42;
    c.comm = "haproxy";
    c.syn_retransmits = 3;
    return c;
}

TEST(DiagnoseObserved, RefusalsDatedByTheKernel) {
    auto in = observed_pod();
    in.counters["inbound_refused_no_listener"] = 3;
    in.startup = {kNow - 5000, kNow - 4000, kNow - 3000, kNow - 3000};
    auto f = rule_refused_before_listen(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->data.at("inbound_refused"), 3);
    EXPECT_EQ(f->data.at("inbound_refused_first_unix_ms"), kNow - 5000);
    EXPECT_EQ(f->data.at("inbound_refused_last_unix_ms"), kNow - 4000);
    EXPECT_EQ(f->data.at("listener_registered_unix_ms"), kNow - 3000);
    EXPECT_NE(f->evidence.front().find("first at"), std::string::npos);
}

TEST(DiagnoseObserved, OutboundRefusalsFromTheObserver) {
    auto in = observed_pod();
    in.observed->app_refused_total = 2;
    in.observed->connects = {connect("refused", "app", kNow - 9000, "127.0.0.1:15001"),
                             connect("refused", "app", kNow - 8000, "127.0.0.1:15001")};
    auto f = rule_refused_before_listen(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->data.at("outbound_refused"), 2);
    EXPECT_EQ(f->data.at("outbound_refused_first_unix_ms"), kNow - 9000);
    EXPECT_EQ(f->data.at("outbound_refused_last_unix_ms"), kNow - 8000);
    EXPECT_FALSE(f->data.count("inbound_refused"));
}

TEST(DiagnoseObserved, NetfilterDropNamesTheRuleAndNetns) {
    auto in = observed_pod();
    in.observed->drops = {drop("NETFILTER_DROP", kNow - 3000, "10.0.0.1:40000", "10.0.0.2:8080"),
                          drop("NETFILTER_DROP", kNow - 2000, "10.0.0.1:40000", "10.0.0.2:8080")};
    in.observed->drops_by_reason = {{1, "NETFILTER_DROP", 5}};
    auto f = rule_kernel_drops(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->code, "kernel_dropped_packets");
    EXPECT_EQ(f->severity, Severity::kWarning);  // no failed connect of its own in the window
    EXPECT_EQ(f->data.at("drops.NETFILTER_DROP"), 2);
    EXPECT_EQ(f->data.at("drops_total.NETFILTER_DROP"), 5);
    EXPECT_NE(f->fix.find("iptables"), std::string::npos);
    EXPECT_NE(f->fix.find("/var/run/netns/pod-b"), std::string::npos);
    bool inbound = false;
    for (const auto& e : f->evidence)
        inbound |= e.find("(inbound to the pod)") != std::string::npos;
    EXPECT_TRUE(inbound);
}

TEST(DiagnoseObserved, OldOrBenignDropsAreNoFinding) {
    auto in = observed_pod();
    in.observed->drops = {drop("NETFILTER_DROP", kNow - 700000, "a:1", "b:2"),  // before window
                          drop("TCP_OLD_DATA", kNow - 1000, "a:1", "b:2")};
    EXPECT_FALSE(rule_kernel_drops(in));
    // NO_SOCKET drops that are the sk_lookup refusals belong to finding 1.
    in.counters["inbound_refused_no_listener"] = 1;
    in.observed->drops = {drop("NO_SOCKET", kNow - 1000, "10.0.0.1:4", "10.0.0.2:8080")};
    in.observed->drops_by_reason = {{2, "NO_SOCKET", 1}};
    in.observed->connects = {connect("timed_out", "upstream", kNow - 500, "10.0.0.3:80")};
    EXPECT_FALSE(rule_kernel_drops(in));
    // A non-policy drop counts when it belongs to a failed connect; verify's probes never.
    in.observed->drops = {drop("SOCKET_RCVBUFF", kNow - 900, "10.0.0.3:80", "10.0.0.2:4000"),
                          drop("IP_INADDRERRORS", kNow - 900, "127.0.0.1:5", "192.0.2.1:15002")};
    in.observed->connects.push_back(connect("failed", "upstream", kNow - 400, "192.0.2.1:15002"));
    auto f = rule_kernel_drops(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->data.at("drops.SOCKET_RCVBUFF"), 1);
    EXPECT_EQ(f->data.count("drops.IP_INADDRERRORS"), 0u);
    EXPECT_EQ(f->data.at("failed_connects"), 1);
}

TEST(DiagnoseObserved, ClientSeesDropsInThePeerWorkload) {
    auto in = observed_pod();
    in.observed->connects = {connect("timed_out", "upstream", kNow - 1000, "10.0.0.3:8080")};
    in.observed->peer_drops = {
        {"pod-c", "/var/run/netns/pod-c",
         drop("NETFILTER_DROP", kNow - 2000, "10.0.0.2:40000", "10.0.0.3:8080")}};
    auto f = rule_kernel_drops(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kCritical);
    EXPECT_EQ(f->data.at("peer_drops.NETFILTER_DROP"), 1);
    EXPECT_EQ(f->data.at("failed_connects"), 1);
    EXPECT_NE(f->fix.find("/var/run/netns/pod-c"), std::string::npos);
    bool names_peer = false;
    for (const auto& e : f->evidence) names_peer |= e.find("workload pod-c") != std::string::npos;
    EXPECT_TRUE(names_peer);
}

TEST(DiagnoseObserved, DropReasonFixes) {
    EXPECT_NE(drop_reason_fix("NO_SOCKET", "/n").find("nothing listens"), std::string::npos);
    EXPECT_NE(drop_reason_fix("TCP_LISTEN_OVERFLOW", "/n").find("accept queue"), std::string::npos);
    EXPECT_NE(drop_reason_fix("SOCKET_FILTER", "/n").find("bpftool"), std::string::npos);
    EXPECT_TRUE(is_policy_drop_reason("NETFILTER_DROP"));
    EXPECT_FALSE(is_policy_drop_reason("NO_SOCKET"));
}

TEST(DiagnoseObserved, TlsFailingOrSlowDestinations) {
    auto in = observed_pod();
    in.tls = TlsObservation{200, {}};
    EXPECT_FALSE(rule_tls_handshakes(in));
    TlsDestination ok{"10.0.0.3:443", "", 10, 0, 0, 5000, 6000, "", 0};
    in.tls->destinations = {ok};
    EXPECT_FALSE(rule_tls_handshakes(in));
    TlsDestination slow{"api.example", "api.example", 4, 0, 4, 250000, 260000, "", 0};
    in.tls->destinations.push_back(slow);
    auto f = rule_tls_handshakes(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kWarning);
    EXPECT_EQ(f->data.at("tls_slow"), 4);
    EXPECT_NE(f->evidence.front().find("4 at or above the 200 ms threshold"), std::string::npos);
    EXPECT_EQ(f->cause.rfind("Slow first request", 0), 0u) << f->cause;
    EXPECT_NE(f->fix.find("openssl s_client"), std::string::npos);
    TlsDestination failing{"db:5432", "", 3, 2, 0, 1000, 1000, "alert fatal 42 (bad_certificate)",
                           kNow - 100};
    in.tls->destinations.push_back(failing);
    f = rule_tls_handshakes(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kCritical);
    EXPECT_EQ(f->data.at("tls_failures"), 2);
    EXPECT_EQ(f->cause.rfind("mTLS handshake failure", 0), 0u) << f->cause;
    EXPECT_NE(f->cause.find("503 UF"), std::string::npos);
    EXPECT_NE(f->cause.find("also slower than 200 ms"), std::string::npos);
}

TEST(DiagnoseObserved, TlsFailureMeaningAndReproduceCommand) {
    auto in = observed_pod();
    TlsDestination d;
    d.destination = d.sni = "reviews.test";
    d.address = "10.0.0.3:9080";
    d.hop = "upstream";
    d.handshakes = d.failures = 3;
    d.failures_by_kind = {{"alert", 3}};
    d.last_failure_kind = "alert";
    d.last_alert_description = 48;
    d.last_failure = "alert fatal 48 (unknown_ca)";
    d.first_failure_unix_ms = kNow - 3000;
    d.last_failure_unix_ms = kNow - 1000;
    in.tls = TlsObservation{200, {d}};
    auto f = rule_tls_handshakes(in);
    ASSERT_TRUE(f);
    EXPECT_NE(f->cause.find("not signed by a CA this side trusts"), std::string::npos) << f->cause;
    EXPECT_NE(f->fix.find("nsenter --net=/var/run/netns/pod-b openssl s_client -connect "
                          "10.0.0.3:9080 -servername reviews.test"),
              std::string::npos)
        << f->fix;
    EXPECT_NE(f->fix.find("PeerAuthentication"), std::string::npos);
    ASSERT_EQ(f->evidence.size(), 1u);
    const auto& line = f->evidence.front();
    EXPECT_EQ(line.rfind("reviews.test (10.0.0.3:9080), measured on the proxy's upstream", 0), 0u)
        << line;
    EXPECT_NE(line.find("3 failed (3 alert), first failure at 2023-11-14T22:14:57.000Z, last at "
                        "2023-11-14T22:14:59.000Z: alert fatal 48 (unknown_ca)"),
              std::string::npos)
        << line;
    EXPECT_EQ(f->data.at("tls_failures_alert.reviews.test"), 3);
    EXPECT_EQ(f->data.at("tls_first_failure_unix_ms.reviews.test"), kNow - 3000);

    in.tls->destinations[0].last_failure_kind = "reset";
    in.tls->destinations[0].last_alert_description = -1;
    f = rule_tls_handshakes(in);
    ASSERT_TRUE(f);
    EXPECT_NE(f->cause.find("rejected this side's client certificate"), std::string::npos);
}

TlsHandshakeRecord handshake(const std::string& destination, const std::string& source,
                             const std::string& outcome, std::uint64_t latency_ms,
                             std::int64_t ms) {
    TlsHandshakeRecord h;
    h.unix_time_ns = ms * 1'000'000;
    h.latency_ns = latency_ms * 1'000'000;
    h.source = source;
    h.outcome = outcome;
    h.destination = destination;
    h.sni = destination;
    return h;
}

TEST(DiagnoseObserved, TlsSummaryFromTheAggregate) {
    WorkloadTls tls;
    tls.recent = {
        handshake("slow.example", "wire", "ok", 300, kNow - 5000),
        handshake("slow.example", "wire", "ok", 310, kNow - 4000),
        handshake("slow.example", "libssl", "ok", 305, kNow - 4000),  // same handshake, uprobe
        handshake("fast.example", "wire", "ok", 2, kNow - 3000),
        handshake("bad.example", "wire", "alert", 5, kNow - 2000),
        handshake("old.example", "wire", "alert", 5, kNow - 900000),  // before the window
    };
    tls.recent[4].alert_level = 2;
    tls.recent[4].alert_description = 42;
    const auto summary = summarize_tls(tls, std::chrono::milliseconds(200), kNow - 600000);
    EXPECT_EQ(summary.threshold_ms, 200u);
    ASSERT_EQ(summary.destinations.size(), 3u);
    std::map<std::string, TlsDestination> by;
    for (const auto& d : summary.destinations) by[d.destination] = d;
    EXPECT_EQ(by["slow.example"].handshakes, 2u);  // the wire source, not both
    EXPECT_EQ(by["slow.example"].slow, 2u);
    EXPECT_EQ(by["slow.example"].p99_us, 310000u);
    EXPECT_EQ(by["slow.example"].p50_us, 300000u);
    EXPECT_EQ(by["fast.example"].slow, 0u);
    EXPECT_EQ(by["bad.example"].failures, 1u);
    EXPECT_NE(by["bad.example"].last_failure.find("42"), std::string::npos);
    EXPECT_EQ(by["bad.example"].last_failure_unix_ms, kNow - 2000);

    auto in = observed_pod();
    in.tls = summary;
    auto f = rule_tls_handshakes(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kCritical);
    EXPECT_EQ(f->data.at("tls_failures"), 1);
    EXPECT_EQ(f->data.at("tls_slow"), 2);
}

TEST(DiagnoseObserved, TlsHandshakeSeenOnTwoHopsCountsOnce) {
    // The app's own TLS through a pass-through proxy: the wire sees each handshake on the app's
    // connection and again on the proxy's upstream connection.
    WorkloadTls tls;
    for (int i = 0; i < 3; ++i) {
        for (const char* side : {"app", "upstream"}) {
            auto h = handshake("bad.example", "wire", "alert", 5, kNow - 3000 + i * 1000);
            h.side = side;
            h.peer = std::string(side) == "app" ? "127.0.0.1:15001" : "10.0.0.3:8443";
            if (std::string(side) == "app") h.original_destination = "10.0.0.3:8443";
            h.alert_level = 2;
            h.alert_description = 48;
            tls.recent.push_back(h);
        }
    }
    auto libssl = handshake("process curl", "libssl", "ok", 5, kNow - 400);
    libssl.sni.clear();  // libssl without SNI: the same handshake as the wire's, not a destination
    tls.recent.push_back(libssl);
    tls.recent.push_back(handshake("bad.example", "wire", "reset", 5, kNow - 500));
    tls.recent.back().side = "upstream";
    const auto summary = summarize_tls(tls, std::chrono::milliseconds(200), kNow - 600000);
    ASSERT_EQ(summary.destinations.size(), 1u);
    const auto& d = summary.destinations.front();
    EXPECT_EQ(d.hop, "upstream");  // 4 attempts there, 3 on the app's hop: never summed
    EXPECT_EQ(d.handshakes, 4u);
    EXPECT_EQ(d.failures, 4u);
    EXPECT_EQ(d.failures_by_kind.at("alert"), 3u);
    EXPECT_EQ(d.failures_by_kind.at("reset"), 1u);
    EXPECT_EQ(d.first_failure_unix_ms, kNow - 3000);
    EXPECT_EQ(d.last_failure_unix_ms, kNow - 500);
    EXPECT_EQ(d.last_failure_kind, "reset");
    EXPECT_EQ(d.address, "10.0.0.3:8443");

    tls.recent.pop_back();  // a tie: the app's hop, with its original destination
    const auto tie = summarize_tls(tls, std::chrono::milliseconds(200), kNow - 600000);
    EXPECT_EQ(tie.destinations.front().hop, "app");
    EXPECT_EQ(tie.destinations.front().address, "10.0.0.3:8443");
    EXPECT_EQ(tie.destinations.front().last_failure, "alert fatal 48 (unknown_ca)");
}

}  // namespace
}  // namespace meshlane::diagnose
