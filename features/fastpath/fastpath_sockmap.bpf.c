// SPDX-License-Identifier: GPL-2.0-only
/*
 * The sk_msg fast path (docs/fastpath.md) between an app and its own proxy, and between the
 * proxies of two pods on the same node. Attached next to redirect_sockops on each enrolled pod
 * cgroup (multi-attach; it does not replace it):
 *   fastpath_sockops  puts both ends of an app -> 127.0.0.1:<outbound port> connection, or of a
 *                     connection between two enrolled pods (proxy -> other pod's inbound
 *                     listener), into fastpath_peers (SOCKHASH) and decides, once, whether the
 *                     connection is accelerated
 *   fastpath_msg      (sk_msg on fastpath_peers) moves each sendmsg() of an accelerated
 *                     connection straight into the peer's receive queue (BPF_F_INGRESS)
 *
 * Why no byte can be reordered: a connection is either accelerated for every byte in both
 * directions, or for none. The connecting end enters the map at ACTIVE_ESTABLISHED, before its
 * connect() returns, so its sk_msg program sees every byte it will ever send. Its state starts
 * UNDECIDED. The first of two events wins, by compare-and-swap on fastpath_conn.state:
 *   - the accepted end reaches PASSIVE_ESTABLISHED (before accept() can return it, so it has sent
 *     nothing) and joins the map: UNDECIDED -> ACCELERATED;
 *   - the connecting end sends its first message: UNDECIDED -> TCP_ONLY, and that message (and all
 *     later ones, both directions) stay on TCP; the connecting end leaves the SOCKHASH when
 *     that message is transmitted (FIONREAD, see on_transmit).
 * Nothing is ever on both paths, so the receiver's two queues (psock ingress, TCP receive queue)
 * never both hold data of one connection -- except by the flow control below, which moves one
 * direction between the paths only where that cannot reorder.
 *
 * Flow control (MESHLANE_FASTPATH_MAX_QUEUED_BYTES), per direction S -> R of an ACCELERATED
 * connection (S: the end whose sendmsg runs fastpath_msg, R: its peer; the flag
 * spilled_from_connecting or spilled_from_accepting of S is written only by S's program):
 *   spill   R has more than 4 MiB unread on its psock: set S's flag, this message and the next
 *           ones of S go on TCP (SK_PASS), where TCP's send buffer makes S wait.
 *   return  while S's flag is set, each message of S first checks
 *           tcp_sk(S)->write_seq == tcp_sk(R)->copied_seq: R's application has read every byte
 *           S ever put on TCP. Then the flag is cleared and the message is redirected again.
 * Why no byte is reordered, lost or duplicated:
 *   - R's reads (tcp_bpf_recvmsg) serve the psock queue first and take the TCP receive queue
 *     only when the psock queue is empty. A spill therefore keeps order: every redirected byte
 *     was queued on the psock before the first TCP byte of the spill was sent.
 *   - Redirected bytes move neither S's write_seq nor R's copied_seq (sk_msg redirect bypasses
 *     TCP sequence space; features/fastpath/tests/test_fastpath_spill.py checks this on the running
 *     kernel), so both count TCP bytes only, in one sequence space. S's program runs under
 *     lock_sock(S), and every earlier SK_PASS of S was pushed into S's write queue before it
 *     returned: write_seq is every TCP byte S ever sent (or queued). R's copied_seq only grows
 *     towards it, after the bytes are copied to R's application. Equality proves that R's TCP
 *     receive queue, S's write queue and everything in flight are empty of this direction, so
 *     the next redirected byte cannot overtake a TCP byte. A read of R that took the TCP path
 *     and is still copying returns only TCP bytes; the redirected ones wait for the next read.
 *   - Each byte takes one path (the verdict of its message), so nothing is duplicated; a
 *     message is never split between the paths.
 *   - Several threads writing on S: tcp_bpf_send_verdict drops lock_sock(S) while it redirects
 *     a message. Another writer may then run the program and spill or return; but its message
 *     and the one being redirected belong to two sendmsg() calls that are both still in
 *     progress, so TCP promises no order between them either; the bytes of each call keep
 *     their order (the thread redirecting relocks S before its next message is judged).
 *   - The two directions are independent: S -> R bytes live only in R's queues.
 * R's tcp_sock is read through R's psock (recorded when R joined the SOCKHASH), checked to
 * still be this connection's socket (a closed R's psock memory may be reused): its ports must
 * be the peer key's.
 *
 * Blocking readers (reader_policy): a socket with a psock is read by tcp_bpf_recvmsg, which on
 * the kernels the agent's self-test flags returns -EAGAIN to a blocking recv() woken with both
 * queues empty (its own FIN's ACK, a signal). There only the proxies' own sockets may join
 * (may_be_read_blocking); app <-> proxy pairs stay on TCP (docs/fastpath.md "Blocking readers").
 */
