/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Shared by the observe objects (observe_connect.bpf.c, observe_drops.bpf.c): the pinned
 * workload_by_netns map (declared exactly as in redirect_common.h, so libbpf reuses the
 * redirect datapath's map when the agent opens the objects with the same pin_root_path), the
 * loss counters, and address helpers for tracing programs (tp_btf: BTF pointers, CO-RE).
 */
#ifndef MESHLANE_BPF_OBSERVE_COMMON_H
#define MESHLANE_BPF_OBSERVE_COMMON_H

/* vmlinux.h first: libbpf headers rely on its types. */
// clang-format off
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "meshlane/observe_abi.h"
#include "meshlane/redirect_abi.h"
// clang-format on

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

#include "workload_map.h"

/* enum meshlane_observe_loss; per object, per CPU. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, MESHLANE_LOSS_MAX);
    __type(key, __u32);
    __type(value, __u64);
} observe_loss SEC(".maps");

static __always_inline void count_loss(__u32 what) {
    __u64* value = bpf_map_lookup_elem(&observe_loss, &what);
    if (value) *value += 1;
}

static __always_inline __u64 net_cookie_of(const struct net* net) {
    if (!net) return 0;
    return BPF_CORE_READ(net, net_cookie);
}

static __always_inline __u64 sock_netns_cookie(const struct sock* sk) {
    return net_cookie_of(BPF_CORE_READ(sk, __sk_common.skc_net.net));
}

/* The workload owning a network namespace, NULL for pods that are not enrolled (and the host). */
static __always_inline struct workload_config* workload_of_netns(__u64 cookie) {
    if (!cookie) return NULL;
    return bpf_map_lookup_elem(&workload_by_netns, &cookie);
}

static __always_inline void addr_from_v4(__u8 addr[16], __u32 v4) {
    __u32* words = (__u32*)addr;
    words[0] = 0;
    words[1] = 0;
    words[2] = bpf_htonl(0x0000ffff);
    words[3] = v4;
}

/* Local and remote address and ports of a socket (ports in host order). */
static __always_inline void sock_tuple(const struct sock* sk, __u8 saddr[16], __u8 daddr[16],
                                       __u16* sport, __u16* dport, __u8* family) {
    __u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);
    *family = (__u8)fam;
    *sport = BPF_CORE_READ(sk, __sk_common.skc_num);
    /* At TCP_CLOSE inet_put_port() has already zeroed skc_num; inet_sport keeps the port the
     * connection used, so a failed connect still names its source port (matchable to drops). */
    if (*sport == 0) *sport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock*)sk, inet_sport));
    *dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
    if (fam == AF_INET) {
        addr_from_v4(saddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
        addr_from_v4(daddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
    } else {
        /* Explicit sizes: saddr/daddr are pointers here, so BPF_CORE_READ_INTO's sizeof(*dst)
         * would copy one byte. */
        bpf_core_read(saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
        bpf_core_read(daddr, 16, &sk->__sk_common.skc_v6_daddr);
    }
}

/* Bucket of a microsecond value in the log2 histograms (include/meshlane/observe_abi.h): shared
 * by the connect and TLS latency histograms, so the agent reads both the same way. */
static __always_inline __u32 log2_bucket(__u64 us) {
    __u32 bucket = 0;
    /* Bounded loop, unrolled: the verifier sees at most MESHLANE_HIST_BUCKETS steps. */
#pragma unroll
    for (int i = 0; i < MESHLANE_HIST_BUCKETS - 1; i++) {
        if (us >= 2) {
            us >>= 1;
            bucket++;
        }
    }
    return bucket;
}

#endif /* MESHLANE_BPF_OBSERVE_COMMON_H */
