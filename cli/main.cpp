// `meshlane`: the agent daemon and its command-line client in one binary. Everything but
// `agent` talks to a running agent over its REST API (api/openapi.yaml): the unix socket, or its
// TLS listener with --server https://HOST:PORT.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <ctime>
#include <iostream>

#include "agent/daemon/agent.h"
#include "cli/commands.h"
#include "cli/diagnose_commands.h"
#include "cli/observe_commands.h"

namespace {

using meshlane::cli::EnrollFlags;

// The transport options, each also from an environment variable (a flag wins over it).
void add_transport_options(CLI::App& app, meshlane::cli::GlobalOptions& global) {
    app.add_option("--server", global.server,
                   "Agent API: unix socket path, or https://HOST:PORT for its TLS listener "
                   "(default /run/meshlane/api.sock)")
        ->envname("MESHLANE_SERVER");
    app.add_option("--cacert", global.ca_file,
                   "https: CA bundle (PEM) the agent's certificate must chain to (default: the "
                   "system store)")
        ->envname("MESHLANE_CACERT");
    app.add_option("--cert", global.cert_file, "https: client certificate (PEM)")
        ->envname("MESHLANE_CERT");
    app.add_option("--key", global.key_file, "https: client private key (PEM)")
        ->envname("MESHLANE_KEY");
    app.add_option("--token-file", global.token_file,
                   "https: file holding the bearer token that mutating calls need")
        ->envname("MESHLANE_TOKEN_FILE");
    app.footer(
        "Environment: MESHLANE_SERVER, MESHLANE_CACERT, MESHLANE_CERT, MESHLANE_KEY and "
        "MESHLANE_TOKEN_FILE set --server, --cacert, --cert, --key and --token-file; a flag on "
        "the command line wins. A file that cannot be read or parsed is a usage error (exit 2).");
}

void add_enroll_options(CLI::App& enroll, EnrollFlags& f) {
    auto& spec = f.spec;
    enroll.add_option("name", spec.name, "Workload name ([a-z0-9][a-z0-9._-]*, at most 63)")
        ->required();
    enroll.add_option("--cgroup", spec.cgroup_path, "Pod cgroup (absolute, or under cgroup2)")
        ->required();
    enroll.add_option("--netns", spec.netns_path, "Pod netns (/var/run/netns/X, /proc/PID/ns/net)")
        ->required();
    enroll.add_option("--proxy-uid", spec.proxy_uid, "uid of the proxy (istio -u)")
        ->capture_default_str();
    enroll.add_option("--proxy-gid", spec.proxy_gid, "gid of the proxy (istio -g)")
        ->capture_default_str();
    enroll.add_option("--outbound-port", spec.outbound_port, "Proxy outbound listener (istio -p)")
        ->capture_default_str();
    enroll.add_option("--inbound-port", spec.inbound_port, "Proxy inbound listener (istio -z)")
        ->capture_default_str();
    enroll.add_option("--exclude-outbound-ports", f.exclude_outbound_ports,
                      "Outbound ports never captured, comma-separated (istio -o)");
    enroll.add_option("--exclude-inbound-ports", f.exclude_inbound_ports,
                      "Inbound ports never captured (istio -d); 15008/15020/15021/15090 always");
    enroll.add_option("--include-cidrs", f.include_cidrs, "Captured destinations or * (istio -i)")
        ->capture_default_str();
    enroll.add_option("--exclude-cidrs", f.exclude_cidrs, "Destinations never captured (istio -x)");
    enroll.add_option("--include-ports", f.include_ports, "Captured inbound ports or * (istio -b)")
        ->capture_default_str();
    enroll.add_option("--include-outbound-ports", f.include_outbound_ports,
                      "Outbound ports captured regardless of CIDR (istio -q)");
    enroll.add_flag("--proxy-self-to-inbound", spec.proxy_self_to_inbound,
                    "Proxy calls to its own pod IP go to the inbound listener (needs a proxy "
                    "that binds 127.0.0.6 for inbound forwarding, like Envoy)");
    enroll
        .add_option("--startup-policy", f.startup_policy,
                    "Before the proxy listens: refuse inbound, or pass it to the app "
                    "(refuse|passthrough)")
        ->capture_default_str();
    // Bare --fast-path (as before kinds existed) means app-proxy.
    enroll
        .add_option("--fast-path", f.fast_path,
                    "Accelerate connections with sk_msg (docs/fastpath.md): app-proxy (app <-> "
                    "own proxy, outbound and inbound; the default when no KINDS are given) "
                    "and/or proxy-proxy (with other pods of this "
                    "node that enable it too), comma-separated. Off node-wide when the agent's "
                    "kernel self-test failed")
        ->expected(0, 1)
        ->default_str("app-proxy")
        ->type_name("[KINDS]");
    enroll.add_flag("--json", f.json, "Print the agent's JSON reply");
}

}  // namespace