// clang-format off
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "features/fastpath/fastpath_abi.h"
#include "features/fastpath/fastpath_state.h"
#include "meshlane/redirect_abi.h"
// clang-format on

#define AF_INET 2
#define AF_INET6 10
#define LOOPBACK_V4 0x7f000001u    /* 127.0.0.1, host order */
#define PASSTHROUGH_V4 0x7f000006u /* 127.0.0.6: inbound passthrough source (Envoy), host order */

char LICENSE[] SEC("license") = "GPL";

#include "workload_map.h"

/* Self-test instance only (features/fastpath/fastpath_selftest.cpp): every socket of the cgroup is
 * treated as workload 0 with these kinds and this outbound port; workload_by_netns is ignored. */
const volatile __u32 selftest_kinds = 0;
const volatile __u16 selftest_outbound_port = 0;
const volatile __u32 selftest_proxy_uid = 0;

/* enum meshlane_fastpath_policy, set by the agent before load from its kernel self-test: which
 * sockets may join the SOCKHASH (features/fastpath/fastpath_abi.h, docs/fastpath.md "Blocking
 * readers"). */
const volatile __u32 reader_policy = MESHLANE_FASTPATH_POLICY_ANY_SOCKET;
#define O_NONBLOCK_FLAG 04000 /* O_NONBLOCK, asm-generic/fcntl.h */

/* Sizes are placeholders: the agent sets max_entries from max_workloads before load. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, MESHLANE_MAX_WORKLOADS_DEFAULT);
    __type(key, __u32);
    __type(value, __u32); /* enum meshlane_fastpath_kind bits */
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} fastpath_workload_kinds SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, MESHLANE_FASTPATH_MAX_SOCKETS);
    __type(key, struct fastpath_key);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} fastpath_peers SEC(".maps");

/* Not LRU: evicting the entry of a live accelerated connection would send its next message on
 * TCP behind data already redirected. Entries are deleted when the connecting end closes. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MESHLANE_FASTPATH_MAX_CONNECTIONS);
    __type(key, struct fastpath_key);
    __type(value, struct fastpath_conn);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} fastpath_conns SEC(".maps");

/* The IPv4 addresses of this node's pods that enable proxy <-> proxy (agent-written). A proxy's
 * connection enters the SOCKHASH only towards one of them: connections leaving the node never
 * get a psock (FIONREAD, see give_up), and cost nothing here. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MESHLANE_FASTPATH_MAX_POD_ADDRS);
    __type(key, __u32);
    __type(value, __u32);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} fastpath_pod_addrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, MESHLANE_MAX_WORKLOADS_DEFAULT* MESHLANE_FASTPATH_COUNTER_STRIDE);
    __type(key, __u32);
    __type(value, __u64);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} fastpath_counters SEC(".maps");

/* Observers of redirected messages (features/fastpath/fastpath_abi.h); filled by the agent. */
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(max_entries, MESHLANE_FASTPATH_MSG_OBSERVERS);
    __type(key, __u32);
    __type(value, __u32);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} fastpath_msg_observers SEC(".maps");

