// `meshlane`: the agent daemon and its command-line client in one binary. Everything but
// `agent` talks to a running agent over its REST API (api/openapi.yaml): the unix socket, or its
// TLS listener with --server https://HOST:PORT.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <optional>

#include "agent/daemon/agent.h"
#include "cli/build_info.h"
#include "cli/cli_docs.h"
#include "cli/commands.h"
#include "cli/diagnose_commands.h"
#include "cli/observe_commands.h"
#include "cli/version_command.h"

namespace {

namespace cli = meshlane::cli;
using meshlane::cli::EnrollFlags;

// The transport options, each also from an environment variable (a flag wins over it).
void add_transport_options(CLI::App& app, meshlane::cli::GlobalOptions& global) {
    app.add_option("--server", global.server,
                   "Agent API: unix socket path, or https://HOST:PORT for its TLS listener "
                   "(default /run/meshlane/api.sock)")
        ->envname("MESHLANE_SERVER")
        ->type_name("SOCKET|URL");
    app.add_option("--cacert", global.ca_file,
                   "https: CA bundle (PEM) the agent's certificate must chain to (default: the "
                   "system store)")
        ->envname("MESHLANE_CACERT")
        ->type_name("FILE");
    app.add_option("--cert", global.cert_file, "https: client certificate (PEM)")
        ->envname("MESHLANE_CERT")
        ->type_name("FILE");
    app.add_option("--key", global.key_file, "https: client private key (PEM)")
        ->envname("MESHLANE_KEY")
        ->type_name("FILE");
    app.add_option("--token-file", global.token_file,
                   "https: file holding the bearer token that mutating calls need")
        ->envname("MESHLANE_TOKEN_FILE")
        ->type_name("FILE");
    app.footer(
        "Environment: MESHLANE_SERVER, MESHLANE_CACERT, MESHLANE_CERT, MESHLANE_KEY and "
        "MESHLANE_TOKEN_FILE set --server, --cacert, --cert, --key and --token-file; a flag on "
        "the command line wins. A file that cannot be read or parsed is a usage error (exit 2).\n" +
        meshlane::cli::exit_status_summary());
}

void add_enroll_options(CLI::App& enroll, EnrollFlags& f) {
    auto& spec = f.spec;
    enroll.add_option("name", spec.name, "Workload name ([a-z0-9][a-z0-9._-]*, at most 63)")
        ->required();
    enroll.add_option("--cgroup", spec.cgroup_path, "Pod cgroup (absolute, or under cgroup2)")
        ->required()
        ->type_name("PATH");
    enroll.add_option("--netns", spec.netns_path, "Pod netns (/var/run/netns/X, /proc/PID/ns/net)")
        ->required()
        ->type_name("PATH");
    enroll
        .add_option("--proxy-uid", f.proxy_uids, "uid(s) of the proxy, comma-separated (istio -u)")
        ->capture_default_str();
    enroll
        .add_option("--proxy-gid", f.proxy_gids, "gid(s) of the proxy, comma-separated (istio -g)")
        ->capture_default_str();
    enroll
        .add_option("--ip-families", f.ip_families,
                    "Families captured: ipv4, ipv6 or both (istio: IPv6 only with ip6tables)")
        ->capture_default_str();
    enroll
        .add_option("--host-loopback-cidr", f.host_loopback_cidr,
                    "IPv4 localhost never captured, inside 127.0.0.0/8 "
                    "(istio --host-ipv4-loopback-cidr)")
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
        ->capture_default_str()
        ->type_name("refuse|passthrough");
    // Bare --fast-path (as before kinds existed) means app-proxy.
    enroll
        .add_option("--fast-path", f.fast_path,
                    "Accelerate connections with sk_msg (docs/fastpath.md): app-proxy (app <-> "
                    "own proxy, outbound and inbound; the default when no KINDS are given) "
                    "and/or proxy-proxy (with other pods of this "
                    "node that enable it too), comma-separated. Off node-wide when the agent's "
                    "kernel self-test failed; app-proxy stays off where a blocking recv() on an "
                    "accelerated socket can get EAGAIN (see meshlane status)")
        ->expected(0, 1)
        ->default_str("app-proxy")
        ->type_name("[KINDS]");
    enroll
        .add_option("--dns-capture", f.dns_capture,
                    "Send DNS (port 53, UDP and TCP) to the proxy's DNS listener: off, "
                    "nameservers (only to --dns-servers; istio-init with ISTIO_META_DNS_CAPTURE) "
                    "or all (any address; istio --capture-all-dns, istio-cni)")
        ->capture_default_str();
    enroll
        .add_option("--dns-port", spec.dns_port,
                    "Proxy DNS listener on 127.0.0.1/::1 (Istio: 15053)")
        ->capture_default_str();
    enroll.add_option("--dns-servers", f.dns_servers,
                      "Nameserver addresses captured with --dns-capture nameservers, "
                      "comma-separated: the nameserver lines of the pod's /etc/resolv.conf");
    enroll.add_flag("--json", f.json, "Print the agent's JSON reply");
}

// The commands every CLI is expected to have: help, version, shell completion, and the hidden
// `man` the build renders the man page with.
struct ConventionCommands {
    CLI::App* help = nullptr;
    std::string help_topic;
    CLI::App* version = nullptr;
    bool version_json = false;
    CLI::App* completion = nullptr;
    std::string shell;
    CLI::App* man = nullptr;
};

ConventionCommands add_convention_commands(CLI::App& app) {
    ConventionCommands c;
    c.help = app.add_subcommand("help", "Show the commands, or one command's options");
    c.help->add_option("command", c.help_topic, "Command to describe")->type_name("COMMAND");
    c.version = app.add_subcommand(
        "version",
        "Show version, git revision and build flags; with --json also the kernel and the "
        "features the running agent probed");
    c.version->add_flag("--json", c.version_json, "Print JSON");
    c.completion = app.add_subcommand(
        "completion", "Print the shell completion script: source <(meshlane completion bash)");
    c.completion->add_option("shell", c.shell, "Shell")->required()->type_name("bash|zsh");
    c.man = app.add_subcommand("man", "Print the man page source (roff)");
    c.man->group("");  // hidden: the build's tool, not a user command
    return c;
}

const cli::ManPageInfo& man_page_info() {
    static const cli::ManPageInfo info{
        cli::build_info().version,
        "meshlane replaces the iptables traffic capture of a service-mesh sidecar (Istio) with "
        "eBPF programs: outbound TCP connections of an enrolled workload (a pod: one cgroup v2 "
        "and one network namespace) land on the sidecar's outbound listener, inbound ones on "
        "its inbound listener, with the Istio exclusion rules.\n\n"
        "One binary is both the per-node agent (meshlane agent), which loads and pins the BPF "
        "programs and serves a REST API on a unix socket (and gRPC), and the command-line "
        "client of that API: every other command talks to a running agent. Stopping the agent "
        "leaves interception running; meshlane uninstall removes it.",
        {"/etc/meshlane/meshlane.conf\tThe agent's configuration (every key documented).",
         "/run/meshlane/api.sock\tThe REST API socket (mode 0600).",
         "/run/meshlane/grpc.sock\tThe gRPC API socket (mode 0600).",
         "/sys/fs/bpf/meshlane\tThe pinned programs, links and maps.",
         "/usr/share/doc/meshlane\tREADME and the documentation (docs/)."},
        {"systemctl(1)", "bpftool(8)", "meshlane.service (systemd unit)"}};
    return info;
}

// Words CLI11 could not place: a mistyped command gets the closest one suggested.
int check_leftovers(const CLI::App& app) {
    const std::vector<std::string> left = app.remaining(true);
    if (left.empty()) return cli::kExitOk;
    const std::vector<CLI::App*> chosen = app.get_subcommands();
    if (!chosen.empty() || left.front().starts_with("-")) {
        const std::string command =
            "meshlane" + (chosen.empty() ? "" : " " + chosen.front()->get_name());
        std::cerr << command << ": unexpected argument '" << left.front() << "' ("
                  << (chosen.empty() ? "meshlane help"
                                     : "meshlane help " + chosen.front()->get_name())
                  << " lists what it takes)\n";
        return cli::kExitUsage;
    }
    std::cerr << "meshlane: unknown command '" << left.front() << "'";
    if (auto guess = cli::closest_subcommand(app, left.front()); !guess.empty())
        std::cerr << "; did you mean '" << guess << "'?";
    std::cerr << "\nRun 'meshlane help' for the list of commands.\n";
    return cli::kExitUsage;
}

int run_help(const CLI::App& app, const std::string& topic) {
    if (topic.empty()) {
        // Not app.help(): with `help` itself parsed, that describes the `help` subcommand.
        std::cout << app.get_formatter()->make_help(&app, app.get_name(),
                                                    CLI::AppFormatMode::Normal);
        return cli::kExitOk;
    }
    for (const CLI::App* sub : cli::visible_subcommands(app))
        if (sub->get_name() == topic) {
            std::cout << sub->help(app.get_name());
            return cli::kExitOk;
        }
    std::cerr << "meshlane help: unknown command '" << topic << "'";
    if (auto guess = cli::closest_subcommand(app, topic); !guess.empty())
        std::cerr << "; did you mean '" << guess << "'?";
    std::cerr << '\n';
    return cli::kExitUsage;
}

// help, version, completion, man, or no command at all; nullopt for the others.
std::optional<int> run_convention_command(const CLI::App& app, const ConventionCommands& c,
                                          cli::GlobalOptions& global) {
    if (app.get_subcommands().empty()) {
        std::cerr << app.help();
        return cli::kExitUsage;
    }
    if (c.help->parsed()) return run_help(app, c.help_topic);
    if (c.completion->parsed() && c.shell != "bash" && c.shell != "zsh") {
        std::cerr << "meshlane completion: no completion for '" << c.shell << "' (bash or zsh)\n";
        return cli::kExitUsage;
    }
    if (c.completion->parsed()) {
        std::cout << (c.shell == "bash" ? cli::bash_completion(app) : cli::zsh_completion(app));
        return cli::kExitOk;
    }
    if (c.man->parsed()) {
        std::cout << cli::man_page(app, man_page_info());
        return cli::kExitOk;
    }
    if (c.version->parsed()) {
        if (global.server.empty()) global.server = cli::kDefaultServer;
        return cli::run_version(global, c.version_json);
    }
    return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"eBPF traffic capture for Istio sidecars, instead of iptables", "meshlane"};
    // No subcommand prints the help (exit 2); more than one is a usage error.
    app.require_subcommand(0, 1);
    // Global options are accepted after the subcommand too: `meshlane workloads --server X`.
    app.fallthrough();
    app.set_version_flag(
        "--version", [] { return cli::version_text(); },
        "Print version, git revision and build flags, and exit");
    cli::GlobalOptions global;
    add_transport_options(app, global);

