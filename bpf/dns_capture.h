/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * DNS capture, the BPF side shared by redirect_outbound.bpf.c (connect4/6: TCP and connected UDP)
 * and dns_capture.bpf.c (sendmsg4/6 and recvmsg4/6: unconnected UDP). The decision itself is
 * dns_decide() in include/meshlane/dns_capture_rules.h; this file gathers its facts and applies
 * the verdict. docs/dns-capture.md explains the design.
 */
#ifndef MESHLANE_BPF_DNS_CAPTURE_H
#define MESHLANE_BPF_DNS_CAPTURE_H

// clang-format off
#include "redirect_common.h" /* vmlinux.h first */
#include "meshlane/dns_capture_rules.h"
// clang-format on

#define SOCK_DGRAM 2
#define IPPROTO_UDP 17

#define MESHLANE_WL_DNS_CAPTURE_ANY \
    (MESHLANE_WL_DNS_CAPTURE_NAMESERVERS | MESHLANE_WL_DNS_CAPTURE_ALL)

static __always_inline bool dns_capture_enabled(const struct workload_config* cfg) {
    return (cfg->flags & MESHLANE_WL_DNS_CAPTURE_ANY) && cfg->dns_port != 0;
}

/* Applies dns_decide to one connect()/sendmsg() to dst:53. Returns the verdict and counts it. */
static __always_inline enum dns_verdict dns_capture_decide(struct bpf_sock_addr* ctx,
                                                           const struct workload_config* cfg,
                                                           const __u8 dst[16], bool is_tcp) {
    __u32 wid = cfg->workload_id;
    __u64 uid_gid = bpf_get_current_uid_gid();
    /* Istio's DNS chain lives in the same iptables/ip6tables rule sets as ISTIO_OUTPUT: a family
     * that is not captured is not DNS-captured either. */
    struct dns_facts facts = {
        .capture = dns_capture_enabled(cfg) && family_captured(cfg, addr_is_v4_mapped(dst)),
        .capture_all = !!(cfg->flags & MESHLANE_WL_DNS_CAPTURE_ALL),
        .is_tcp = is_tcp,
        /* Every listed proxy uid/gid (istio -u 3,4 -g 1,2), as ISTIO_OUTPUT's owner rules. */
        .uid_is_proxy = is_proxy_id(cfg, MESHLANE_PROXY_ID_UID, (__u32)uid_gid),
        .gid_is_proxy = is_proxy_id(cfg, MESHLANE_PROXY_ID_GID, (__u32)(uid_gid >> 32)),
        .proxy_self_to_inbound = !!(cfg->flags & MESHLANE_WL_PROXY_SELF_TO_INBOUND),
    };
    if (facts.capture) {
        facts.dst_port_excluded =
            is_tcp && port_rule(wid, MESHLANE_PORT_EXCLUDE_OUTBOUND, MESHLANE_DNS_PORT);
        facts.dst_is_local = addr_is_pod_local(wid, dst);
        if (facts.dst_is_local) {
            struct bpf_sock* sk = ctx->sk;
            /* An unbound UDP socket has no source yet; the kernel picks one per datagram. */
            if (sk) {
                __u8 src[16];
                sock_src_addr(sk, src);
                facts.bound_to_passthrough = outbound_source_is_passthrough(src, dst);
            }
            facts.dst_is_localhost = addr_is_localhost(dst);
        }
        if (!facts.capture_all && !facts.uid_is_proxy && !facts.gid_is_proxy)
            facts.dst_is_nameserver = cidr_match(wid, MESHLANE_CIDR_DNS_SERVER, dst);
    }
    __u32 counter = MESHLANE_REDIRECT_COUNTER_MAX;
    enum dns_verdict verdict = dns_decide(&facts, &counter);
    count(wid, counter);
    return verdict;
}

/* Remembers dst:port on the socket in `role`, so getpeername (connected sockets) or recvmsg
 * (replies) can give the app the address it asked for. False when out of memory. */
