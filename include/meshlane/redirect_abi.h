/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The structs and constants that cross the BPF / agent boundary for the redirect datapath.
 * Defined once here; the BPF programs and the agent both include this file. Every struct is a map
 * key or value, so layouts are explicit (no implicit padding) and must only grow at the end.
 */
#ifndef MESHLANE_REDIRECT_ABI_H
#define MESHLANE_REDIRECT_ABI_H

#ifndef __BPF__
#include <linux/types.h>
#endif

/* Pins live under <bpffs>/MESHLANE_PIN_DIR_NAME. */
#define MESHLANE_PIN_DIR_NAME "meshlane"

/* Istio defaults (tools/istio-iptables). */
#define MESHLANE_DEFAULT_PROXY_UID 1337
#define MESHLANE_DEFAULT_OUTBOUND_PORT 15001
#define MESHLANE_DEFAULT_INBOUND_PORT 15006
/* ISTIO_INBOUND always returns 15008 (HBONE); the injector always excludes these inbound. */
#define MESHLANE_INBOUND_TUNNEL_PORT 15008
#define MESHLANE_ALWAYS_EXCLUDED_INBOUND_PORTS \
    { 15008, 15020, 15021, 15090 }
/* Source address Envoy binds for inbound passthrough; ISTIO_OUTPUT returns it unconditionally. */
#define MESHLANE_INBOUND_PASSTHROUGH_V4 0x7f000006u /* 127.0.0.6, host order */
/* DNS capture: the port captured, and Istio's DNS listener (IstioAgentDNSListenerPort). */
#define MESHLANE_DNS_PORT 53
#define MESHLANE_DEFAULT_DNS_LISTENER_PORT 15053

#define MESHLANE_MAX_WORKLOADS_DEFAULT 4096
#define MESHLANE_MAX_PORT_RULES 65536
#define MESHLANE_MAX_CIDR_RULES 65536
#define MESHLANE_MAX_PENDING_ORIG_DST 65536

/* workload_config.flags */
enum meshlane_workload_flag {
    /* include-cidrs is "*": every destination not excluded is captured. */
    MESHLANE_WL_INCLUDE_ALL_CIDRS = 1u << 0,
    /* include-ports is "*": every inbound port not excluded is captured. */
    MESHLANE_WL_INCLUDE_ALL_INBOUND_PORTS = 1u << 1,
    /* Istio's "uid 1337 -o lo ! -d 127.0.0.1 -> ISTIO_IN_REDIRECT": the proxy calling its own pod
     * IP goes to the inbound listener. Off by default, because a proxy that does not bind
     * 127.0.0.6 for its inbound forwarding (anything but Envoy) would then loop. */
    MESHLANE_WL_PROXY_SELF_TO_INBOUND = 1u << 2,
    /* Startup policy: before the proxy's inbound listener exists, let inbound connections go
     * straight to the app instead of refusing them. */
    MESHLANE_WL_STARTUP_PASSTHROUGH = 1u << 3,
    /* The include CIDRs hold a loopback range (istio-iptables' HasLoopBackIP): Istio then drops
     * its "-o lo ! --uid-owner/--gid-owner -j RETURN" rules, so the app's traffic over lo goes on
     * to the CIDR and port rules, and every listed proxy uid/gid reaches the ISTIO_IN_REDIRECT
     * rule. Derived from include_cidrs by the agent. */
    MESHLANE_WL_INCLUDE_HAS_LOOPBACK = 1u << 4,
    /* More proxy uids/gids than workload_config's first one are listed in proxy_ids. */
    MESHLANE_WL_MORE_PROXY_IDS = 1u << 5,
    /* Leave IPv4 / IPv6 alone (istio-iptables without ip6tables rules leaves IPv6 alone). A
     * v4-mapped IPv6 destination is IPv4 here, as it is on the wire. */
    MESHLANE_WL_NO_CAPTURE_V4 = 1u << 6,
    MESHLANE_WL_NO_CAPTURE_V6 = 1u << 7,
    /* The IPv4 "localhost" of the ISTIO_OUTPUT rules is not 127.0.0.1/32 but the
     * MESHLANE_CIDR_HOST_LOOPBACK entry (istio-iptables --host-ipv4-loopback-cidr). */
    MESHLANE_WL_CUSTOM_HOST_LOOPBACK = 1u << 8,
    /* DNS capture (include/meshlane/dns_capture_rules.h), Istio's ISTIO_META_DNS_CAPTURE: port 53
     * to the nameservers in cidr_rules (MESHLANE_CIDR_DNS_SERVER) goes to the proxy's DNS
     * listener on workload_config.dns_port. High bits, so other flags can grow from the bottom. */
    MESHLANE_WL_DNS_CAPTURE_NAMESERVERS = 1u << 16,
    /* ... or port 53 to any address (istio-iptables --capture-all-dns; istio-cni's mode). */
    MESHLANE_WL_DNS_CAPTURE_ALL = 1u << 17,
};

