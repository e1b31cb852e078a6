/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The structs and constants that cross the BPF / agent boundary for the sk_msg fast path
 * (features/fastpath/fastpath_sockmap.bpf.c, features/fastpath/fastpath_datapath.*). Defined once
 * here. Every struct is a map key or value: explicit layouts, grow only at the end.
 */
#ifndef MESHLANE_FASTPATH_ABI_H
#define MESHLANE_FASTPATH_ABI_H

#ifndef __BPF__
#include <linux/types.h>
#endif

#include "meshlane/redirect_abi.h"

#define MESHLANE_FASTPATH_MAX_SOCKETS 65536
#define MESHLANE_FASTPATH_MAX_CONNECTIONS 32768
/* fastpath_pod_addrs: IPv4 pod address (network order) -> workload_id, for the workloads with
 * MESHLANE_FASTPATH_PROXY_PROXY; written by the agent from the addresses it finds in each netns. */
#define MESHLANE_FASTPATH_MAX_POD_ADDRS 4096
/* fastpath_msg_observers (PROG_ARRAY, pinned): sk_msg programs of other objects that
 * fastpath_msg tail-calls for each message it redirected (those bytes never reach an skb). Slot
 * MESHLANE_FASTPATH_MSG_OBSERVER_TLS: observe_tls_msg (bpf/observe_tls_wire.bpf.c), put there
 * by the agent's TLS observer; an empty slot costs one failed tail call. */
#define MESHLANE_FASTPATH_MSG_OBSERVER_TLS 0
#define MESHLANE_FASTPATH_MSG_OBSERVERS 1

/* Value of fastpath_workload_kinds (ARRAY indexed by workload_id): which pairs of this workload
 * may be accelerated. 0 = fast path off (the default, and what the agent writes for every
 * workload when the kernel self-test failed). */
enum meshlane_fastpath_kind {
    /* app <-> its own proxy, both ends in the pod netns over loopback: outbound (app ->
     * 127.0.0.1:<outbound port>) and inbound (proxy -> local app, from 127.0.0.6 like Envoy's
     * inbound passthrough, or from the pod IP to the pod IP). */
    MESHLANE_FASTPATH_APP_PROXY = 1u << 0,
    /* proxy <-> proxy of two pods on the same node: a connection between two non-loopback
     * IPv4 addresses whose connecting end is in a workload with this bit and whose accepting end
     * (in practice the other pod's inbound listener) is in a workload with this bit too. */
    MESHLANE_FASTPATH_PROXY_PROXY = 1u << 1,
};

/* One socket of a connection, seen from that socket. SOCKHASH key and, for the connecting
 * (active) end, the key of fastpath_conns. The netns cookie keeps pods apart: every pod has its
 * own 127.0.0.1 (app <-> proxy). proxy <-> proxy keys have netns_cookie 0: the two ends are in
 * different netns, and pod IPs are unique on a node. Ports in host order. IPv4 only. */
struct fastpath_key {
    __u64 netns_cookie;
    __u32 local_ip4;  /* network order */
    __u32 remote_ip4; /* network order */
    __u16 local_port;
    __u16 remote_port;
    __u32 reserved;
};

/* fastpath_conn.state: decided once per connection, by whichever happens first: */
enum meshlane_fastpath_conn_state {
    /* the connecting end is in the SOCKHASH, the accepted end is not yet */
    MESHLANE_FASTPATH_UNDECIDED = 0,
    /* the accepted end joined before any byte was sent: every byte of this connection, both
     * directions, goes through sk_msg redirect, except while a direction is spilled to the TCP
     * path (spilled_from_* below; flow control) */
    MESHLANE_FASTPATH_ACCELERATED = 1,
    /* the connecting end sent first: every byte stays on the TCP path, for the whole
     * connection (mixing the two paths could reorder) */
    MESHLANE_FASTPATH_TCP_ONLY = 2,
    /* 3 was SPILLED (the whole connection on TCP for good after one burst); replaced by the
     * per-direction spilled_from_* flags of struct fastpath_conn. Not used again. */
};

/* Value of fastpath_conns (HASH keyed by the connecting end's fastpath_key). */
struct fastpath_conn {
    __u32 state; /* enum meshlane_fastpath_conn_state, changed only by compare-and-swap */
    __u32 workload_id;
    /* kernel addresses of each end's psock (struct sk_psock), taken when the end joined the
     * SOCKHASH; only ever read with bpf_probe_read_kernel (its unread byte count, for
     * MESHLANE_FASTPATH_MAX_QUEUED_BYTES). 0: not known. */
    __u64 connecting_psock;
    __u64 accepting_psock;
    /* Flow control of an ACCELERATED connection, one flag per direction, named after the
     * sending end (MESHLANE_FASTPATH_MAX_QUEUED_BYTES): 1 while that end's messages go on the
     * TCP path because its peer fell behind, 0 while they are redirected. Set and cleared only
     * by the sending end's own sk_msg program, by compare-and-swap (docs/fastpath.md "Flow
     * control: spill to TCP, and back"). */
    __u32 spilled_from_connecting;
    __u32 spilled_from_accepting;
};

