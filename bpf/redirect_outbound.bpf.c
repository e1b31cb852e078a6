// SPDX-License-Identifier: GPL-2.0-only
/*
 * Outbound capture and original-destination bookkeeping, attached to each enrolled pod cgroup:
 *   redirect_connect4/6     ISTIO_OUTPUT: rewrite connect() to the proxy's outbound listener
 *   redirect_sockops        hand the original destination from the app's socket to the proxy's
 *                           accepted socket; register the proxy's inbound listener on listen()
 *   redirect_getsockopt     answer SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST for the proxy
 *   redirect_getpeername4/6 the app still sees the peer it connected to
 *   redirect_getsockname4/6 the proxy's accepted socket reports the original destination as
 *                           its local address, as with TPROXY: proxies that read getsockname
 *                           instead of SO_ORIGINAL_DST (HAProxy does for IPv6) work too
 * DNS capture (bpf/dns_capture.h) decides port 53 first in connect4/6, for TCP and connected UDP.
 * The workload is found by network namespace cookie: one pod = one netns.
 */
#include "dns_capture.h"
#include "redirect_common.h"

char LICENSE[] SEC("license") = "GPL";

static __always_inline const struct workload_config* workload_of(void* ctx) {
    __u64 netns = bpf_get_netns_cookie(ctx);
    return bpf_map_lookup_elem(&workload_by_netns, &netns);
}

static __always_inline bool source_is_passthrough(struct bpf_sock* sk, const __u8 dst[16]) {
    __u8 src[16];
    sock_src_addr(sk, src);
    return outbound_source_is_passthrough(src, dst);
}

/* ISTIO_OUTPUT's "localhost": 127.0.0.1/32 or --host-loopback-cidr, and ::1. */
static __always_inline bool dst_is_host_loopback(const struct workload_config* cfg,
                                                 const __u8 dst[16]) {
    if ((cfg->flags & MESHLANE_WL_CUSTOM_HOST_LOOPBACK) && addr_is_v4_mapped(dst))
        return cidr_match(cfg->workload_id, MESHLANE_CIDR_HOST_LOOPBACK, dst);
    return addr_is_localhost(dst);
}

/* Is anything listening on the proxy's outbound port in this netns? A socket lookup, so the
 * answer follows the proxy's listen() and exit with no agent involved. */
static __always_inline bool outbound_listener_up(struct bpf_sock_addr* ctx, __u16 port, bool v6) {
    struct bpf_sock_tuple tuple = {};
    struct bpf_sock* sk;
    if (v6) {
        tuple.ipv6.daddr[3] = bpf_htonl(1);
        tuple.ipv6.dport = bpf_htons(port);
        sk = bpf_sk_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
    } else {
        tuple.ipv4.daddr = bpf_htonl(0x7f000001);
        tuple.ipv4.dport = bpf_htons(port);
        sk = bpf_sk_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
    }
    if (!sk) return false;
    bpf_sk_release(sk);
    return true;
}

/* Applies ISTIO_OUTPUT to one connect(). On redirect, stores the original destination on the
 * socket and returns the port to send it to; returns 0 to leave the connect alone. */
