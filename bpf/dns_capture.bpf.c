// SPDX-License-Identifier: GPL-2.0-only
/*
 * DNS capture for unconnected UDP, attached to an enrolled pod cgroup only while its DNS capture
 * is on (connect4/6 in redirect_outbound.bpf.c cover TCP and connected UDP):
 *   dns_sendmsg4/6  sendto()/sendmsg() to port 53 that dns_decide captures goes to the proxy's
 *                   DNS listener (127.0.0.1 / ::1 : dns_port); the socket remembers the server
 *   dns_recvmsg4/6  a reply from the DNS listener is reported with the server's address, so
 *                   resolvers that compare the reply's source (dnspython, recvfrom) accept it
 * Istio gets the second half from conntrack (REDIRECT's reverse NAT, kept apart from the proxy's
 * own upstream queries by the raw-table CT zones 1 and 2); here the socket carries the answer.
 * One remembered server per socket: a socket that queries several captured servers at once sees
 * every reply as coming from the last one it sent to (all of them are answered by the same
 * listener, so nothing else could tell them apart either).
 */
#include "dns_capture.h"

#include "redirect_common.h"

char LICENSE[] SEC("license") = "GPL";

static __always_inline const struct workload_config* dns_workload_of(void* ctx) {
    __u64 netns = bpf_get_netns_cookie(ctx);
    return bpf_map_lookup_elem(&workload_by_netns, &netns);
}

/* The sendmsg part shared by both families: true when the datagram goes to the DNS listener. */
static __always_inline bool dns_sendmsg(struct bpf_sock_addr* ctx, const __u8 dst[16], __u8 family,
                                        __u16* dns_port) {
    if (ctx->type != SOCK_DGRAM || ctx->protocol != IPPROTO_UDP) return false;
    if (bpf_ntohs((__u16)ctx->user_port) != MESHLANE_DNS_PORT) return false;
    const struct workload_config* cfg = dns_workload_of(ctx);
    if (!cfg || !dns_capture_enabled(cfg)) return false;
    if (dns_capture_decide(ctx, cfg, dst, false) != DNS_REDIRECT) return false;
    /* Without the remembered server the reply would come from 127.0.0.1:15053 and be dropped
     * by the resolver: then rather send the query where the app meant it to go. */
    if (!dns_remember(ctx, cfg, dst, MESHLANE_DNS_PORT, family, MESHLANE_DIR_DNS,
                      MESHLANE_ROLE_DNS_DATAGRAM))
        return false;
    *dns_port = cfg->dns_port;
    return true;
}

SEC("cgroup/sendmsg4")
int dns_sendmsg4(struct bpf_sock_addr* ctx) {
    __u8 dst[16];
    addr_from_v4(dst, ctx->user_ip4);
    __u16 dns_port = 0;
    if (dns_sendmsg(ctx, dst, AF_INET, &dns_port)) dns_point_at_listener4(ctx, dns_port);
    return 1;
}

SEC("cgroup/sendmsg6")
int dns_sendmsg6(struct bpf_sock_addr* ctx) {
    __u8 dst[16];
    addr_from_v6(dst, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
    bool mapped = addr_is_v4_mapped(dst);
    __u16 dns_port = 0;
    if (dns_sendmsg(ctx, dst, mapped ? AF_INET : AF_INET6, &dns_port))
        dns_point_at_listener6(ctx, dns_port, mapped);
    return 1;
}

/* The server a reply from `src`:`src_port` stands for, if the socket sent DNS through the proxy
 * and the reply comes from the DNS listener. */
static __always_inline const struct orig_dst* dns_reply_origin(struct bpf_sock_addr* ctx,
                                                               const __u8 src[16], __u16 src_port) {
    struct bpf_sock* sk = ctx->sk;
    if (!sk) return NULL;
    /* Sockets that never sent DNS through the proxy have no storage: one lookup, no more. */
    struct orig_dst* orig = bpf_sk_storage_get(&orig_dst_by_socket, sk, 0, 0);
    if (!orig || orig->direction != MESHLANE_DIR_DNS) return NULL;
    if (orig->role != MESHLANE_ROLE_DNS_DATAGRAM && orig->role != MESHLANE_ROLE_APP_SOCKET)
        return NULL;
    if (!addr_is_localhost(src)) return NULL;
    const struct workload_config* cfg = dns_workload_of(ctx);
    if (!cfg || src_port != cfg->dns_port) return NULL;
    return orig;
}

SEC("cgroup/recvmsg4")
int dns_recvmsg4(struct bpf_sock_addr* ctx) {
    __u8 src[16];
    addr_from_v4(src, ctx->user_ip4);
    const struct orig_dst* orig = dns_reply_origin(ctx, src, bpf_ntohs((__u16)ctx->user_port));
    if (!orig || !addr_is_v4_mapped(orig->addr)) return 1;
    ctx->user_ip4 = addr_v4(orig->addr);
    ctx->user_port = bpf_htons(orig->port);
    count(orig->workload_id, MESHLANE_CNT_DNS_REPLY_SOURCE_RESTORED);
    return 1;
}

SEC("cgroup/recvmsg6")
int dns_recvmsg6(struct bpf_sock_addr* ctx) {
    __u8 src[16];
    addr_from_v6(src, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
    const struct orig_dst* orig = dns_reply_origin(ctx, src, bpf_ntohs((__u16)ctx->user_port));
    if (!orig) return 1;
    /* A v4 server queried from a dual-stack socket is remembered v4-mapped: exactly the
     * ::ffff:a.b.c.d the app sent to. */
    const __u32* w = (const __u32*)orig->addr;
    ctx->user_ip6[0] = w[0];
    ctx->user_ip6[1] = w[1];
    ctx->user_ip6[2] = w[2];
    ctx->user_ip6[3] = w[3];
    ctx->user_port = bpf_htons(orig->port);
    count(orig->workload_id, MESHLANE_CNT_DNS_REPLY_SOURCE_RESTORED);
    return 1;
}
