/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Maps and helpers shared by redirect_outbound.bpf.c and redirect_inbound.bpf.c. Both objects
 * declare the same maps with LIBBPF_PIN_BY_NAME, and the agent opens them with one pin root,
 * so libbpf hands every object the same kernel maps.
 */
#ifndef MESHLANE_BPF_REDIRECT_COMMON_H
#define MESHLANE_BPF_REDIRECT_COMMON_H

/* vmlinux.h first: libbpf headers rely on its types. */
// clang-format off
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "meshlane/redirect_abi.h"
#include "meshlane/redirect_rules.h"
// clang-format on

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define SOL_IP 0
#define SOL_IPV6 41
/* linux/netfilter_ipv4.h SO_ORIGINAL_DST and linux/netfilter_ipv6/ip6_tables.h
 * IP6T_SO_ORIGINAL_DST share the value 80. */
#define SO_ORIGINAL_DST 80

#include "workload_map.h"

/* Sizes are placeholders: the agent sets max_entries from its configuration before load. */

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MESHLANE_MAX_PORT_RULES);
    __type(key, struct port_rule_key);
    __type(value, __u8);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} port_rules SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, MESHLANE_MAX_CIDR_RULES);
    __type(key, struct cidr_rule_key);
    __type(value, __u8);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} cidr_rules SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MESHLANE_MAX_PROXY_IDS);
    __type(key, struct proxy_id_key);
    __type(value, __u8);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_ids SEC(".maps");

/* Socket-local storage: freed by the kernel with the socket, so an answer can never outlive the
 * connection it belongs to. */
struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct orig_dst);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_dst_by_socket SEC(".maps");

/* Hand-over from the app's socket to the proxy's accepted socket (see proxy_tuple_key). LRU only
 * as a last bound; entries are deleted explicitly. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, MESHLANE_MAX_PENDING_ORIG_DST);
    __type(key, struct proxy_tuple_key);
    __type(value, struct orig_dst);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_dst_by_tuple SEC(".maps");

/* The proxy's inbound listening sockets: index workload_id * MESHLANE_LISTENER_SLOTS + slot. */
struct {
    __uint(type, BPF_MAP_TYPE_SOCKMAP);
    __uint(max_entries, MESHLANE_MAX_WORKLOADS_DEFAULT* MESHLANE_LISTENER_SLOTS);
    __type(key, __u32);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} inbound_listener SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, MESHLANE_MAX_WORKLOADS_DEFAULT* MESHLANE_REDIRECT_COUNTER_STRIDE);
    __type(key, __u32);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} redirect_counters SEC(".maps");

static __always_inline void count(__u32 workload_id, __u32 counter) {
    if (counter >= MESHLANE_REDIRECT_COUNTER_MAX) return;
    __u32 index = workload_id * MESHLANE_REDIRECT_COUNTER_STRIDE + counter;
    __u64* value = bpf_map_lookup_elem(&redirect_counters, &index);
    if (value) *value += 1;
}

/* Dates an event in the workload's time slots (enum meshlane_redirect_time): `first` is set once
 * per CPU, first + 1 (the matching LAST slot) every time. */
static __always_inline void stamp(__u32 workload_id, __u32 first) {
    __u64 now = bpf_ktime_get_ns();
    __u32 index = workload_id * MESHLANE_REDIRECT_COUNTER_STRIDE + first;
    __u64* value = bpf_map_lookup_elem(&redirect_counters, &index);
    if (value && *value == 0) *value = now;
    index += 1;
    value = bpf_map_lookup_elem(&redirect_counters, &index);
    if (value) *value = now;
}

/* addr[16] <- ::ffff:v4 (v4 in network order). */
static __always_inline void addr_from_v4(__u8 addr[16], __u32 v4) {
    __u32* words = (__u32*)addr;
    words[0] = 0;
    words[1] = 0;
    words[2] = bpf_htonl(0x0000ffff);
    words[3] = v4;
}

static __always_inline void addr_from_v6(__u8 addr[16], const __u32 w0, const __u32 w1,
                                         const __u32 w2, const __u32 w3) {
    __u32* words = (__u32*)addr;
    words[0] = w0;
    words[1] = w1;
    words[2] = w2;
    words[3] = w3;
}

/* A volatile load is never merged with another one: clang otherwise turns loads chosen by a
 * branch into one load from a computed ctx/socket offset, which the verifier rejects
 * ("dereference of modified ctx ptr", "pointer arithmetic on sock prohibited"). */
#define CTX_READ(field) (*(volatile __typeof__(field)*)&(field))

