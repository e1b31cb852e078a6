/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * TLS-handshake time as libssl sees it, for processes of enrolled pods that link the system
 * libssl.so.3 dynamically: uprobes on SSL_do_handshake / SSL_connect / SSL_accept (entry and
 * return), SSL_get_error (entry and return) and SSL_free, attached to the library file for all
 * processes; the caller's network namespace cookie, looked up in workload_by_netns, filters
 * them (a pod is a netns; the harness and kubelet put processes in the pod cgroup first).
 *
 * One handshake, not one per call (sslsniff's bug): a non-blocking SSL* whose call returns -1
 * with SSL_get_error() = WANT_READ/WANT_WRITE keeps its start time in libssl_inflight until a
 * call returns 1 (completed) or fails fatally (return 0, SSL_get_error() says SSL/SYSCALL, or
 * SSL_free() with the handshake unfinished). SSL_connect calling SSL_do_handshake inside the
 * library nests: only the outermost call of a thread counts.
 */
#include "observe_tls_common.h"

#define SSL_ERROR_WANT_READ 2
#define SSL_ERROR_WANT_WRITE 3
#define SSL_ERROR_WANT_X509_LOOKUP 4
#define SSL_ERROR_WANT_CONNECT 7
#define SSL_ERROR_WANT_ACCEPT 8
#define SSL_ERROR_WANT_ASYNC 9
#define SSL_ERROR_WANT_ASYNC_JOB 10
#define SSL_ERROR_WANT_CLIENT_HELLO_CB 11
#define SSL_ERROR_WANT_RETRY_VERIFY 12

char LICENSE[] SEC("license") = "GPL";

struct inflight_key {
    __u64 ssl; /* SSL* in the process */
    __u32 tgid;
    __u32 reserved;
};

struct inflight {
    __u64 started_ns; /* entry of the first call */
    __u64 netns_cookie;
    __u32 workload_id;
    __u32 calls;
    __s32 last_return; /* of the last completed call; -1 waits for SSL_get_error */
    __u32 reserved;
};

/* LRU: a process that leaks SSL* mid-handshake cannot fill it for everyone. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, MESHLANE_TLS_LIBSSL_INFLIGHT);
    __type(key, struct inflight_key);
    __type(value, struct inflight);
} libssl_inflight SEC(".maps");

/* The call a thread is in (uretprobes have no arguments). */
struct thread_call {
    __u64 ssl;
    __u32 depth; /* nesting: SSL_connect -> SSL_do_handshake */
    __u32 reserved;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MESHLANE_TLS_LIBSSL_INFLIGHT);
    __type(key, __u64); /* pid_tgid */
    __type(value, struct thread_call);
} libssl_thread_call SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MESHLANE_TLS_LIBSSL_INFLIGHT);
    __type(key, __u64);   /* pid_tgid */
    __type(value, __u64); /* SSL* given to SSL_get_error */
} libssl_get_error_call SEC(".maps");

static __always_inline __u64 current_netns_cookie(void) {
    struct task_struct* task = bpf_get_current_task_btf();
    return net_cookie_of(BPF_CORE_READ(task, nsproxy, net_ns));
}

static __always_inline void finish(const struct inflight_key* key, struct inflight* flight,
                                   __u8 outcome, __s32 error) {
    __u64 now = bpf_ktime_get_ns();
    __u64 latency_ns = now - flight->started_ns;
    tls_count(flight->workload_id, MESHLANE_TLS_SOURCE_LIBSSL, flight->netns_cookie, outcome,
              latency_ns);
    struct tls_handshake_event* event = bpf_ringbuf_reserve(&tls_events, sizeof(*event), 0);
    if (event) {
        __builtin_memset(event, 0, sizeof(*event));
        event->timestamp_ns = now;
        event->latency_ns = latency_ns;
        event->netns_cookie = flight->netns_cookie;
        event->workload_id = flight->workload_id;
        event->pid = key->tgid;
        bpf_get_current_comm(event->comm, sizeof(event->comm));
        event->side = MESHLANE_SIDE_APP;
        event->source = MESHLANE_TLS_SOURCE_LIBSSL;
        event->outcome = outcome;
        event->error = error;
        event->libssl_calls = flight->calls;
        bpf_ringbuf_submit(event, 0);
    } else {
        count_loss(MESHLANE_LOSS_RINGBUF_FULL);
    }
    bpf_map_delete_elem(&libssl_inflight, key);
}