/* Loads chosen by a branch get merged by clang into one load from a computed ctx offset, which
 * the verifier rejects: read every ctx field once, volatile. */
#define CTX_READ(field) (*(volatile __typeof__(field)*)&(field))

static __always_inline void count(__u32 workload_id, __u32 counter, __u64 value) {
    __u32 key = workload_id * MESHLANE_FASTPATH_COUNTER_STRIDE + counter;
    __u64* slot = bpf_map_lookup_elem(&fastpath_counters, &key);
    if (slot) *slot += value; /* per-CPU: no atomics needed */
}

/* remote_port is in network order; depending on the kernel in the low or the high 16 bits. */
static __always_inline __u16 remote_port_host(__u32 raw) {
    return raw > 0xffff ? (__u16)bpf_ntohl(raw) : bpf_ntohs((__u16)raw);
}

static __always_inline void peer_of(const struct fastpath_key* own, struct fastpath_key* peer) {
    peer->netns_cookie = own->netns_cookie;
    peer->local_ip4 = own->remote_ip4;
    peer->remote_ip4 = own->local_ip4;
    peer->local_port = own->remote_port;
    peer->remote_port = own->local_port;
    peer->reserved = 0;
}

/* What kind_enabled reports about the socket's workload. */
struct fastpath_workload {
    __u32 id;
    __u32 proxy_uid;
    __u16 outbound_port;
};

/* The socket's workload, when pairs of this kind may be accelerated in it. */
static __always_inline bool kind_enabled(struct bpf_sock_ops* ctx, __u32 kind,
                                         struct fastpath_workload* w) {
    if (selftest_kinds) {
        w->id = 0;
        w->outbound_port = selftest_outbound_port;
        w->proxy_uid = selftest_proxy_uid;
        return selftest_kinds & kind;
    }
    __u64 netns = bpf_get_netns_cookie(ctx);
    const struct workload_config* cfg = bpf_map_lookup_elem(&workload_by_netns, &netns);
    if (!cfg) return false;
    __u32 id = cfg->workload_id;
    const __u32* kinds = bpf_map_lookup_elem(&fastpath_workload_kinds, &id);
    if (!kinds || !(*kinds & kind)) return false;
    w->id = id;
    w->outbound_port = cfg->outbound_port;
    w->proxy_uid = cfg->proxy_uid;
    return true;
}

/* MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY: may this socket join? It must be the proxy's own
 * (its uid is the workload's proxy uid; an accepted socket carries its listener's), and, when
 * it has a file already (the connecting end: connect() was called on it), that file must be
 * O_NONBLOCK. An accepted socket gets its file only in accept(); its listener's uid is what
 * proves it is the proxy's (event-loop proxies read non-blocking: HAProxy accepts with
 * SOCK_NONBLOCK). Everything else might be read by a blocking recv(), which tcp_bpf_recvmsg can
 * fail with EAGAIN (docs/fastpath.md "Blocking readers"). */
static __always_inline bool may_be_read_blocking(struct bpf_sock_ops* ctx,
                                                 const struct fastpath_workload* w) {
    if (reader_policy != MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY) return false;
    struct bpf_sock* sk = CTX_READ(ctx->sk);
    if (!sk) return true;
    struct tcp_sock* tp = bpf_skc_to_tcp_sock(sk);
    if (!tp) return true;
    if (BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_uid.val) != w->proxy_uid) return true;
    struct socket* sock = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_socket);
    if (!sock) return false; /* accepted, not accept()ed yet: the listener's uid decided */
    struct file* file = BPF_CORE_READ(sock, file);
    if (!file) return false;
    return !(BPF_CORE_READ(file, f_flags) & O_NONBLOCK_FLAG);
}