/* Value of workload_by_netns, keyed by the pod network namespace cookie (u64). */
struct workload_config {
    __u32 workload_id; /* dense id < max workloads; index into per-workload arrays */
    __u32 flags;       /* enum meshlane_workload_flag */
    __u32 proxy_uid;
    __u32 proxy_gid;
    __u16 outbound_port; /* host order */
    __u16 inbound_port;  /* host order */
    __u16 dns_port;      /* host order; the proxy's DNS listener (Istio: 15053) */
    __u16 reserved;
};

/* Key of port_rules; the value is a __u8 that is always 1 (presence is the rule). */
enum meshlane_port_rule_kind {
    MESHLANE_PORT_EXCLUDE_OUTBOUND = 1,
    MESHLANE_PORT_EXCLUDE_INBOUND = 2,
    MESHLANE_PORT_INCLUDE_INBOUND = 3,
    MESHLANE_PORT_INCLUDE_OUTBOUND = 4,
};

struct port_rule_key {
    __u32 workload_id;
    __u16 port; /* host order */
    __u8 kind;  /* enum meshlane_port_rule_kind */
    __u8 reserved;
};

/* Key of cidr_rules, an LPM trie. Addresses are always 16 bytes: IPv4 as v4-mapped IPv6
 * (::ffff:a.b.c.d), so one trie serves both families. prefixlen counts the workload id and kind
 * words too: MESHLANE_CIDR_KEY_PREFIX_BITS + address prefix (+96 for IPv4). */
enum meshlane_cidr_kind {
    MESHLANE_CIDR_EXCLUDE = 1,
    MESHLANE_CIDR_INCLUDE = 2,
    /* An address configured inside the pod netns: traffic to it leaves through "lo". */
    MESHLANE_CIDR_POD_LOCAL = 3,
    /* istio-iptables --host-ipv4-loopback-cidr (IPv4 only; see MESHLANE_WL_CUSTOM_HOST_LOOPBACK).
     */
    MESHLANE_CIDR_HOST_LOOPBACK = 4,
    /* A nameserver whose port-53 traffic DNS capture sends to the proxy (istio-iptables'
     * DNSServersV4/V6, read from the pod's /etc/resolv.conf by istio-init). Host prefixes. */
    MESHLANE_CIDR_DNS_SERVER = 5,
};

#define MESHLANE_CIDR_KEY_PREFIX_BITS 64
/* The kind word also carries the family, so an IPv6 prefix such as ::/0 never covers the
 * v4-mapped form of IPv4 addresses (istio-iptables keeps v4 and v6 ranges apart too). */
#define MESHLANE_CIDR_KEY_KIND(kind, is_v4) (((__u32)(kind) << 8) | ((is_v4) ? 4u : 6u))