/* How the fast path chooses the sockets it may put in the SOCKHASH (a load-time constant of
 * fastpath_sockmap, set by the agent from its kernel self-test).
 * A socket with a psock is read by tcp_bpf_recvmsg, which on the kernels the self-test flags
 * returns -EAGAIN to a *blocking* recv() woken while both of its queues are empty (the ACK of its
 * own FIN, a signal, a reset, send-buffer space): docs/fastpath.md, "Blocking readers". */
enum meshlane_fastpath_policy {
    /* every socket of an enabled kind may join (kernels without the hazard) */
    MESHLANE_FASTPATH_POLICY_ANY_SOCKET = 0,
    /* both ends must be the proxies' own sockets (socket uid == the workload's proxy uid; an
     * accepted socket carries its listener's uid), and the connecting end's file must be
     * O_NONBLOCK when it joins: event-loop proxies never block in recv(). App sockets never
     * join: their blocking mode is theirs to change at any time (fcntl), and a socket cannot
     * leave the SOCKHASH race-free while its peer may redirect into it. */
    MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY = 1,
};

/* Per-workload counters: fastpath_counters is a PERCPU_ARRAY indexed by
 * workload_id * MESHLANE_FASTPATH_COUNTER_STRIDE + counter. Names in agent/loader must match. */
#define MESHLANE_FASTPATH_COUNTER_STRIDE 16

/* An ingress redirect queues the bytes on the receiver's psock without any flow control: a
 * sender faster than its reader grows that queue until global TCP memory runs out and sendmsg()
 * fails with ENOMEM. Above this many unread bytes on the receiver's psock that direction of the
 * connection spills to the TCP path (order-safe: the receiver drains its psock queue before its
 * TCP receive queue), where TCP's flow control applies; it comes back to the fast path once the
 * receiver has read every byte sent on TCP (features/fastpath/fastpath_sockmap.bpf.c). 4 MiB: above
 * the default TCP receive buffer's autotuning start, below tcp_rmem's 6 MiB maximum. */
#define MESHLANE_FASTPATH_MAX_QUEUED_BYTES (4u << 20)
enum meshlane_fastpath_counter {
    MESHLANE_FP_CNT_REDIRECTED_MSGS = 0,
    MESHLANE_FP_CNT_REDIRECTED_BYTES,
    /* messages of connections that are not accelerated, sent on the TCP path */
    MESHLANE_FP_CNT_PASSED_MSGS,
    MESHLANE_FP_CNT_PASSED_BYTES,
    MESHLANE_FP_CNT_CONNS_ACCELERATED,
    /* not eligible: the connecting end wrote before the accepted end joined */
    MESHLANE_FP_CNT_NOT_ELIGIBLE_SENT_FIRST,
    /* not eligible: the accepted end found no connecting end (peer not enrolled for the fast
     * path, connection from outside the pod, or the SOCKHASH was full) */
    MESHLANE_FP_CNT_NOT_ELIGIBLE_NO_PEER,
    /* not eligible: the socket could not be put in the SOCKHASH */
    MESHLANE_FP_CNT_NOT_ELIGIBLE_INSERT_FAILED,
    /* accelerated connection whose peer socket had already left the SOCKHASH (closed):
     * the message goes to TCP, which answers as it would without us (RST) */
    MESHLANE_FP_CNT_PEER_GONE,
    /* the proxy <-> proxy share of conns_accelerated and redirected_bytes (counted on the
     * connecting end's workload, both directions) */
    MESHLANE_FP_CNT_PROXY_PROXY_CONNS_ACCELERATED,
    MESHLANE_FP_CNT_PROXY_PROXY_REDIRECTED_BYTES,
    /* the inbound proxy -> local app share (app-proxy kind) of conns_accelerated and
     * redirected_bytes, counted on the pod's own workload */
    MESHLANE_FP_CNT_PROXY_APP_CONNS_ACCELERATED,
    MESHLANE_FP_CNT_PROXY_APP_REDIRECTED_BYTES,
    /* one direction of an accelerated connection moved to the TCP path because its receiver
     * had more than MESHLANE_FASTPATH_MAX_QUEUED_BYTES unread on its psock (no flow control on
     * that queue); counted once per spill */
    MESHLANE_FP_CNT_SPILLED_TO_TCP,
    /* a spilled direction redirected again: its receiver had read every byte sent on TCP */
    MESHLANE_FP_CNT_RETURNED_TO_FAST_PATH,
    /* not eligible under MESHLANE_FASTPATH_POLICY_PROXY_SOCKETS_ONLY: an end that may be read
     * by a blocking recv() (not a proxy socket, or a connecting end without O_NONBLOCK) */
    MESHLANE_FP_CNT_NOT_ELIGIBLE_BLOCKING_READER,
    MESHLANE_FP_COUNTER_MAX
};
#ifdef __cplusplus
static_assert(MESHLANE_FP_COUNTER_MAX <= MESHLANE_FASTPATH_COUNTER_STRIDE, "grow the stride");
#else
_Static_assert(MESHLANE_FP_COUNTER_MAX <= MESHLANE_FASTPATH_COUNTER_STRIDE, "grow the stride");
#endif

#endif /* MESHLANE_FASTPATH_ABI_H */
