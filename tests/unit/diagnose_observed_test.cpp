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
    c.outcome = outcome == "refused"       ? ConnectOutcome::kRefused
                : outcome == "timed_out"   ? ConnectOutcome::kTimedOut
                : outcome == "established" ? ConnectOutcome::kEstablished
                                           : ConnectOutcome::kFailed;
    c.side = side == "app" ? ConnectSide::kApp : ConnectSide::kUpstream;
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
        {"pod-c",
         "/var/run/netns/pod-c",
         drop("NETFILTER_DROP", kNow - 2000, "10.0.0.2:40000", "10.0.0.3:8080"),
         {}}};
    auto f = rule_kernel_drops(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kCritical);
    EXPECT_EQ(f->data.at("peer_drops.NETFILTER_DROP"), 1);
    EXPECT_EQ(f->data.at("failed_connects"), 1);
    EXPECT_NE(f->fix.find("/var/run/netns/pod-c"), std::string::npos);
    bool names_peer = false;
    bool peer_netns = false;
    for (const auto& e : f->evidence) {
        names_peer |= e.find("workload pod-c") != std::string::npos;
        // Issue 19 item 6: the drop happened in the peer's netns, not "a device of the pod".
        peer_netns |= e.find("on a device in the netns of workload pod-c") != std::string::npos;
        EXPECT_EQ(e.find("on a device of the pod"), std::string::npos) << e;
    }
    EXPECT_TRUE(names_peer);
    EXPECT_TRUE(peer_netns);
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
    d.hop = TlsHop::kProxyUpstream;
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
    EXPECT_EQ(d.hop, TlsHop::kProxyUpstream);  // 4 attempts there, 3 on the app's hop: never summed
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
    EXPECT_EQ(tie.destinations.front().hop, TlsHop::kApp);
    EXPECT_EQ(tie.destinations.front().address, "10.0.0.3:8443");
    EXPECT_EQ(tie.destinations.front().last_failure, "alert fatal 48 (unknown_ca)");
}

// Issue 19 item 1: refusals on the OUTBOUND side only name the outbound port, not 15006.
TEST(DiagnoseObserved, OutboundOnlyRefusalsNameTheOutboundPort) {
    auto in = observed_pod();
    in.spec.inbound_port = 15006;
    in.spec.outbound_port = 15001;
    in.observed->app_side.refused = 2;
    in.observed->app_side.refused_first_unix_ns = (kNow - 9000) * 1'000'000;
    in.observed->app_side.refused_last_unix_ns = (kNow - 8000) * 1'000'000;
    auto f = rule_refused_before_listen(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->code, "connection_refused_proxy_not_listening");
    EXPECT_NE(f->cause.find("outbound port 127.0.0.1:15001"), std::string::npos) << f->cause;
    EXPECT_EQ(f->cause.find("15006"), std::string::npos) << f->cause;
    EXPECT_NE(f->fix.find("holdApplicationUntilProxyStarts"), std::string::npos);
}

// Issue 19 item 2: a proxy killed mid-traffic is not "the app started first"; counts and times
// come from the kernel totals, not the 256-event ring.
TEST(DiagnoseObserved, CrashedProxyIsNotAStartupProblem) {
    auto in = observed_pod();
    in.spec.inbound_port = 15006;
    in.spec.outbound_port = 15001;
    const auto listened = kNow - 60000, first = kNow - 30000, last = kNow - 20000;
    in.startup = {0, 0, listened, listened};
    in.observed->app_side.refused = 614;
    in.observed->app_side.refused_first_unix_ns = first * 1'000'000;
    in.observed->app_side.refused_last_unix_ns = last * 1'000'000;
    in.observed->app_side.established_last_unix_ns = (first - 1) * 1'000'000;
    in.observed->app_refused_total = 614;
    for (int i = 0; i < 255; ++i)  // the ring kept the newest 255 only
        in.observed->connects.push_back(
            connect("refused", "app", last - 255 + i, "127.0.0.1:15001"));
    auto f = rule_refused_before_listen(in);  // and nothing listens now
    ASSERT_TRUE(f);
    EXPECT_EQ(f->code, "proxy_stopped_listening");
    EXPECT_EQ(f->severity, Severity::kCritical);
    EXPECT_EQ(f->data.at("outbound_refused"), 614);
    EXPECT_EQ(f->data.at("outbound_refused_first_unix_ms"), first);
    EXPECT_EQ(f->data.at("outbound_refused_last_unix_ms"), last);
    EXPECT_NE(f->evidence.front().find("614 outbound connect(s)"), std::string::npos)
        << f->evidence.front();
    EXPECT_EQ(f->evidence.front().find("255"), std::string::npos) << f->evidence.front();
    EXPECT_NE(f->cause.find("crashed, was killed or restarted"), std::string::npos) << f->cause;
    EXPECT_EQ(f->cause.find("started before the proxy"), std::string::npos) << f->cause;
    EXPECT_EQ(f->fix.find("holdApplicationUntilProxyStarts"), std::string::npos) << f->fix;
    EXPECT_NE(f->fix.find("--previous"), std::string::npos);

    // Restarted: it listens again after the last refusal -> resolved, info, when it ended.
    in.startup.listener_registered_last_unix_ms = last + 500;
    in.listeners =
        std::vector<ListenSocket>{ListenSocket{"127.0.0.1:15001", 15001, false, 1337, 1, {}},
                                  ListenSocket{"[::]:15006", 15006, true, 1337, 2, {}}};
    f = rule_refused_before_listen(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->code, "proxy_stopped_listening");
    EXPECT_EQ(f->severity, Severity::kInfo);
    EXPECT_TRUE(f->resolved());
    EXPECT_EQ(f->resolved_unix_ms, last + 500);
    EXPECT_EQ(f->cause.rfind("Resolved at ", 0), 0u) << f->cause;
}