struct cidr_rule_key {
    __u32 prefixlen;
    __u32 workload_id; /* network order, so the LPM prefix compares it first */
    __u32 kind;        /* MESHLANE_CIDR_KEY_KIND(), network order */
    __u8 addr[16];
};

/* Key of proxy_ids (a hash; the value is a __u8 that is always 1): the proxy uids/gids after the
 * first, which workload_config holds (istio-iptables -u 3,4 -g 1,2). */
enum meshlane_proxy_id_kind {
    MESHLANE_PROXY_ID_UID = 1,
    MESHLANE_PROXY_ID_GID = 2,
};

struct proxy_id_key {
    __u32 workload_id;
    __u32 kind; /* enum meshlane_proxy_id_kind */
    __u32 id;
};

#define MESHLANE_MAX_PROXY_IDS 65536

/* What the redirect remembered about one connection. */
enum meshlane_orig_dst_direction {
    MESHLANE_DIR_OUTBOUND = 1, /* app -> outbound listener */
    MESHLANE_DIR_INBOUND = 2,  /* proxy -> own pod IP sent to the inbound listener */
    MESHLANE_DIR_DNS = 3,      /* app -> nameserver:53 sent to the proxy's DNS listener */
};

/* Which socket an orig_dst in orig_dst_by_socket is attached to: the app's connecting socket
 * (getpeername answers from it) or the proxy's accepted socket (SO_ORIGINAL_DST answers). */
enum meshlane_orig_dst_role {
    MESHLANE_ROLE_APP_SOCKET = 1,
    MESHLANE_ROLE_PROXY_SOCKET = 2,
    /* An app's unconnected UDP socket that sent a DNS query through the proxy (cgroup/sendmsg):
     * recvmsg reports replies from the DNS listener as coming from this address; getpeername
     * never answers from it (the socket is not connected). */
    MESHLANE_ROLE_DNS_DATAGRAM = 3,
};

struct orig_dst {
    __u8 addr[16];  /* v4-mapped for IPv4 */
    __u16 port;     /* host order */
    __u8 family;    /* AF_INET or AF_INET6 of the original destination */
    __u8 direction; /* enum meshlane_orig_dst_direction */
    __u32 workload_id;
    __u64 app_socket_cookie;
    __u64 redirected_at_ns; /* bpf_ktime_get_ns() at connect() */
    __u32 role;             /* enum meshlane_orig_dst_role */
    __u32 reserved;
};

/* Key of orig_dst_by_tuple: the connection as the proxy's accepted socket sees it. Lives only
 * from the app's TCP connect until the proxy side is established (then moved into the accepted
 * socket's local storage) or the app's socket closes, so a recycled 4-tuple never finds a
 * stale entry. */
struct proxy_tuple_key {
    __u8 proxy_addr[16]; /* v4-mapped for IPv4 */
    __u8 peer_addr[16];
    __u16 proxy_port; /* host order */
    __u16 peer_port;  /* host order */
    __u32 reserved;
};

/* Slots of inbound_listener (SOCKMAP): the proxy's inbound listening sockets per workload. */
#define MESHLANE_LISTENER_SLOT_V4 0
#define MESHLANE_LISTENER_SLOT_V6 1
#define MESHLANE_LISTENER_SLOTS 2

/* Per-workload counters: redirect_counters is a PERCPU_ARRAY indexed by
 * workload_id * MESHLANE_REDIRECT_COUNTER_STRIDE + counter. The stride is fixed so that adding
 * a counter does not change the pinned map's size (an agent upgrade re-uses it). Names in
 * agent/ must match the order. */
