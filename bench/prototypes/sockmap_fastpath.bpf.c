// SPDX-License-Identifier: GPL-2.0-only
/*
 * PROTOTYPE (bench only, not the datapath): the sk_msg "fast path" of the issue. A sockops
 * program puts both sockets of a pod-local TCP connection into a SOCKHASH when they become
 * established; an sk_msg program on that map redirects every sendmsg() straight into the peer
 * socket's receive queue (bpf_msg_redirect_hash), skipping TCP/IP over loopback.
 *
 * Hops (compile-time):
 *   FASTPATH_APP_HOP    app <-> outbound listener (127.0.0.1:15001): both ends in the client pod
 *   FASTPATH_SERVER_HOP inbound proxy (source 127.0.0.6) <-> server on the pod IP
 * REDIRECT_FLAGS: BPF_F_INGRESS queues the message on the peer's ingress (what a connected
 * pair needs). 0 (egress) would transmit it out of the peer socket, i.e. back to the sender.
 */
#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef REDIRECT_FLAGS
#define REDIRECT_FLAGS BPF_F_INGRESS
#endif
#ifndef FASTPATH_APP_HOP
#define FASTPATH_APP_HOP 1
#endif
#ifndef FASTPATH_SERVER_HOP
#define FASTPATH_SERVER_HOP 0
#endif

#define AF_INET 2
#define OUTBOUND_PORT 15001
#define PASSTHROUGH_V4 0x7f000006u /* 127.0.0.6 */

char LICENSE[] SEC("license") = "GPL";

/* One socket of a connection, from its own point of view. Ports in host order. */
struct fastpath_key {
    __u32 local_ip4;  /* network order, as in the ctx */
    __u32 remote_ip4; /* network order */
    __u32 local_port;
    __u32 remote_port;
};

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, struct fastpath_key);
    __type(value, __u64);
} fastpath_peers SEC(".maps");

/* [0] sockets added, [1] messages redirected, [2] messages left on the TCP path. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, __u64);
} fastpath_stats SEC(".maps");

static __always_inline void bump(__u32 slot) {
    __u64* v = bpf_map_lookup_elem(&fastpath_stats, &slot);
    if (v)
        __sync_fetch_and_add(v, 1);
}

/* remote_port: sockops and sk_msg both hand it in network order; older kernels in the low 16
 * bits, newer ones shifted into the high 16 bits. Either way this yields the host-order port. */
static __always_inline __u32 remote_port_host(__u32 raw) {
    return raw > 0xffff ? bpf_ntohl(raw) : bpf_ntohs((__u16)raw);
}

static __always_inline bool wanted(__u32 local_ip4, __u32 remote_ip4, __u32 lport, __u32 rport) {
    if (FASTPATH_APP_HOP && (lport == OUTBOUND_PORT || rport == OUTBOUND_PORT))
        return true;
    if (FASTPATH_SERVER_HOP && (local_ip4 == bpf_htonl(PASSTHROUGH_V4) ||
                                remote_ip4 == bpf_htonl(PASSTHROUGH_V4)))
        return true;
    return false;
}

SEC("sockops")
int fastpath_sockops(struct bpf_sock_ops* ctx) {
    if (ctx->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
        ctx->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        return 1;
    if (ctx->family != AF_INET)
        return 1;
    struct fastpath_key key = {
        .local_ip4 = ctx->local_ip4,
        .remote_ip4 = ctx->remote_ip4,
        .local_port = ctx->local_port,
        .remote_port = remote_port_host(ctx->remote_port),
    };
    if (wanted(key.local_ip4, key.remote_ip4, key.local_port, key.remote_port) &&
        bpf_sock_hash_update(ctx, &fastpath_peers, &key, BPF_NOEXIST) == 0)
        bump(0);
    return 1;
}

SEC("sk_msg")
int fastpath_msg(struct sk_msg_md* msg) {
    struct fastpath_key peer = {
        .local_ip4 = msg->remote_ip4,
        .remote_ip4 = msg->local_ip4,
        .local_port = remote_port_host(msg->remote_port),
        .remote_port = msg->local_port,
    };
    /* No peer in the map (it closed, or the other end is not local): the message takes the
     * normal TCP path. */
    bump(bpf_msg_redirect_hash(msg, &fastpath_peers, &peer, REDIRECT_FLAGS) == SK_PASS ? 1 : 2);
    return SK_PASS;
}