static __always_inline __u16 decide_outbound(struct bpf_sock_addr* ctx,
                                             const struct workload_config* cfg, const __u8 dst[16],
                                             __u16 dst_port, __u8 family) {
    __u32 wid = cfg->workload_id;
    __u64 uid_gid = bpf_get_current_uid_gid();
    struct bpf_sock* sk = ctx->sk;
    if (!sk) return 0;

    /* Facts are gathered in outbound_decide's order and only as far as it reads them: a fact
     * left 0 is never looked at, so the verdict is the same as with every fact filled in, and
     * the proxy's own upstream connects (decided by the owner rules) skip the CIDR and include
     * lookups (docs/fastpath-measurements.md, "where the time goes"). */
    struct outbound_facts facts = {
        .family_not_captured = !family_captured(cfg, addr_is_v4_mapped(dst)),
        .proxy_self_to_inbound = !!(cfg->flags & MESHLANE_WL_PROXY_SELF_TO_INBOUND),
        .include_has_loopback = !!(cfg->flags & MESHLANE_WL_INCLUDE_HAS_LOOPBACK),
    };
    if (!facts.family_not_captured)
        facts.dst_port_excluded = port_rule(wid, MESHLANE_PORT_EXCLUDE_OUTBOUND, dst_port);
    if (!facts.family_not_captured && !facts.dst_port_excluded) {
        __u32 uid = (__u32)uid_gid, gid = (__u32)(uid_gid >> 32);
        facts.uid_is_first_proxy = uid == cfg->proxy_uid;
        facts.uid_is_proxy = is_proxy_id(cfg, MESHLANE_PROXY_ID_UID, uid);
        facts.gid_is_proxy = is_proxy_id(cfg, MESHLANE_PROXY_ID_GID, gid);
        facts.dst_is_local = addr_is_pod_local(wid, dst);
        if (facts.dst_is_local) {
            facts.bound_to_passthrough = source_is_passthrough(sk, dst);
            facts.dst_is_localhost = dst_is_host_loopback(cfg, dst);
            facts.dst_port_is_tunnel = dst_port == MESHLANE_INBOUND_TUNNEL_PORT;
            /* Only TCP reaches here for port 53: dns_connect_first decides UDP. */
            facts.lo_return_skips_port = dst_port == MESHLANE_DNS_PORT && dns_capture_enabled(cfg);
        }
        if (outbound_needs_tail(&facts)) {
            facts.dst_cidr_excluded = cidr_match(wid, MESHLANE_CIDR_EXCLUDE, dst);
            if (!facts.dst_cidr_excluded)
                facts.dst_port_included = port_rule(wid, MESHLANE_PORT_INCLUDE_OUTBOUND, dst_port);
            if (!facts.dst_cidr_excluded && !facts.dst_port_included)
                facts.dst_cidr_included = (cfg->flags & MESHLANE_WL_INCLUDE_ALL_CIDRS) ||
                                          cidr_match(wid, MESHLANE_CIDR_INCLUDE, dst);
        }
    }
    __u32 counter = 0;
    enum outbound_verdict verdict = outbound_decide(&facts, &counter);
    if (verdict == OUTBOUND_REDIRECT && (cfg->flags & MESHLANE_WL_STARTUP_PASSTHROUGH) &&
        !outbound_listener_up(ctx, cfg->outbound_port,
                              family == AF_INET6 && !addr_is_v4_mapped(dst))) {
        /* Startup policy "passthrough": the proxy is not listening yet, go direct. */
        verdict = OUTBOUND_PASS;
        counter = MESHLANE_CNT_OUTBOUND_STARTUP_PASSTHROUGH;
    }
    count(wid, counter);
    if (verdict == OUTBOUND_PASS) return 0;

    struct orig_dst* orig =
        bpf_sk_storage_get(&orig_dst_by_socket, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!orig) return 0; /* out of memory: better a direct connection than a black hole */
    __builtin_memcpy(orig->addr, dst, 16);
    orig->port = dst_port;
    orig->family = family;
    orig->direction = verdict == OUTBOUND_REDIRECT ? MESHLANE_DIR_OUTBOUND : MESHLANE_DIR_INBOUND;
    orig->workload_id = wid;
    orig->app_socket_cookie = bpf_get_socket_cookie(ctx);
    orig->redirected_at_ns = bpf_ktime_get_ns();
    orig->role = MESHLANE_ROLE_APP_SOCKET;
    return verdict == OUTBOUND_REDIRECT ? cfg->outbound_port : cfg->inbound_port;
}

/* TCP, or UDP (only ever for DNS capture). */
static __always_inline bool connect_is_tcp(struct bpf_sock_addr* ctx, bool* is_udp) {
    *is_udp = ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP;
    return ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
}