    std::string config;
    auto* agent = app.add_subcommand("agent", "Run the per-node agent (serves the API)");
    agent->add_option("--config", config, "Configuration file (default: built-in)")
        ->type_name("FILE");

    EnrollFlags enroll_flags;
    auto* enroll = app.add_subcommand("enroll", "Capture a workload's traffic for its proxy");
    add_enroll_options(*enroll, enroll_flags);

    std::string name;
    bool json = false;
    auto* unenroll = app.add_subcommand("unenroll", "Stop capturing a workload (idempotent)");
    unenroll->add_option("name", name, "Workload name")->required()->type_name("WORKLOAD");
    unenroll->add_flag("--json", json, "Print the agent's JSON reply");
    auto* workloads = app.add_subcommand("workloads", "List enrolled workloads");
    workloads->add_flag("--json", json, "Print the agent's JSON reply");
    auto* workload = app.add_subcommand("workload", "Show one workload in detail");
    workload->add_option("name", name, "Workload name")->required()->type_name("WORKLOAD");
    workload->add_flag("--json", json, "Print the agent's JSON reply");
    auto* status = app.add_subcommand(
        "status",
        "Show the agent's status (exit 0 ready, 5 not ready: interception disabled, 6 degraded: "
        "an optional part is off; the reason is printed)");
    status->add_flag("--json", json, "Print the agent's JSON reply");
    auto* uninstall = app.add_subcommand(
        "uninstall", "Remove every link, pin and map meshlane created (agent must be stopped)");
    uninstall->add_option("--config", config, "The agent's configuration file (default: built-in)")
        ->type_name("FILE");

