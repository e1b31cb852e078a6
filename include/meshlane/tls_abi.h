/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The structs and constants that cross the BPF / agent boundary for TLS-handshake observation
 * (bpf/observe_tls_wire.bpf.c, bpf/observe_tls_libssl.bpf.c, agent/observe/tls_*). Defined
 * once here. Map values and ring-buffer records: explicit layouts, only grow at the end.
 */
#ifndef MESHLANE_TLS_ABI_H
#define MESHLANE_TLS_ABI_H

#ifndef __BPF__
#include <linux/types.h>
#endif

#include "meshlane/observe_abi.h"

/* Bytes of SNI kept (longer names are truncated; sni_truncated is set). */
#define MESHLANE_TLS_SNI_LEN 64

/* Where a handshake was measured. */
enum meshlane_tls_source {
    MESHLANE_TLS_SOURCE_WIRE = 0,   /* the client->server byte stream (cgroup_skb / sk_msg) */
    MESHLANE_TLS_SOURCE_LIBSSL = 1, /* uprobes on SSL_do_handshake/SSL_connect/SSL_accept */
    MESHLANE_TLS_SOURCE_MAX
};

enum meshlane_tls_outcome {
    MESHLANE_TLS_OK = 1,     /* wire: first application_data record; libssl: call returned 1 */
    MESHLANE_TLS_ALERT = 2,  /* wire: the client sent an alert (plain, or TLS 1.3 encrypted) */
    MESHLANE_TLS_RESET = 3,  /* wire: RST sent or received before the handshake completed */
    MESHLANE_TLS_CLOSED = 4, /* wire: FIN sent or received before the handshake completed */
    MESHLANE_TLS_ERROR = 5,  /* libssl: the call failed with a fatal error (<= 0, not WANT_*) */
};

/* Value of tls_stats (ARRAY indexed workload_id * MESHLANE_TLS_SOURCE_MAX + source); reset by
 * the first update for a new netns_cookie, as connect_stats. */
struct tls_stats {
    __u64 netns_cookie;
    __u64 latency_hist[MESHLANE_HIST_BUCKETS]; /* completed handshakes, log2 us */
    __u64 latency_sum_us;
    __u64 completed;
    __u64 alerts;
    __u64 resets;
    __u64 closed;
    __u64 errors;
};

/* Record of the tls_events ring buffers: one finished (or failed) handshake. */
struct tls_handshake_event {
    __u64 timestamp_ns; /* bpf_ktime_get_ns() at the outcome */
    __u64 latency_ns;   /* ClientHello (wire) or first call (libssl) -> outcome */
    __u64 netns_cookie;
    __u32 workload_id;
    __u32 pid; /* libssl: tgid of the caller; wire: 0 */
    __u8 comm[MESHLANE_COMM_LEN];
    __u8 saddr[16]; /* v4-mapped for IPv4; zero for libssl */
    __u8 daddr[16];
    __u8 orig_daddr[16]; /* the app's original destination (app side), else zero */
    __u16 sport;         /* host order */
    __u16 dport;
    __u16 orig_dport;
    __u16 version; /* 0x0304 TLS 1.3, 0x0303 TLS 1.2, ...; 0 unknown (see tls_wire.h) */
    __u8 family;
    __u8 side;              /* enum meshlane_connect_side (wire); MESHLANE_SIDE_APP for libssl */
    __u8 source;            /* enum meshlane_tls_source */
    __u8 outcome;           /* enum meshlane_tls_outcome */
    __u8 alert_level;       /* 1 warning, 2 fatal, 0 unknown (encrypted) */
    __u8 alert_description; /* RFC 8446 AlertDescription when readable */
    __u8 sni_len;
    __u8 sni_truncated;
    __s32 error;        /* libssl: the call's return value on failure */
    __u32 libssl_calls; /* libssl: calls that made up this handshake (WANT_READ/WRITE retries) */
    __u8 sni[MESHLANE_TLS_SNI_LEN];
};

#define MESHLANE_TLS_EVENTS_BYTES (256 * 1024)
/* libssl handshakes in progress (SSL* -> start), across all processes. */
#define MESHLANE_TLS_LIBSSL_INFLIGHT 16384

#endif /* MESHLANE_TLS_ABI_H */