static __always_inline int handshake_entry(__u64 ssl) {
    __u64 cookie = current_netns_cookie();
    struct workload_config* config = workload_of_netns(cookie);
    if (!config || !ssl) return 0;
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct thread_call* call = bpf_map_lookup_elem(&libssl_thread_call, &pid_tgid);
    if (call) {
        if (call->ssl == ssl) {
            call->depth++; /* SSL_connect -> SSL_do_handshake */
            return 0;
        }
        /* a stale record (a thread that longjmp'd out?): replace it */
    }
    struct thread_call fresh = {.ssl = ssl, .depth = 1};
    bpf_map_update_elem(&libssl_thread_call, &pid_tgid, &fresh, BPF_ANY);

    struct inflight_key key = {.ssl = ssl, .tgid = pid_tgid >> 32};
    struct inflight* flight = bpf_map_lookup_elem(&libssl_inflight, &key);
    if (flight && flight->netns_cookie == cookie) {
        flight->calls++; /* a retry after WANT_READ/WANT_WRITE: the same handshake */
        return 0;
    }
    struct inflight start = {.started_ns = bpf_ktime_get_ns(),
                             .netns_cookie = cookie,
                             .workload_id = config->workload_id,
                             .calls = 1};
    if (bpf_map_update_elem(&libssl_inflight, &key, &start, BPF_ANY))
        count_loss(MESHLANE_LOSS_NO_CONNECT_STATE);
    return 0;
}

static __always_inline int handshake_return(int ret) {
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct thread_call* call = bpf_map_lookup_elem(&libssl_thread_call, &pid_tgid);
    if (!call) return 0;
    if (call->depth > 1) {
        call->depth--;
        return 0;
    }
    struct inflight_key key = {.ssl = call->ssl, .tgid = pid_tgid >> 32};
    bpf_map_delete_elem(&libssl_thread_call, &pid_tgid);
    struct inflight* flight = bpf_map_lookup_elem(&libssl_inflight, &key);
    if (!flight) return 0;
    if (ret == 1)
        finish(&key, flight, MESHLANE_TLS_OK, 0);
    else if (ret == 0)
        finish(&key, flight, MESHLANE_TLS_ERROR, 0); /* shut down by the protocol */
    else
        flight->last_return = ret; /* SSL_get_error() decides, or the next call */
    return 0;
}

SEC("uprobe")
int BPF_KPROBE(libssl_handshake_entry, void* ssl) { return handshake_entry((__u64)ssl); }

SEC("uretprobe")
int BPF_KRETPROBE(libssl_handshake_return, int ret) { return handshake_return(ret); }

SEC("uprobe")
int BPF_KPROBE(libssl_get_error_entry, void* ssl, int ret) {
    if (!ssl || ret > 0) return 0;
    struct inflight_key key = {.ssl = (__u64)ssl, .tgid = bpf_get_current_pid_tgid() >> 32};
    if (!bpf_map_lookup_elem(&libssl_inflight, &key)) return 0;
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u64 value = (__u64)ssl;
    bpf_map_update_elem(&libssl_get_error_call, &pid_tgid, &value, BPF_ANY);
    return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(libssl_get_error_return, int reason) {
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    __u64* ssl = bpf_map_lookup_elem(&libssl_get_error_call, &pid_tgid);
    if (!ssl) return 0;
    struct inflight_key key = {.ssl = *ssl, .tgid = pid_tgid >> 32};
    bpf_map_delete_elem(&libssl_get_error_call, &pid_tgid);
    struct inflight* flight = bpf_map_lookup_elem(&libssl_inflight, &key);
    if (!flight || flight->last_return >= 0) return 0;
    switch (reason) {
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE:
        case SSL_ERROR_WANT_X509_LOOKUP:
        case SSL_ERROR_WANT_CONNECT:
        case SSL_ERROR_WANT_ACCEPT:
        case SSL_ERROR_WANT_ASYNC:
        case SSL_ERROR_WANT_ASYNC_JOB:
        case SSL_ERROR_WANT_CLIENT_HELLO_CB:
        case SSL_ERROR_WANT_RETRY_VERIFY:
            return 0; /* a retry will follow: still the same handshake */
        default:
            finish(&key, flight, MESHLANE_TLS_ERROR, flight->last_return);
            return 0;
    }
}

/* An SSL* freed mid-handshake: the application gave up on it. */
SEC("uprobe")
int BPF_KPROBE(libssl_free_entry, void* ssl) {
    if (!ssl) return 0;
    struct inflight_key key = {.ssl = (__u64)ssl, .tgid = bpf_get_current_pid_tgid() >> 32};
    struct inflight* flight = bpf_map_lookup_elem(&libssl_inflight, &key);
    if (flight) finish(&key, flight, MESHLANE_TLS_ERROR, flight->last_return);
    return 0;
}