// Findings describe the present: startup refusals followed by the listen are resolved.
TEST(DiagnoseObserved, StartupRefusalsEndWhenTheProxyListens) {
    auto in = observed_pod();
    in.counters["inbound_refused_no_listener"] = 3;
    in.startup = {kNow - 5000, kNow - 4000, kNow - 3000, kNow - 3000};
    in.listeners = std::vector<ListenSocket>{ListenSocket{"[::]:15006", 15006, true, 1337, 2, {}}};
    in.spec.inbound_port = 15006;
    auto f = rule_refused_before_listen(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->code, "connection_refused_proxy_not_listening");
    EXPECT_EQ(f->severity, Severity::kInfo);
    EXPECT_EQ(f->resolved_unix_ms, kNow - 3000);
    EXPECT_NE(f->cause.find("inbound port 15006"), std::string::npos);
    EXPECT_NE(f->cause.find("started before the proxy"), std::string::npos);
}

// Issue 19 item 3: the client's refused connects that are the SERVER pod's startup refusals
// are no critical kernel_dropped_packets with "start the server"; resolved once it listens.
TEST(DiagnoseObserved, PeerStartupRefusalsAreNotKernelDropsOfTheClient) {
    auto in = observed_pod();
    in.observed->connects = {connect("refused", "upstream", kNow - 9000, "10.0.0.3:8080"),
                             connect("refused", "upstream", kNow - 8000, "10.0.0.3:8080")};
    PeerRefusals refusals{2, kNow - 9000, kNow - 8000, 0, 15006};
    in.observed->peer_drops = {
        {"pod-c", "/var/run/netns/pod-c",
         drop("NO_SOCKET", kNow - 9000, "10.0.0.2:40000", "10.0.0.3:8080"), refusals},
        {"pod-c", "/var/run/netns/pod-c",
         drop("NO_SOCKET", kNow - 8000, "10.0.0.2:40002", "10.0.0.3:8080"), refusals}};
    EXPECT_FALSE(rule_kernel_drops(in));
    auto f = rule_peer_proxy_not_listening(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kWarning);
    EXPECT_EQ(f->fix.find("start the server"), std::string::npos);
    EXPECT_NE(f->fix.find("meshlane diagnose pod-c"), std::string::npos);
    EXPECT_NE(f->cause.find("not of the server app itself"), std::string::npos);
    for (auto& p : in.observed->peer_drops)
        p.refusals.listener_registered_last_unix_ms = kNow - 7000;
    f = rule_peer_proxy_not_listening(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kInfo);
    EXPECT_EQ(f->resolved_unix_ms, kNow - 7000);
    in.listeners.reset();  // this pod's own listeners are not the point here
    const auto all = diagnose(in);
    EXPECT_FALSE(has_critical(all));
}

// Findings describe the present: drops that broke connects, then connects succeed again.
TEST(DiagnoseObserved, KernelDropsResolvedWhenConnectsSucceedAgain) {
    auto in = observed_pod();
    in.observed->connects = {connect("timed_out", "upstream", kNow - 9000, "10.0.0.3:8080")};
    in.observed->drops = {drop("NETFILTER_DROP", kNow - 9500, "10.0.0.2:40000", "10.0.0.3:8080")};
    auto f = rule_kernel_drops(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kCritical);
    in.observed->upstream_side.established_last_unix_ns = (kNow - 1000) * 1'000'000;
    f = rule_kernel_drops(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kInfo);
    EXPECT_EQ(f->resolved_unix_ms, kNow - 9000);
    EXPECT_EQ(f->data.at("succeeded_since_unix_ms"), kNow - 1000);
}