static __always_inline bool is_loopback(__u32 ip4 /* network order */) {
    return (bpf_ntohl(ip4) >> 24) == 127;
}

/* Which pair a connection is. Follows from the key's addresses alone, so both ends and the
 * sk_msg program agree:
 *   PAIR_OUTBOUND    127.0.0.1 <-> 127.0.0.1: app <-> its proxy's outbound listener
 *   PAIR_INBOUND     127.0.0.6 <-> any, or pod IP <-> the same pod IP: the proxy's inbound
 *                    forwarding to the local app. Both addresses are local to one netns (a
 *                    127/8 source cannot leave it, a connection to the own address is routed
 *                    over lo), so both ends are in the pod netns, as for PAIR_OUTBOUND.
 *   PAIR_PROXY_PROXY two different non-loopback addresses: proxy <-> proxy across two netns
 * The first two are the app-proxy kind (key with the netns cookie: every pod has its own
 * 127.0.0.1 and may reuse addresses), the last has netns cookie 0 (pod IPs are unique on a
 * node). Anything else (other loopback pairs, IPv6) is never accelerated: PAIR_NONE. */
enum fastpath_pair { PAIR_NONE = 0, PAIR_OUTBOUND, PAIR_INBOUND, PAIR_PROXY_PROXY };

static __always_inline __u32 pair_of(struct fastpath_key* key, __u64 netns_cookie) {
    __u32 local = key->local_ip4, remote = key->remote_ip4;
    key->netns_cookie = netns_cookie;
    if (local == bpf_htonl(LOOPBACK_V4) && remote == bpf_htonl(LOOPBACK_V4)) return PAIR_OUTBOUND;
    if (local == bpf_htonl(PASSTHROUGH_V4) || remote == bpf_htonl(PASSTHROUGH_V4) ||
        (local == remote && !is_loopback(local)))
        return PAIR_INBOUND;
    key->netns_cookie = 0;
    if (is_loopback(local) || is_loopback(remote)) return PAIR_NONE;
    return PAIR_PROXY_PROXY;
}

static __always_inline __u32 kind_of_pair(__u32 pair) {
    return pair == PAIR_PROXY_PROXY ? MESHLANE_FASTPATH_PROXY_PROXY : MESHLANE_FASTPATH_APP_PROXY;
}

/* IPv4, or IPv4 on a dual-stack IPv6 socket (::ffff:a.b.c.d both ends, e.g. a proxy's
 * [::]:15006 listener accepting an IPv4 connection): the IPv4 4-tuple, in *local / *remote. */
#define READ_IPV4_TUPLE(ctx, local, remote)                                                       \
    ({                                                                                            \
        __u32 family_ = CTX_READ((ctx)->family);                                                  \
        bool ok_ = family_ == AF_INET;                                                            \
        *(local) = CTX_READ((ctx)->local_ip4);                                                    \
        *(remote) = CTX_READ((ctx)->remote_ip4);                                                  \
        if (family_ == AF_INET6) {                                                                \
            __u32 l0_ = CTX_READ((ctx)->local_ip6[0]), l1_ = CTX_READ((ctx)->local_ip6[1]);       \
            __u32 l2_ = CTX_READ((ctx)->local_ip6[2]), r0_ = CTX_READ((ctx)->remote_ip6[0]);      \
            __u32 r1_ = CTX_READ((ctx)->remote_ip6[1]);                                           \
            __u32 r2_ = CTX_READ((ctx)->remote_ip6[2]);                                           \
            ok_ =                                                                                 \
                !(l0_ | l1_ | r0_ | r1_) && l2_ == bpf_htonl(0xffff) && r2_ == bpf_htonl(0xffff); \
            *(local) = CTX_READ((ctx)->local_ip6[3]);                                             \
            *(remote) = CTX_READ((ctx)->remote_ip6[3]);                                           \
        }                                                                                         \
        ok_;                                                                                      \
    })

