// SPDX-License-Identifier: GPL-2.0-only
/*
 * Inbound capture (ISTIO_INBOUND) for one pod: an sk_lookup program attached to the pod's
 * network namespace selects the proxy's inbound listener for new TCP connections, with no NAT:
 * the accepted socket keeps the original local address.
 *
 * sk_lookup programs cannot read their netns cookie (bpf_get_netns_cookie is not offered to
 * this program type), so the agent loads one instance per workload with the identity in rodata.
 * Maps are shared with redirect_outbound through their pins.
 */
#include "redirect_common.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 workload_id = 0;
const volatile __u64 netns_cookie = 0;

static __always_inline int assign_listener(struct bpf_sk_lookup* ctx, __u32 slot) {
    __u32 key = workload_id * MESHLANE_LISTENER_SLOTS + slot;
    struct bpf_sock* sk = bpf_map_lookup_elem(&inbound_listener, &key);
    if (!sk) return -1;
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    return err ? -1 : 0;
}

SEC("sk_lookup")
int redirect_sk_lookup(struct bpf_sk_lookup* ctx) {
    if (ctx->protocol != IPPROTO_TCP) return SK_PASS;
    __u64 cookie = netns_cookie;
    const struct workload_config* cfg = bpf_map_lookup_elem(&workload_by_netns, &cookie);
    if (!cfg) return SK_PASS;
    __u32 wid = workload_id;

    __u32 family = CTX_READ(ctx->family);
    __u32 v4 = CTX_READ(ctx->remote_ip4);
    __u32 w0 = CTX_READ(ctx->remote_ip6[0]), w1 = CTX_READ(ctx->remote_ip6[1]),
          w2 = CTX_READ(ctx->remote_ip6[2]), w3 = CTX_READ(ctx->remote_ip6[3]);
    __u16 port = (__u16)CTX_READ(ctx->local_port);
    __u8 src[16];
    if (family == AF_INET)
        addr_from_v4(src, v4);
    else
        addr_from_v6(src, w0, w1, w2, w3);

    struct inbound_facts facts = {
        .family_not_captured = !family_captured(cfg, family == AF_INET),
        .dst_is_inbound_listener = port == cfg->inbound_port,
        .dst_port_excluded = port == MESHLANE_INBOUND_TUNNEL_PORT ||
                             port_rule(wid, MESHLANE_PORT_EXCLUDE_INBOUND, port),
        .dst_port_included = (cfg->flags & MESHLANE_WL_INCLUDE_ALL_INBOUND_PORTS) ||
                             port_rule(wid, MESHLANE_PORT_INCLUDE_INBOUND, port),
        .src_is_local = addr_is_inbound_passthrough(src) || addr_is_pod_local(wid, src),
    };
    __u32 counter = 0;
    enum inbound_verdict verdict = inbound_decide(&facts, &counter);
    if (verdict == INBOUND_PASS) {
        count(wid, counter);
        return SK_PASS;
    }

    /* The V4 slot also holds a dual-stack IPv6 listener (see on_listen). */
    if (assign_listener(
            ctx, family == AF_INET ? MESHLANE_LISTENER_SLOT_V4 : MESHLANE_LISTENER_SLOT_V6) == 0) {
        count(wid, MESHLANE_CNT_INBOUND_STEERED);
        return SK_PASS;
    }

    /* No proxy listener yet. */
    if (cfg->flags & MESHLANE_WL_STARTUP_PASSTHROUGH) {
        count(wid, MESHLANE_CNT_INBOUND_STARTUP_PASSTHROUGH);
        return SK_PASS;
    }
    /* iptables would REDIRECT to a port nobody listens on: the client gets a reset. SK_DROP
     * makes the lookup fail, and TCP answers the SYN with RST just the same. */
    count(wid, MESHLANE_CNT_INBOUND_REFUSED_NO_LISTENER);
    stamp(wid, MESHLANE_TIME_INBOUND_REFUSED_FIRST);
    return SK_DROP;
}