    auto* diagnose = app.add_subcommand(
        "diagnose",
        "Name the cause of interception failures: cause, evidence, fix (exit 4 when "
        "a critical finding exists)");
    auto* diagnose_name =
        diagnose->add_option("name", name, "Workload name")->type_name("WORKLOAD");
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
    verify->add_option("name", name, "Workload name")->required()->type_name("WORKLOAD");
    verify->add_flag("--json", json, "Print the agent's JSON reply");

    cli::ObserveFlags observe_flags;
    auto* conns = app.add_subcommand("conns", "TCP connect latency, failures, retransmits, resets");
    auto* drops = app.add_subcommand("drops", "Kernel packet drops by reason, recent drop events");
    auto* tls = app.add_subcommand(
        "tls", "TLS-handshake latency and failures (wire and libssl), by destination");
    for (auto* view : {conns, drops, tls}) {
        view->add_option("--workload", observe_flags.workload, "Only this workload")
            ->type_name("WORKLOAD");
        view->add_option("--limit", observe_flags.limit, "Recent events to show")
            ->capture_default_str();
        view->add_flag("--json", observe_flags.json, "Print the agent's JSON reply");
    }
    drops->add_option("--reason", observe_flags.reason, "Only this reason, e.g. NETFILTER_DROP");
    for (auto* view : {conns, drops})
        view->add_flag("--follow,-f", observe_flags.follow,
                       "Stream new events as they happen (Ctrl-C ends); with --json as NDJSON");

    ConventionCommands conventions = add_convention_commands(app);
    // Unknown words are collected, not thrown, so a typo gets a suggestion (check_leftovers).
    // After the subcommands exist: they inherit the setting, and must not.
    app.allow_extras();
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {
        return app.exit(e);  // --help, --version
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return cli::kExitUsage;
    }
    if (int code = check_leftovers(app); code != cli::kExitOk) return code;
    if (auto code = run_convention_command(app, conventions, global)) return *code;

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