int main(int argc, char** argv) {
    namespace cli = meshlane::cli;
    CLI::App app{"meshlane: eBPF traffic capture for Istio sidecars, instead of iptables"};
    app.require_subcommand(1);
    // Global options are accepted after the subcommand too: `meshlane workloads --server X`.
    app.fallthrough();
    cli::GlobalOptions global;
    add_transport_options(app, global);

    std::string config;
    auto* agent = app.add_subcommand("agent", "Run the per-node agent (serves the API)");
    agent->add_option("--config", config, "Configuration file (default: built-in)");

    EnrollFlags enroll_flags;
    auto* enroll = app.add_subcommand("enroll", "Capture a workload's traffic for its proxy");
    add_enroll_options(*enroll, enroll_flags);

    std::string name;
    bool json = false;
    auto* unenroll = app.add_subcommand("unenroll", "Stop capturing a workload (idempotent)");
    unenroll->add_option("name", name, "Workload name")->required();
    unenroll->add_flag("--json", json, "Print the agent's JSON reply");
    auto* workloads = app.add_subcommand("workloads", "List enrolled workloads");
    workloads->add_flag("--json", json, "Print the agent's JSON reply");
    auto* workload = app.add_subcommand("workload", "Show one workload in detail");
    workload->add_option("name", name, "Workload name")->required();
    workload->add_flag("--json", json, "Print the agent's JSON reply");
    auto* status = app.add_subcommand("status", "Show the agent's status");
    status->add_flag("--json", json, "Print the agent's JSON reply");
    auto* uninstall = app.add_subcommand(
        "uninstall", "Remove every link, pin and map meshlane created (agent must be stopped)");
    uninstall->add_option("--config", config, "The agent's configuration file (default: built-in)");

    auto* diagnose = app.add_subcommand(
        "diagnose",
        "Name the cause of interception failures: cause, evidence, fix (exit 4 when "
        "a critical finding exists)");
    auto* diagnose_name = diagnose->add_option("name", name, "Workload name");
    bool diagnose_all = false;
    diagnose
        ->add_flag("--all", diagnose_all,
                   "Every enrolled workload: one summary row each (exit 4 when any has a "
                   "critical finding)")
        ->excludes(diagnose_name);
    diagnose->add_flag("--json", json, "Print the agent's JSON reply");
    unsigned diagnose_window = 0;
    auto* diagnose_window_option =
        diagnose->add_option("--window", diagnose_window,
                             "Seconds of observations (drops, refused connects, TLS) to consider "
                             "(default 600)");
    std::string diagnose_since;
    diagnose
        ->add_option("--since", diagnose_since,
                     "Consider observations since a duration ago (90s, 10m, 2h, 1d) or a UTC "
                     "time (2026-12-07T23:00:00Z); instead of --window")
        ->excludes(diagnose_window_option);
    bool diagnose_follow = false;
    diagnose->add_flag("--follow", diagnose_follow,
                       "Re-evaluate every --interval seconds and print what changed (a finding "
                       "appears, changes severity, is resolved, leaves the window)");
    unsigned diagnose_interval = 2;
    diagnose->add_option("--interval", diagnose_interval, "Seconds between --follow evaluations")
        ->check(CLI::Range(1u, 3600u));
    auto* verify = app.add_subcommand(
        "verify", "Check interception hop by hop with an in-pod probe (exit 4 when a check fails)");
    verify->add_option("name", name, "Workload name")->required();
    verify->add_flag("--json", json, "Print the agent's JSON reply");

    cli::ObserveFlags observe_flags;
    auto* conns = app.add_subcommand("conns", "TCP connect latency, failures, retransmits, resets");
    auto* drops = app.add_subcommand("drops", "Kernel packet drops by reason, recent drop events");
    auto* tls = app.add_subcommand(
        "tls", "TLS-handshake latency and failures (wire and libssl), by destination");
    for (auto* view : {conns, drops, tls}) {
        view->add_option("--workload", observe_flags.workload, "Only this workload");
        view->add_option("--limit", observe_flags.limit, "Recent events to show")
            ->capture_default_str();
        view->add_flag("--json", observe_flags.json, "Print the agent's JSON reply");
    }
    drops->add_option("--reason", observe_flags.reason, "Only this reason, e.g. NETFILTER_DROP");
    for (auto* view : {conns, drops})
        view->add_flag("--follow,-f", observe_flags.follow,
                       "Stream new events as they happen (Ctrl-C ends); with --json as NDJSON");

    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {
        return app.exit(e);  // --help
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return cli::kExitUsage;
    }

    if (agent->parsed()) return meshlane::run_agent(config);
    // An empty MESHLANE_SERVER (e.g. `MESHLANE_SERVER= meshlane status`) means the default.
    if (global.server.empty()) global.server = cli::kDefaultServer;
    // Bad TLS material is the caller's mistake, not an unreachable agent: usage exit code.
    auto files = uninstall->parsed() ? meshlane::Status(meshlane::Ok{})
                                     : meshlane::rest::check_client_files(global);
    if (!files) {
        std::cerr << "meshlane: " << files.error().message << '\n';
        return cli::kExitUsage;
    }
    if (enroll->parsed()) return cli::run_enroll(global, enroll_flags);
    if (unenroll->parsed()) return cli::run_unenroll(global, name, json);
    if (workloads->parsed()) return cli::run_workloads(global, json);
    if (workload->parsed()) return cli::run_workload(global, name, json);
    if (status->parsed()) return cli::run_status(global, json);
    if (uninstall->parsed()) return cli::run_uninstall(config);
    if (diagnose->parsed() && !diagnose_since.empty()) {
        const auto window = cli::since_to_window(diagnose_since, std::time(nullptr));
        if (!window) {
            std::cerr << "meshlane diagnose: --since " << diagnose_since
                      << ": give a duration (90s, 10m, 2h, 1d) or a past UTC time "
                         "(2026-12-07T23:00:00Z)\n";
            return cli::kExitUsage;
        }
        diagnose_window = *window;
    }
    if (diagnose->parsed() && diagnose_follow && (diagnose_all || name.empty())) {
        std::cerr << "meshlane diagnose: --follow takes one workload NAME\n";
        return cli::kExitUsage;
    }
    if (diagnose->parsed() && diagnose_follow)
        return cli::run_diagnose_follow(global, name, json, diagnose_window, diagnose_interval);
    if (diagnose->parsed() && diagnose_all)
        return cli::run_diagnose_all(global, json, diagnose_window);
    if (diagnose->parsed() && name.empty()) {
        std::cerr << "meshlane diagnose: give a workload NAME or --all\n";
        return cli::kExitUsage;
    }
    if (diagnose->parsed()) return cli::run_diagnose(global, name, json, diagnose_window);
    if (verify->parsed()) return cli::run_verify(global, name, json);
    if (conns->parsed()) return cli::run_conns(global, observe_flags);
    if (drops->parsed()) return cli::run_drops(global, observe_flags);
    if (tls->parsed()) return cli::run_tls(global, observe_flags);
    return cli::kExitUsage;
}