/* The socket's local address as 16 bytes. */
static __always_inline void sock_src_addr(struct bpf_sock* sk, __u8 addr[16]) {
    __u32 family = CTX_READ(sk->family);
    __u32 v4 = CTX_READ(sk->src_ip4);
    __u32 w0 = CTX_READ(sk->src_ip6[0]), w1 = CTX_READ(sk->src_ip6[1]),
          w2 = CTX_READ(sk->src_ip6[2]), w3 = CTX_READ(sk->src_ip6[3]);
    if (family == AF_INET)
        addr_from_v4(addr, v4);
    else
        addr_from_v6(addr, w0, w1, w2, w3);
}

static __always_inline bool addr_is_v4_mapped(const __u8 addr[16]) {
    const __u32* words = (const __u32*)addr;
    return words[0] == 0 && words[1] == 0 && words[2] == bpf_htonl(0x0000ffff);
}

static __always_inline __u32 addr_v4(const __u8 addr[16]) { return ((const __u32*)addr)[3]; }

static __always_inline bool addr_is_any(const __u8 addr[16]) {
    const __u32* w = (const __u32*)addr;
    return (addr_is_v4_mapped(addr) && w[3] == 0) || (w[0] | w[1] | w[2] | w[3]) == 0;
}

/* 127.0.0.0/8 or ::1 */
static __always_inline bool addr_is_loopback(const __u8 addr[16]) {
    const __u32* w = (const __u32*)addr;
    if (addr_is_v4_mapped(addr)) return (bpf_ntohl(w[3]) >> 24) == 127;
    return w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == bpf_htonl(1);
}

/* 127.0.0.1 or ::1 exactly */
static __always_inline bool addr_is_localhost(const __u8 addr[16]) {
    const __u32* w = (const __u32*)addr;
    if (addr_is_v4_mapped(addr)) return w[3] == bpf_htonl(0x7f000001);
    return w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == bpf_htonl(1);
}

/* 127.0.0.6 or ::6: the inbound passthrough source Envoy binds. */
static __always_inline bool addr_is_inbound_passthrough(const __u8 addr[16]) {
    const __u32* w = (const __u32*)addr;
    if (addr_is_v4_mapped(addr)) return w[3] == bpf_htonl(MESHLANE_INBOUND_PASSTHROUGH_V4);
    return w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == bpf_htonl(6);
}

static __always_inline bool cidr_match(__u32 workload_id, __u32 kind, const __u8 addr[16]) {
    struct cidr_rule_key key = {
        .prefixlen = MESHLANE_CIDR_KEY_PREFIX_BITS + 128,
        .workload_id = bpf_htonl(workload_id),
        .kind = bpf_htonl(MESHLANE_CIDR_KEY_KIND(kind, addr_is_v4_mapped(addr))),
    };
    __builtin_memcpy(key.addr, addr, 16);
    return bpf_map_lookup_elem(&cidr_rules, &key) != NULL;
}

static __always_inline bool port_rule(__u32 workload_id, __u8 kind, __u16 port) {
    struct port_rule_key key = {.workload_id = workload_id, .port = port, .kind = kind};
    return bpf_map_lookup_elem(&port_rules, &key) != NULL;
}

/* Is id one of the workload's proxy uids (kind MESHLANE_PROXY_ID_UID) or gids? The first is in
 * the config; the map is asked only when the workload lists more. */
static __always_inline bool is_proxy_id(const struct workload_config* cfg, __u32 kind, __u32 id) {
    if (id == (kind == MESHLANE_PROXY_ID_UID ? cfg->proxy_uid : cfg->proxy_gid)) return true;
    if (!(cfg->flags & MESHLANE_WL_MORE_PROXY_IDS)) return false;
    struct proxy_id_key key = {.workload_id = cfg->workload_id, .kind = kind, .id = id};
    return bpf_map_lookup_elem(&proxy_ids, &key) != NULL;
}

/* Does the workload capture this family? IPv4 includes v4-mapped IPv6 (IPv4 on the wire). */
static __always_inline bool family_captured(const struct workload_config* cfg, bool v4) {
    return !(cfg->flags & (v4 ? MESHLANE_WL_NO_CAPTURE_V4 : MESHLANE_WL_NO_CAPTURE_V6));
}

/* "Leaves through lo": an address of this pod (loopback, unspecified, or a pod address). */
static __always_inline bool addr_is_pod_local(__u32 workload_id, const __u8 addr[16]) {
    return addr_is_loopback(addr) || addr_is_any(addr) ||
           cidr_match(workload_id, MESHLANE_CIDR_POD_LOCAL, addr);
}

#endif /* MESHLANE_BPF_REDIRECT_COMMON_H */