static __always_inline bool dns_remember(struct bpf_sock_addr* ctx,
                                         const struct workload_config* cfg, const __u8 dst[16],
                                         __u16 dst_port, __u8 family, __u8 direction, __u32 role) {
    struct bpf_sock* sk = ctx->sk;
    if (!sk) return false;
    struct orig_dst* orig =
        bpf_sk_storage_get(&orig_dst_by_socket, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!orig) return false;
    __builtin_memcpy(orig->addr, dst, 16);
    orig->port = dst_port;
    orig->family = family;
    orig->direction = direction;
    orig->workload_id = cfg->workload_id;
    orig->app_socket_cookie = bpf_get_socket_cookie(ctx);
    orig->redirected_at_ns = bpf_ktime_get_ns();
    orig->role = role;
    return true;
}

/* A UDP socket re-connected elsewhere must not keep answering getpeername or recvmsg with an
 * earlier DNS server. */
static __always_inline void dns_forget(struct bpf_sock_addr* ctx) {
    struct bpf_sock* sk = ctx->sk;
    if (sk) bpf_sk_storage_delete(&orig_dst_by_socket, sk);
}

/* Rewrites the destination of a sock_addr context to the proxy's DNS listener: 127.0.0.1, ::1,
 * or ::ffff:127.0.0.1 for a v4-mapped destination (which stays IPv4 on the wire, as with
 * iptables' IPv4 REDIRECT). */
static __always_inline void dns_point_at_listener4(struct bpf_sock_addr* ctx, __u16 dns_port) {
    ctx->user_ip4 = bpf_htonl(0x7f000001);
    ctx->user_port = bpf_htons(dns_port);
}

static __always_inline void dns_point_at_listener6(struct bpf_sock_addr* ctx, __u16 dns_port,
                                                   bool mapped) {
    ctx->user_ip6[0] = 0;
    ctx->user_ip6[1] = 0;
    ctx->user_ip6[2] = mapped ? bpf_htonl(0x0000ffff) : 0;
    ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
    ctx->user_port = bpf_htons(dns_port);
}

/* connect4/6 hook for port 53 (TCP and connected UDP). Returns the verdict; on DNS_REDIRECT the
 * socket remembers the nameserver (getpeername answers it; for TCP the proxy's accepted socket
 * gets it through sockops, so SO_ORIGINAL_DST works as under REDIRECT) and *listener_port is the
 * port to connect to; on DNS_TO_INBOUND *listener_port is the inbound listener. */
static __always_inline enum dns_verdict dns_connect(struct bpf_sock_addr* ctx,
                                                    const struct workload_config* cfg,
                                                    const __u8 dst[16], __u8 family, bool is_tcp,
                                                    __u16* listener_port) {
    *listener_port = 0;
    enum dns_verdict verdict = dns_capture_decide(ctx, cfg, dst, is_tcp);
    if (verdict != DNS_REDIRECT && verdict != DNS_TO_INBOUND) {
        if (!is_tcp) dns_forget(ctx);
        return verdict;
    }
    bool to_dns = verdict == DNS_REDIRECT;
    if (!dns_remember(ctx, cfg, dst, MESHLANE_DNS_PORT, family,
                      to_dns ? MESHLANE_DIR_DNS : MESHLANE_DIR_INBOUND, MESHLANE_ROLE_APP_SOCKET))
        return DNS_PASS; /* out of memory: better the real server than a wrong reply source */
    *listener_port = to_dns ? cfg->dns_port : cfg->inbound_port;
    return verdict;
}

/* What connect4/6 ask first. True when the connect is decided here (*listener_port: where to,
 * 0 = leave it alone): every UDP connect, and TCP to port 53 that a DNS rule took. False: TCP
 * that ISTIO_OUTPUT (outbound_decide) decides. */
static __always_inline bool dns_connect_first(struct bpf_sock_addr* ctx,
                                              const struct workload_config* cfg, const __u8 dst[16],
                                              __u16 dst_port, __u8 family, bool is_tcp,
                                              __u16* listener_port) {
    *listener_port = 0;
    if (dst_port != MESHLANE_DNS_PORT || !dns_capture_enabled(cfg)) {
        if (!is_tcp) dns_forget(ctx);
        return !is_tcp;
    }
    enum dns_verdict verdict = dns_connect(ctx, cfg, dst, family, is_tcp, listener_port);
    return !is_tcp || verdict != DNS_CONTINUE;
}

#endif /* MESHLANE_BPF_DNS_CAPTURE_H */