// Issue 19 item 6: on the TLS server pod the inbound proxy's delivery to its own app is not
// "the proxy's upstream connection (sidecar mTLS)", and the pod rejected no certificate.
TEST(DiagnoseObserved, TlsServerPodIsNotTheSideThatRejected) {
    WorkloadTls tls;
    for (int i = 0; i < 3; ++i) {
        auto h = handshake("10.0.0.2:8443", "wire", "alert", 5, kNow - 3000 + i * 1000);
        h.side = "upstream";
        h.local = "127.0.0.6:40000";
        h.peer = "10.0.0.2:8443";  // the pod's own address
        h.alert_level = 2;
        h.alert_description = 48;
        tls.recent.push_back(h);
    }
    auto slow = handshake("10.0.0.2:8443", "wire", "ok", 900, kNow - 100);
    slow.side = "upstream";
    slow.peer = "10.0.0.2:8443";
    tls.recent.push_back(slow);
    const auto summary =
        summarize_tls(tls, std::chrono::milliseconds(200), kNow - 600000, {"10.0.0.2"});
    ASSERT_EQ(summary.destinations.size(), 1u);
    EXPECT_EQ(summary.destinations.front().hop, TlsHop::kInboundDelivery);
    auto in = observed_pod();
    in.tls = summary;
    auto f = rule_tls_handshakes(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kWarning);
    EXPECT_EQ(f->cause.find("this side rejected"), std::string::npos) << f->cause;
    EXPECT_NE(f->cause.find("rejected nothing itself"), std::string::npos) << f->cause;
    for (const auto& e : f->evidence) {
        EXPECT_EQ(e.find("sidecar mTLS"), std::string::npos) << e;
        EXPECT_NE(e.find("inbound proxy passing a client's TLS"), std::string::npos) << e;
    }
    // Slow handshakes alone on that hop: the app's handshake is slow, not "slow first request".
    in.tls->destinations.front().failures = 0;
    f = rule_tls_handshakes(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->cause.rfind("Slow TLS handshakes with this workload's app", 0), 0u) << f->cause;

    // The same handshakes from a proxy to ANOTHER pod stay the client's critical finding.
    const auto client =
        summarize_tls(tls, std::chrono::milliseconds(200), kNow - 600000, {"10.0.0.9"});
    EXPECT_EQ(client.destinations.front().hop, TlsHop::kInboundDelivery);  // 127.0.0.6 source
    for (auto& h : tls.recent) h.local = "10.0.0.9:40000";
    const auto upstream =
        summarize_tls(tls, std::chrono::milliseconds(200), kNow - 600000, {"10.0.0.9"});
    EXPECT_EQ(upstream.destinations.front().hop, TlsHop::kProxyUpstream);
}

TEST(DiagnoseObserved, EphemeralPortExhaustion) {
    auto in = observed_pod();
    EXPECT_FALSE(rule_port_exhaustion(in));
    in.observed->upstream_side.no_local_port = 5;
    in.observed->upstream_side.no_local_port_last_unix_ns = (kNow - 2000) * 1'000'000;
    in.observed->upstream_side.established_last_unix_ns = (kNow - 3000) * 1'000'000;
    in.local_port_range = "40000\t40003";
    in.time_wait = parse_time_wait("sockets: used 9\nTCP: inuse 5 orphan 0 tw 12 alloc 9 mem 1\n");
    ASSERT_TRUE(in.time_wait);
    auto c = connect("failed", "upstream", kNow - 2000, "10.0.0.3:8080");
    c.error = 99;
    in.observed->connects = {c};
    auto f = rule_port_exhaustion(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->code, "ephemeral_port_exhaustion");
    EXPECT_EQ(f->severity, Severity::kCritical);
    EXPECT_EQ(f->data.at("no_local_port.upstream"), 5);
    EXPECT_EQ(f->data.at("time_wait"), 12);
    std::string all;
    for (const auto& e : f->evidence) all += e + "\n";
    EXPECT_NE(all.find("5 connect(s) by the proxy to its upstreams"), std::string::npos) << all;
    EXPECT_NE(all.find("ip_local_port_range in the pod netns: 40000\t40003"), std::string::npos);
    EXPECT_NE(all.find("12 TCP socket(s) in TIME_WAIT"), std::string::npos);
    EXPECT_NE(all.find("e.g. connect to 10.0.0.3:8080"), std::string::npos);
    // A connect succeeded after the last failure: resolved.
    in.observed->upstream_side.established_last_unix_ns = (kNow - 1000) * 1'000'000;
    f = rule_port_exhaustion(in);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->severity, Severity::kInfo);
    EXPECT_EQ(f->resolved_unix_ms, kNow - 2000);
}

}  // namespace
}  // namespace meshlane::diagnose