/* Fills key; returns its pair, PAIR_NONE when not eligible. */
static __always_inline __u32 read_key(struct bpf_sock_ops* ctx, struct fastpath_key* key) {
    bool ipv4 = READ_IPV4_TUPLE(ctx, &key->local_ip4, &key->remote_ip4);
    key->local_port = (__u16)CTX_READ(ctx->local_port);
    key->remote_port = remote_port_host(CTX_READ(ctx->remote_port));
    key->reserved = 0;
    if (!ipv4) return PAIR_NONE;
    return pair_of(key, bpf_get_netns_cookie(ctx));
}

/* The address of this socket's psock (it has one once it is in the SOCKHASH): sk_user_data
 * carries it with flag bits in the low three bits (SK_USER_DATA_NOCOPY/BPF/PSOCK). */
static __always_inline __u64 psock_of(struct bpf_sock_ops* ctx) {
    struct bpf_sock* sk = CTX_READ(ctx->sk);
    if (!sk) return 0;
    struct tcp_sock* tp = bpf_skc_to_tcp_sock(sk);
    if (!tp) return 0;
    __u64 data = (__u64)BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_user_data);
    return data & ~7ULL;
}

/* The connecting end: an app's socket to 127.0.0.1:<outbound port> (connect4 put it there), the
 * proxy's inbound forwarding to the local app (from 127.0.0.6 or from the pod IP), or a proxy's
 * connection to another pod. ACTIVE_ESTABLISHED runs before connect() returns and before the
 * socket is writable, and (on loopback and veth alike) before the final ACK that creates the
 * accepting end leaves: no byte was sent, and the accepting end cannot exist yet. */
static __always_inline void on_connected(struct bpf_sock_ops* ctx) {
    struct fastpath_key key;
    struct fastpath_workload w;
    __u32 pair = read_key(ctx, &key);
    if (!pair || !kind_enabled(ctx, kind_of_pair(pair), &w)) return;
    __u32 wid = w.id;
    if (pair == PAIR_OUTBOUND && key.remote_port != w.outbound_port) return;
    /* inbound: the connecting end is the one with the passthrough source */
    if (pair == PAIR_INBOUND && key.remote_ip4 == bpf_htonl(PASSTHROUGH_V4)) return;
    if (pair == PAIR_PROXY_PROXY && !bpf_map_lookup_elem(&fastpath_pod_addrs, &key.remote_ip4))
        return; /* not a pod of this node with proxy <-> proxy */
    /* The inbound pair's accepting end is the app: never a proxy socket. */
    if (may_be_read_blocking(ctx, &w) ||
        (reader_policy == MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY && pair == PAIR_INBOUND)) {
        count(wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_BLOCKING_READER, 1);
        return;
    }
    struct fastpath_conn conn = {.state = MESHLANE_FASTPATH_UNDECIDED, .workload_id = wid};
    if (bpf_map_update_elem(&fastpath_conns, &key, &conn, BPF_ANY) != 0) {
        count(wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_INSERT_FAILED, 1);
        return;
    }
    if (bpf_sock_hash_update(ctx, &fastpath_peers, &key, BPF_ANY) != 0) {
        bpf_map_delete_elem(&fastpath_conns, &key);
        count(wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_INSERT_FAILED, 1);
        return;
    }
    struct fastpath_conn* entered = bpf_map_lookup_elem(&fastpath_conns, &key);
    if (entered) entered->connecting_psock = psock_of(ctx);
    /* Watch for the close, to delete the fastpath_conns entry, and for the first packet that
     * carries data on TCP (on_transmit). */
    bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG |
                                       BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}