SEC("cgroup/connect4")
int redirect_connect4(struct bpf_sock_addr* ctx) {
    bool is_udp = false;
    bool is_tcp = connect_is_tcp(ctx, &is_udp);
    if (!is_tcp && !is_udp) return 1;
    const struct workload_config* cfg = workload_of(ctx);
    if (!cfg) return 1;
    __u8 dst[16];
    addr_from_v4(dst, ctx->user_ip4);
    outbound_dst_as_netfilter_sees(dst);
    __u16 dst_port = bpf_ntohs((__u16)ctx->user_port);
    __u16 port = 0;
    if (!dns_connect_first(ctx, cfg, dst, dst_port, AF_INET, is_tcp, &port))
        port = decide_outbound(ctx, cfg, dst, dst_port, AF_INET);
    if (port) {
        ctx->user_ip4 = bpf_htonl(0x7f000001);
        ctx->user_port = bpf_htons(port);
    }
    return 1;
}

SEC("cgroup/connect6")
int redirect_connect6(struct bpf_sock_addr* ctx) {
    bool is_udp = false;
    bool is_tcp = connect_is_tcp(ctx, &is_udp);
    if (!is_tcp && !is_udp) return 1;
    const struct workload_config* cfg = workload_of(ctx);
    if (!cfg) return 1;
    __u8 dst[16];
    addr_from_v6(dst, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
    outbound_dst_as_netfilter_sees(dst);
    bool mapped = addr_is_v4_mapped(dst);
    __u8 family = mapped ? AF_INET : AF_INET6;
    __u16 dst_port = bpf_ntohs((__u16)ctx->user_port);
    __u16 port = 0;
    if (!dns_connect_first(ctx, cfg, dst, dst_port, family, is_tcp, &port))
        port = decide_outbound(ctx, cfg, dst, dst_port, family);
    if (!port) return 1;
    /* A v4-mapped destination stays IPv4 on the wire, exactly as iptables' IPv4 REDIRECT would
     * treat it: ::ffff:127.0.0.1 reaches the proxy's 127.0.0.1 listener. */
    ctx->user_ip6[0] = 0;
    ctx->user_ip6[1] = 0;
    ctx->user_ip6[2] = mapped ? bpf_htonl(0x0000ffff) : 0;
    ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
    ctx->user_port = bpf_htons(port);
    return 1;
}

/* The redirect record stored on this socket in the given role, if any. */
static __always_inline struct orig_dst* orig_dst_in_role(struct bpf_sock* sk, __u32 role) {
    if (!sk) return NULL;
    struct orig_dst* orig = bpf_sk_storage_get(&orig_dst_by_socket, sk, 0, 0);
    if (!orig || orig->role != role) return NULL;
    return orig;
}

static __always_inline struct orig_dst* app_orig_dst(struct bpf_sock* sk) {
    return orig_dst_in_role(sk, MESHLANE_ROLE_APP_SOCKET);
}

/* Replaces the address a getpeername/getsockname call returns with the original destination.
 * IPv4 sockets only take IPv4 answers. */
static __always_inline bool answer_v4(struct bpf_sock_addr* ctx, const struct orig_dst* orig) {
    if (!orig || !addr_is_v4_mapped(orig->addr)) return false;
    ctx->user_ip4 = addr_v4(orig->addr);
    ctx->user_port = bpf_htons(orig->port);
    return true;
}

static __always_inline bool answer_v6(struct bpf_sock_addr* ctx, const struct orig_dst* orig) {
    if (!orig) return false;
    const __u32* w = (const __u32*)orig->addr;
    ctx->user_ip6[0] = w[0];
    ctx->user_ip6[1] = w[1];
    ctx->user_ip6[2] = w[2];
    ctx->user_ip6[3] = w[3];
    ctx->user_port = bpf_htons(orig->port);
    return true;
}

SEC("cgroup/getpeername4")
int redirect_getpeername4(struct bpf_sock_addr* ctx) {
    struct orig_dst* orig = app_orig_dst(ctx->sk);
    if (answer_v4(ctx, orig)) count(orig->workload_id, MESHLANE_CNT_GETPEERNAME_REWRITTEN);
    return 1;
}

SEC("cgroup/getpeername6")
int redirect_getpeername6(struct bpf_sock_addr* ctx) {
    struct orig_dst* orig = app_orig_dst(ctx->sk);
    if (answer_v6(ctx, orig)) count(orig->workload_id, MESHLANE_CNT_GETPEERNAME_REWRITTEN);
    return 1;
}

SEC("cgroup/getsockname4")
int redirect_getsockname4(struct bpf_sock_addr* ctx) {
    answer_v4(ctx, orig_dst_in_role(ctx->sk, MESHLANE_ROLE_PROXY_SOCKET));
    return 1;
}

SEC("cgroup/getsockname6")
int redirect_getsockname6(struct bpf_sock_addr* ctx) {
    answer_v6(ctx, orig_dst_in_role(ctx->sk, MESHLANE_ROLE_PROXY_SOCKET));
    return 1;
}

/* Both ends of a sockops socket, 16-byte addresses. Every ctx field is read once, unconditionally
 * and volatile: loads chosen by a branch get merged by clang into one load from a computed ctx
 * offset, which the verifier rejects ("dereference of modified ctx ptr"). */
struct sockops_ends {
    __u8 local[16];
    __u8 remote[16];
    __u16 local_port;
    __u16 remote_port;
};

static __always_inline void read_ends(struct bpf_sock_ops* ctx, struct sockops_ends* ends) {
    __u32 family = CTX_READ(ctx->family);
    __u32 local4 = CTX_READ(ctx->local_ip4);
    __u32 remote4 = CTX_READ(ctx->remote_ip4);
    __u32 l0 = CTX_READ(ctx->local_ip6[0]), l1 = CTX_READ(ctx->local_ip6[1]),
          l2 = CTX_READ(ctx->local_ip6[2]), l3 = CTX_READ(ctx->local_ip6[3]);
    __u32 r0 = CTX_READ(ctx->remote_ip6[0]), r1 = CTX_READ(ctx->remote_ip6[1]),
          r2 = CTX_READ(ctx->remote_ip6[2]), r3 = CTX_READ(ctx->remote_ip6[3]);
    ends->local_port = (__u16)CTX_READ(ctx->local_port);
    ends->remote_port = (__u16)bpf_ntohl(CTX_READ(ctx->remote_port));
    if (family == AF_INET) {
        addr_from_v4(ends->local, local4);
        addr_from_v4(ends->remote, remote4);
    } else {
        addr_from_v6(ends->local, l0, l1, l2, l3);
        addr_from_v6(ends->remote, r0, r1, r2, r3);
    }
}

/* The connection as the proxy's accepted socket will see it, from the app's socket ... */
static __always_inline void tuple_from_app(struct bpf_sock_ops* ctx, struct proxy_tuple_key* key) {
    struct sockops_ends ends;
    read_ends(ctx, &ends);
    __builtin_memcpy(key->proxy_addr, ends.remote, 16);
    __builtin_memcpy(key->peer_addr, ends.local, 16);
    key->proxy_port = ends.remote_port;
    key->peer_port = ends.local_port;
}

/* ... and from the proxy's accepted socket. */
static __always_inline void tuple_from_proxy(struct bpf_sock_ops* ctx,
                                             struct proxy_tuple_key* key) {
    struct sockops_ends ends;
    read_ends(ctx, &ends);
    __builtin_memcpy(key->proxy_addr, ends.local, 16);
    __builtin_memcpy(key->peer_addr, ends.remote, 16);
    key->proxy_port = ends.local_port;
    key->peer_port = ends.remote_port;
}

/* TCP_CONNECT_CB runs after the source port is chosen and before the SYN leaves, so the entry
 * exists before the proxy can possibly accept, and a reused 4-tuple overwrites any leftover. */
static __always_inline void on_app_connect(struct bpf_sock_ops* ctx) {
    struct orig_dst* orig = app_orig_dst(ctx->sk);
    if (!orig) return;
    struct proxy_tuple_key key = {};
    tuple_from_app(ctx, &key);
    struct orig_dst handed = *orig;
    handed.role = MESHLANE_ROLE_PROXY_SOCKET;
    bpf_map_update_elem(&orig_dst_by_tuple, &key, &handed, BPF_ANY);
    /* Watch for the app socket's end so an entry the proxy never consumed is removed. */
    bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* The app's socket reaches CLOSE only after the proxy side acknowledged its FIN or after a
 * reset, i.e. after PASSIVE_ESTABLISHED consumed the entry if it ever will. */
static __always_inline void on_app_close(struct bpf_sock_ops* ctx) {
    struct orig_dst* orig = app_orig_dst(ctx->sk);
    if (!orig) return;
    struct proxy_tuple_key key = {};
    tuple_from_app(ctx, &key);
    /* A record still here after the connection was established (old state not SYN_SENT: the
     * proxy completed the handshake, so PASSIVE_ESTABLISHED ran) was not found by the proxy's
     * accept: that is the hand-over really lost. One that never connected (refused, timed
     * out) is only cleaned up. */
    if (bpf_map_delete_elem(&orig_dst_by_tuple, &key) == 0 && ctx->args[0] != BPF_TCP_SYN_SENT)
        count(orig->workload_id, MESHLANE_CNT_ORIG_DST_TUPLE_LOST);
}

/* PASSIVE_ESTABLISHED runs before the child socket is queued for accept(): the answer is in
 * place before the proxy can ask for it. */
static __always_inline void on_proxy_accept(struct bpf_sock_ops* ctx) {
    const struct workload_config* cfg = workload_of(ctx);
    if (!cfg) return;
    __u16 local_port = (__u16)ctx->local_port;
    /* The DNS listener too: its TCP connections answer SO_ORIGINAL_DST as under REDIRECT. */
    if (local_port != cfg->outbound_port && local_port != cfg->inbound_port &&
        !(local_port == cfg->dns_port && dns_capture_enabled(cfg)))
        return;
    struct proxy_tuple_key key = {};
    tuple_from_proxy(ctx, &key);
    struct orig_dst* handed = bpf_map_lookup_elem(&orig_dst_by_tuple, &key);
    if (!handed) {
        if (local_port == cfg->outbound_port)
            count(cfg->workload_id, MESHLANE_CNT_ORIG_DST_NOT_REDIRECTED);
        return;
    }
    struct bpf_sock* sk = ctx->sk;
    if (!sk) return;
    struct orig_dst* orig =
        bpf_sk_storage_get(&orig_dst_by_socket, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (orig) *orig = *handed;
    bpf_map_delete_elem(&orig_dst_by_tuple, &key);
}

/* An IPv6 listener serves IPv4 too unless IPV6_V6ONLY is set. */
static __always_inline bool listener_is_dual_stack(struct bpf_sock_ops* ctx) {
    struct bpf_sock* bsk = ctx->sk;
    if (!bsk) return false;
    struct tcp6_sock* tsk = bpf_skc_to_tcp6_sock(bsk);
    if (!tsk) return false;
    struct sock_common* common = &tsk->tcp.inet_conn.icsk_inet.sk.__sk_common;
    return !BPF_CORE_READ_BITFIELD(common, skc_ipv6only);
}

static __always_inline void register_listener(struct bpf_sock_ops* ctx, __u32 workload_id,
                                              __u32 slot) {
    __u32 key = workload_id * MESHLANE_LISTENER_SLOTS + slot;
    if (bpf_sock_map_update(ctx, &inbound_listener, &key, BPF_ANY) == 0) {
        count(workload_id, MESHLANE_CNT_PROXY_LISTENER_REGISTERED);
        stamp(workload_id, MESHLANE_TIME_LISTENER_REGISTERED_FIRST);
    }
}

/* listen() by the proxy on the inbound port: make it the sk_lookup target for the families it
 * serves. Runs in the proxy's own syscall, so the uid/gid are the listener owner's. */
static __always_inline void on_listen(struct bpf_sock_ops* ctx) {
    const struct workload_config* cfg = workload_of(ctx);
    if (!cfg || (__u16)ctx->local_port != cfg->inbound_port) return;
    __u64 uid_gid = bpf_get_current_uid_gid();
    if (!is_proxy_id(cfg, MESHLANE_PROXY_ID_UID, (__u32)uid_gid) &&
        !is_proxy_id(cfg, MESHLANE_PROXY_ID_GID, (__u32)(uid_gid >> 32)))
        return;
    __u32 wid = cfg->workload_id;
    if (ctx->family != AF_INET6) {
        register_listener(ctx, wid, MESHLANE_LISTENER_SLOT_V4);
        return;
    }
    register_listener(ctx, wid, MESHLANE_LISTENER_SLOT_V6);
    if (listener_is_dual_stack(ctx)) register_listener(ctx, wid, MESHLANE_LISTENER_SLOT_V4);
}

SEC("sockops")
int redirect_sockops(struct bpf_sock_ops* ctx) {
    switch (ctx->op) {
        case BPF_SOCK_OPS_TCP_CONNECT_CB:
            on_app_connect(ctx);
            break;
        case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
            on_proxy_accept(ctx);
            break;
        case BPF_SOCK_OPS_TCP_LISTEN_CB:
            on_listen(ctx);
            break;
        case BPF_SOCK_OPS_STATE_CB:
            if (ctx->args[1] == BPF_TCP_CLOSE) on_app_close(ctx);
            break;
        default:
            break;
    }
    return 1;
}

static __always_inline int write_sockaddr(struct bpf_sockopt* ctx, const struct orig_dst* orig) {
    void* optval = ctx->optval;
    void* optval_end = ctx->optval_end;
    if (ctx->level == SOL_IP) {
        struct sockaddr_in* sin = optval;
        if ((void*)(sin + 1) > optval_end || !addr_is_v4_mapped(orig->addr)) return -1;
        sin->sin_family = AF_INET;
        sin->sin_port = bpf_htons(orig->port);
        sin->sin_addr.s_addr = addr_v4(orig->addr);
        __builtin_memset(sin->__pad, 0, sizeof(sin->__pad));
        ctx->optlen = sizeof(*sin);
    } else {
        struct sockaddr_in6* sin6 = optval;
        if ((void*)(sin6 + 1) > optval_end) return -1;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = bpf_htons(orig->port);
        sin6->sin6_flowinfo = 0;
        __builtin_memcpy(&sin6->sin6_addr, orig->addr, 16);
        sin6->sin6_scope_id = 0;
        ctx->optlen = sizeof(*sin6);
    }
    ctx->retval = 0;
    return 0;
}

/* Runs after the kernel's own handler (netfilter's, when conntrack is loaded). A connection we
 * redirected is always answered from our state; an inbound connection steered by sk_lookup has
 * no NAT, so its original destination is its local address, answered when the kernel had
 * none (as conntrack would). */
SEC("cgroup/getsockopt")
int redirect_getsockopt(struct bpf_sockopt* ctx) {
    if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6))
        return 1;
    struct bpf_sock* sk = ctx->sk;
    if (!sk || sk->protocol != IPPROTO_TCP) return 1;
    /* The common case first: a redirected connection carries its answer (and its workload),
     * no netns lookup needed. */
    struct orig_dst* stored = bpf_sk_storage_get(&orig_dst_by_socket, sk, 0, 0);
    if (stored && stored->role == MESHLANE_ROLE_PROXY_SOCKET) {
        if (write_sockaddr(ctx, stored) == 0)
            count(stored->workload_id, MESHLANE_CNT_ORIG_DST_ANSWERED);
        return 1;
    }
    const struct workload_config* cfg = workload_of(ctx);
    if (!cfg) return 1;
    if ((__u16)sk->src_port == cfg->outbound_port) {
        /* Accepted on the outbound listener without redirect state: answering with the local
         * address would send the proxy to itself. Leave the kernel's error. */
        count(cfg->workload_id, MESHLANE_CNT_ORIG_DST_MISS);
        return 1;
    }
    if (ctx->retval == 0) return 1;
    struct orig_dst local = {.port = (__u16)sk->src_port};
    sock_src_addr(sk, local.addr);
    if (write_sockaddr(ctx, &local) == 0) count(cfg->workload_id, MESHLANE_CNT_ORIG_DST_ANSWERED);
    return 1;
}