#define MESHLANE_REDIRECT_COUNTER_STRIDE 32
enum meshlane_redirect_counter {
    MESHLANE_CNT_OUTBOUND_REDIRECTED = 0,
    MESHLANE_CNT_OUTBOUND_PASS_EXCLUDED_PORT,
    MESHLANE_CNT_OUTBOUND_PASS_INBOUND_PASSTHROUGH_SOURCE,
    MESHLANE_CNT_OUTBOUND_PASS_LOOPBACK,
    MESHLANE_CNT_OUTBOUND_PASS_PROXY_OWNER,
    MESHLANE_CNT_OUTBOUND_PASS_EXCLUDED_CIDR,
    MESHLANE_CNT_OUTBOUND_PASS_NOT_INCLUDED,
    MESHLANE_CNT_OUTBOUND_PROXY_SELF_TO_INBOUND,
    MESHLANE_CNT_INBOUND_STEERED,
    MESHLANE_CNT_INBOUND_PASS_EXCLUDED_PORT,
    MESHLANE_CNT_INBOUND_PASS_LOCAL_SOURCE,
    MESHLANE_CNT_INBOUND_REFUSED_NO_LISTENER,
    MESHLANE_CNT_INBOUND_STARTUP_PASSTHROUGH,
    MESHLANE_CNT_ORIG_DST_ANSWERED,
    MESHLANE_CNT_ORIG_DST_MISS,
    MESHLANE_CNT_ORIG_DST_TUPLE_LOST,
    MESHLANE_CNT_PROXY_LISTENER_REGISTERED,
    MESHLANE_CNT_GETPEERNAME_REWRITTEN,
    MESHLANE_CNT_OUTBOUND_STARTUP_PASSTHROUGH,
    MESHLANE_CNT_OUTBOUND_PASS_FAMILY_NOT_CAPTURED,
    MESHLANE_CNT_INBOUND_PASS_FAMILY_NOT_CAPTURED,
    /* DNS capture (dns_decide) */
    MESHLANE_CNT_DNS_REDIRECTED_UDP,
    MESHLANE_CNT_DNS_REDIRECTED_TCP,
    MESHLANE_CNT_DNS_PASS_PROXY_OWNER,
    MESHLANE_CNT_DNS_PASS_NOT_NAMESERVER,
    MESHLANE_CNT_DNS_REPLY_SOURCE_RESTORED,
    /* Accepted on the outbound port with no redirect record: a direct connect to the proxy
     * port (health check, a client configured with 127.0.0.1:15001) or a connect from outside
     * the pod cgroup. ORIG_DST_TUPLE_LOST counts only records that existed and were not found
     * by the proxy's accept (the app's redirected socket established, its record unconsumed). */
    MESHLANE_CNT_ORIG_DST_NOT_REDIRECTED,
    MESHLANE_REDIRECT_COUNTER_MAX
};
/* Kernel times (bpf_ktime_get_ns, CLOCK_MONOTONIC) kept in the LAST slots of each workload's
 * redirect_counters stride, so counters can grow from the front without a new map or a resized
 * pin. Per CPU: a FIRST slot is set once (0 = never), a LAST slot on every event; the agent
 * takes the earliest non-zero FIRST and the latest LAST across CPUs. They date startup
 * refusals exactly: "N refused between T1 and T2, the proxy's listener registered at T3". */
enum meshlane_redirect_time {
    MESHLANE_TIME_INBOUND_REFUSED_FIRST = MESHLANE_REDIRECT_COUNTER_STRIDE - 4,
    MESHLANE_TIME_INBOUND_REFUSED_LAST,
    MESHLANE_TIME_LISTENER_REGISTERED_FIRST,
    MESHLANE_TIME_LISTENER_REGISTERED_LAST,
};
#ifdef __cplusplus
static_assert((int)MESHLANE_REDIRECT_COUNTER_MAX <= (int)MESHLANE_TIME_INBOUND_REFUSED_FIRST,
              "grow the stride");
#else
_Static_assert((int)MESHLANE_REDIRECT_COUNTER_MAX <= (int)MESHLANE_TIME_INBOUND_REFUSED_FIRST,
               "grow the stride");
#endif

#endif /* MESHLANE_REDIRECT_ABI_H */