/* The connecting end transmits a TCP segment (the header-option length callback, which runs for
 * every segment while BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG is set; we reserve no option space).
 * Once the connection is decided the watch ends. TCP_ONLY: the connecting end wrote first (its
 * sk_msg program decided, but sk_msg programs may not delete from a SOCKHASH), so it leaves the
 * SOCKHASH here, in that same sendmsg, before any reply can exist: a socket with a psock
 * answers FIONREAD from the psock queue only (see give_up). Needed when no accepting end ever
 * joins (it is not in an enrolled cgroup); otherwise on_accepted removes it as well. */
static __always_inline void on_transmit(struct bpf_sock_ops* ctx) {
    struct fastpath_key key;
    if (!read_key(ctx, &key)) return;
    struct fastpath_conn* conn = bpf_map_lookup_elem(&fastpath_conns, &key);
    if (conn && conn->state == MESHLANE_FASTPATH_UNDECIDED) return; /* handshake ACK */
    if (conn && conn->state == MESHLANE_FASTPATH_TCP_ONLY)
        bpf_map_delete_elem(&fastpath_peers, &key);
    bpf_sock_ops_cb_flags_set(ctx,
                              ctx->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}

/* A connection that will not be accelerated must not keep its connecting end in the SOCKHASH:
 * a socket with a psock answers FIONREAD (SIOCINQ) from the psock queue only (kernels with
 * "tcp: Add the data length in skmsg to SIOCINQ ioctl"), so a reader sizing its reads with
 * FIONREAD would see 0 while the proxy's reply sits in the TCP receive queue. Runs before the
 * proxy can accept, so before any reply can exist. */
static __always_inline void give_up(struct fastpath_conn* conn, const struct fastpath_key* peer,
                                    __u32 wid, __u32 reason) {
    __sync_val_compare_and_swap(&conn->state, MESHLANE_FASTPATH_UNDECIDED,
                                MESHLANE_FASTPATH_TCP_ONLY);
    bpf_map_delete_elem(&fastpath_peers, peer);
    count(wid, reason, 1);
}

/* The accepting end: the proxy's accepted socket (outbound listener), or, proxy <-> proxy, the
 * other pod's accepted socket (its inbound listener, steered there by sk_lookup without NAT, so
 * the 4-tuple is the connecting end's, reversed). PASSIVE_ESTABLISHED runs before accept() can
 * return it: it has sent nothing. */
static __always_inline void on_accepted(struct bpf_sock_ops* ctx) {
    struct fastpath_key key, peer;
    struct fastpath_workload w;
    __u32 pair = read_key(ctx, &key);
    if (!pair || !kind_enabled(ctx, kind_of_pair(pair), &w)) return;
    __u32 wid = w.id;
    if (pair == PAIR_OUTBOUND && key.local_port != w.outbound_port) return;
    if (pair == PAIR_INBOUND && key.local_ip4 == bpf_htonl(PASSTHROUGH_V4)) return;
    peer_of(&key, &peer);
    struct fastpath_conn* conn = bpf_map_lookup_elem(&fastpath_conns, &peer);
    if (!conn) {
        /* proxy <-> proxy: a connection from off the node, or from a pod without the kind. */
        count(wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_NO_PEER, 1);
        return;
    }
    /* Counted on the connecting end's workload, like every later byte of the connection. */
    wid = conn->workload_id;
    if (conn->state != MESHLANE_FASTPATH_UNDECIDED) {
        give_up(conn, &peer, wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_SENT_FIRST);
        return;
    }
    if (may_be_read_blocking(ctx, &w)) {
        give_up(conn, &peer, wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_BLOCKING_READER);
        return;
    }
    if (bpf_sock_hash_update(ctx, &fastpath_peers, &key, BPF_ANY) != 0) {
        give_up(conn, &peer, wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_INSERT_FAILED);
        return;
    }
    conn->accepting_psock = psock_of(ctx); /* before the state lets the other end redirect */
    /* Only now may the connecting end redirect to us: we are in the map. */
    if (__sync_val_compare_and_swap(&conn->state, MESHLANE_FASTPATH_UNDECIDED,
                                    MESHLANE_FASTPATH_ACCELERATED) == MESHLANE_FASTPATH_UNDECIDED) {
        count(wid, MESHLANE_FP_CNT_CONNS_ACCELERATED, 1);
        if (pair == PAIR_PROXY_PROXY) count(wid, MESHLANE_FP_CNT_PROXY_PROXY_CONNS_ACCELERATED, 1);
        if (pair == PAIR_INBOUND) count(wid, MESHLANE_FP_CNT_PROXY_APP_CONNS_ACCELERATED, 1);
        return;
    }
    /* The connecting end sent first, between our check and now: both ends leave the map. */
    bpf_map_delete_elem(&fastpath_peers, &key);
    give_up(conn, &peer, wid, MESHLANE_FP_CNT_NOT_ELIGIBLE_SENT_FIRST);
}

static __always_inline void on_closed(struct bpf_sock_ops* ctx) {
    struct fastpath_key key;
    if (!read_key(ctx, &key)) return;
    bpf_map_delete_elem(&fastpath_conns, &key);
}

SEC("sockops")
int fastpath_sockops(struct bpf_sock_ops* ctx) {
    switch (ctx->op) {
        case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
            on_connected(ctx);
            break;
        case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
            on_accepted(ctx);
            break;
        case BPF_SOCK_OPS_STATE_CB:
            if (ctx->args[1] == BPF_TCP_CLOSE) on_closed(ctx);
            break;
        case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
            on_transmit(ctx);
            break;
        default:
            break;
    }
    return 1;
}

/* Unread bytes on a psock (its ingress_msg queue), 0 when unknown. */
static __always_inline __u32 psock_queued_bytes(__u64 psock) {
    if (!psock) return 0;
    return BPF_CORE_READ((struct sk_psock*)psock, msg_tot_len);
}

/* A spilled direction S -> R may be redirected again (see the top of this file): R's
 * application has read every byte S ever sent on TCP (S's write_seq == R's copied_seq), and no
 * other writer of S waits inside a send with a message already judged (sk_write_pending).
 * r_psock: R's recorded psock; its socket must still be R (ports of the key *r). */
static __always_inline bool tcp_bytes_all_read(struct sk_msg_md* msg, __u64 r_psock,
                                               const struct fastpath_key* r) {
    if (!r_psock) return false;
    struct bpf_sock* own = CTX_READ(msg->sk);
    if (!own) return false;
    struct tcp_sock* s = bpf_skc_to_tcp_sock(own);
    if (!s) return false;
    if (s->inet_conn.icsk_inet.sk.sk_write_pending) return false;
    struct sock* rsk = BPF_CORE_READ((struct sk_psock*)r_psock, sk);
    if (!rsk) return false;
    if (BPF_CORE_READ(rsk, __sk_common.skc_num) != r->local_port ||
        BPF_CORE_READ(rsk, __sk_common.skc_dport) != bpf_htons(r->remote_port))
        return false;
    return s->write_seq == BPF_CORE_READ((struct tcp_sock*)rsk, copied_seq);
}

static __always_inline int pass(__u32 wid, __u32 size) {
    count(wid, MESHLANE_FP_CNT_PASSED_MSGS, 1);
    count(wid, MESHLANE_FP_CNT_PASSED_BYTES, size);
    return SK_PASS;
}

SEC("sk_msg")
int fastpath_msg(struct sk_msg_md* msg) {
    struct fastpath_key own = {
        .local_port = (__u16)CTX_READ(msg->local_port),
        .remote_port = remote_port_host(CTX_READ(msg->remote_port)),
    };
    if (!READ_IPV4_TUPLE(msg, &own.local_ip4, &own.remote_ip4)) return SK_PASS;
    __u32 pair = pair_of(&own, bpf_get_netns_cookie(msg));
    if (!pair) return SK_PASS;
    __u32 size = CTX_READ(msg->size);
    struct fastpath_key peer;
    peer_of(&own, &peer);
    /* The connecting end's key names the connection; the accepted end finds it reversed. */
    struct fastpath_conn* conn = bpf_map_lookup_elem(&fastpath_conns, &own);
    bool connecting = conn != NULL; /* the client's end: the only one a TLS parse follows */
    if (!conn) conn = bpf_map_lookup_elem(&fastpath_conns, &peer);
    if (!conn) return SK_PASS;
    __u32 wid = conn->workload_id;
    __u32 state = conn->state;
    if (state == MESHLANE_FASTPATH_UNDECIDED) {
        /* The connecting end writes before the accepted end joined: TCP for good. */
        state = __sync_val_compare_and_swap(&conn->state, MESHLANE_FASTPATH_UNDECIDED,
                                            MESHLANE_FASTPATH_TCP_ONLY);
        /* This message goes out on TCP; on_transmit takes the socket out of the SOCKHASH. */
        if (state == MESHLANE_FASTPATH_UNDECIDED) state = MESHLANE_FASTPATH_TCP_ONLY;
    }
    /* Flow control, this direction only (top of this file): spill to TCP while the peer is
     * more than MESHLANE_FASTPATH_MAX_QUEUED_BYTES behind, back once it read every TCP byte.
     * The transition is fastpath_msg_decide (fastpath_state.h, tested in tests/bpf/). */
    __u32* spilled = connecting ? &conn->spilled_from_connecting : &conn->spilled_from_accepting;
    __u64 peer_psock = connecting ? conn->accepting_psock : conn->connecting_psock;
    struct fastpath_msg_facts facts = {.state = state, .spilled = *spilled != 0};
    facts.tcp_bytes_all_read =
        fastpath_msg_needs_all_read(&facts) && tcp_bytes_all_read(msg, peer_psock, &peer);
    facts.peer_over_limit = fastpath_msg_needs_peer_queue(&facts) &&
                            psock_queued_bytes(peer_psock) > MESHLANE_FASTPATH_MAX_QUEUED_BYTES;
    struct fastpath_msg_step step = fastpath_msg_decide(&facts);
    if (step.flag_change == FASTPATH_FLAG_RETURN && __sync_val_compare_and_swap(spilled, 1, 0) == 1)
        count(wid, MESHLANE_FP_CNT_RETURNED_TO_FAST_PATH, 1);
    if (step.flag_change == FASTPATH_FLAG_SPILL && __sync_val_compare_and_swap(spilled, 0, 1) == 0)
        count(wid, MESHLANE_FP_CNT_SPILLED_TO_TCP, 1);
    if (!step.redirect) return pass(wid, size);
    if (bpf_msg_redirect_hash(msg, &fastpath_peers, &peer, BPF_F_INGRESS) == SK_PASS) {
        count(wid, MESHLANE_FP_CNT_REDIRECTED_MSGS, 1);
        count(wid, MESHLANE_FP_CNT_REDIRECTED_BYTES, size);
        if (pair == PAIR_PROXY_PROXY)
            count(wid, MESHLANE_FP_CNT_PROXY_PROXY_REDIRECTED_BYTES, size);
        if (pair == PAIR_INBOUND) count(wid, MESHLANE_FP_CNT_PROXY_APP_REDIRECTED_BYTES, size);
        /* These bytes never reach an skb: the TLS wire observer parses them here (it needs
         * every redirected byte of a handshaking socket in order, so no apply_bytes beyond
         * msg->size there). Its SK_PASS keeps the redirect; an empty slot falls through. */
        if (connecting)
            bpf_tail_call(msg, &fastpath_msg_observers, MESHLANE_FASTPATH_MSG_OBSERVER_TLS);
    } else {
        count(wid, MESHLANE_FP_CNT_PEER_GONE, 1);
    }
    return SK_PASS;
}
