/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * A bounded, incremental TLS record parser for the client->server byte stream of one
 * connection. Pure C, shared by BPF (bpf/observe_tls_wire.bpf.c; callable from an sk_msg
 * program too) and C++ (tests/unit/tls_wire_test.cpp), like redirect_rules.h.
 *
 * What it measures (library-agnostic: only record headers and the ClientHello are read):
 *   start  = the chunk holding the first byte of the ClientHello record (content type 22,
 *            handshake type 1);
 *   end    = the chunk completing the header of the first application_data record (type 23)
 *            the client sends: TLS 1.3 the client's Finished flight, TLS 1.2 its first data.
 *            The server's direction cannot be used: TLS 1.3 encrypts its handshake as type 23.
 *   failure: an alert record (type 21) from the client before the end; in TLS 1.3 the client's
 *            alerts after ServerHello are encrypted, so a first type-23 record shorter than the
 *            smallest possible client Finished (4 + 32 + 1 + 16 bytes) before any plaintext
 *            handshake record is taken as an encrypted alert. FIN/RST before the end are
 *            reported by the caller through tls_wire_close().
 *   version: from the client's flight alone, so it also works where only this direction is
 *            seen (sk_msg): TLS <= 1.2 sends its handshake after ClientHello as type-22
 *            records (ClientKeyExchange, Finished), TLS 1.3 never does (only a second
 *            ClientHello after HelloRetryRequest). So: a type-22 record other than a
 *            ClientHello between ClientHello and the end -> the ClientHello's client_version
 *            (0x0303 = TLS 1.2, lower for older clients), none -> 0x0304 (TLS 1.3).
 *            Limitation: a TLS 1.2 abbreviated handshake whose encrypted Finished happens to
 *            start with byte 0x01 is taken as TLS 1.3 (1/256 of resumptions).
 *   SNI:     read only when the ClientHello record header and its server_name extension are
 *            in the same chunk window (TLS_WIRE_WINDOW bytes); in practice a ClientHello is one
 *            segment. Otherwise sni_len stays 0. At most TLS_WIRE_SNI_LEN bytes are kept.
 *   Not handled: 0-RTT early data (its records would end the measurement early).
 *
 * Use: zero a struct tls_wire_state when a connection starts; for each chunk of the stream
 * (in order, each byte once), repeatedly:
 *     skip = tls_wire_skippable(state)       -> that many bytes need not be read: advance
 *                                              over min(skip, remaining) with tls_wire_skip()
 *     else copy up to TLS_WIRE_WINDOW bytes into a window and call tls_wire_feed()
 * until the chunk is consumed or tls_wire_finished(). Every loop is bounded (BPF verifier);
 * window indexes are masked with TLS_WIRE_WINDOW - 1, so a BPF window buffer must be
 * TLS_WIRE_WINDOW bytes.
 *
 * sk_msg hook (fast path, observe_tls_msg): on the client's socket, the same loop over the
 * message's msg->size bytes, each window made linear with bpf_msg_pull_data() and copied into a
 * per-CPU TLS_WIRE_WINDOW buffer, with the socket's tls_wire_state from sk_storage; sk_msg sees
 * each byte once and in order, so no sequence tracking is needed.
 */
#ifndef MESHLANE_TLS_WIRE_H
#define MESHLANE_TLS_WIRE_H

#ifndef __BPF__
#include <linux/types.h>
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#endif

#define TLS_WIRE_WINDOW 512 /* power of two */
#define TLS_WIRE_SNI_LEN 64
#define TLS_WIRE_MAX_STEPS 32      /* steps per tls_wire_feed(); a record takes 1 to 4 */
#define TLS_WIRE_MAX_EXTENSIONS 32 /* ClientHello extensions walked looking for server_name */
#define TLS_WIRE_MAX_RECORD_LEN (16384 + 2048)

#define TLS_CONTENT_CHANGE_CIPHER_SPEC 20
#define TLS_CONTENT_ALERT 21
#define TLS_CONTENT_HANDSHAKE 22
#define TLS_CONTENT_APPLICATION_DATA 23
#define TLS_HANDSHAKE_CLIENT_HELLO 1
/* Smallest client Finished in a TLS 1.3 type-23 record: header 4 + SHA-256 32 + type 1 + tag 16 */
#define TLS_WIRE_MIN_TLS13_FINISHED 53

enum tls_wire_phase {
    TLS_WIRE_START = 0,     /* nothing seen yet */
    TLS_WIRE_HANDSHAKE = 1, /* ClientHello seen, waiting for the end */
    TLS_WIRE_DONE = 2,      /* first application_data record seen */
    TLS_WIRE_FAILED = 3,    /* alert, or closed/reset before the end */
    TLS_WIRE_NOT_TLS = 4,   /* the stream does not start with a ClientHello, or lost sync */
};

enum tls_wire_result {
    TLS_WIRE_RESULT_NONE = 0,
    TLS_WIRE_RESULT_OK = 1,
    TLS_WIRE_RESULT_ALERT = 2,
    TLS_WIRE_RESULT_RESET = 3,
    TLS_WIRE_RESULT_CLOSED = 4,
};

struct tls_wire_state {
    __u64 hello_ns;  /* time of the chunk with the ClientHello's first byte */
    __u64 end_ns;    /* time of the outcome */
    __u32 body_left; /* bytes of the current record's body still to pass */
    __u16 record_len;
    __u16 client_version; /* ClientHello.legacy_version, 0 when not read */
    __u16 version;        /* result, see above; set at the outcome */
    __u8 phase;           /* enum tls_wire_phase */
    __u8 result;          /* enum tls_wire_result */
    __u8 header[5];       /* a record header split across chunks */
    __u8 header_have;
    __u8 record_type;      /* content type of the record whose body is passing */
    __u8 need_first_byte;  /* the body's first byte (handshake type / alert level) is next */
    __u8 need_second_byte; /* alert: the description is next */
    __u8 plain_handshake;  /* a type-22 record other than ClientHello after the ClientHello */
    __u8 alert_level;
    __u8 alert_description;
    __u8 sni_len;
    __u8 sni_truncated;
    __u8 reserved[5];
    __u8 sni[TLS_WIRE_SNI_LEN];
};

#define TLS_WIRE_AT(window, index) ((window)[(index) & (TLS_WIRE_WINDOW - 1)])

static __always_inline int tls_wire_finished(const struct tls_wire_state* s) {
    return s->phase >= TLS_WIRE_DONE;
}

/* Bytes of the stream that can pass without being read (inside a record body). */
static __always_inline __u32 tls_wire_skippable(const struct tls_wire_state* s) {
    if (tls_wire_finished(s)) return 0xffffffffu;
    if (s->need_first_byte || s->need_second_byte) return 0;
    return s->body_left;
}

static __always_inline void tls_wire_skip(struct tls_wire_state* s, __u32 bytes) {
    if (tls_wire_finished(s)) return;
    s->body_left = bytes >= s->body_left ? 0 : s->body_left - bytes;
}

static __always_inline void tls_wire_finish(struct tls_wire_state* s, __u8 result, __u64 now) {
    s->phase = result == TLS_WIRE_RESULT_OK ? TLS_WIRE_DONE : TLS_WIRE_FAILED;
    s->result = result;
    s->end_ns = now;
    if (s->plain_handshake)
        s->version = s->client_version && s->client_version < 0x0303 ? s->client_version : 0x0303;
    else
        s->version = 0x0304;
}

/* The connection was closed (FIN) or reset by either side: a failure when mid-handshake.
 * Returns 1 when that ended a handshake. */
static __always_inline int tls_wire_close(struct tls_wire_state* s, int reset, __u64 now) {
    if (s->phase != TLS_WIRE_HANDSHAKE) {
        if (s->phase == TLS_WIRE_START) s->phase = TLS_WIRE_NOT_TLS;
        return 0;
    }
    tls_wire_finish(s, reset ? TLS_WIRE_RESULT_RESET : TLS_WIRE_RESULT_CLOSED, now);
    return 1;
}

/* Reads the ClientHello whose handshake body (after the 4-byte handshake header) would start
 * at `pos` in the window: client_version and server_name. Everything bounded by `len`. */
static __always_inline void tls_wire_client_hello(struct tls_wire_state* s, const __u8* window,
                                                  __u32 pos, __u32 len) {
    /* pos is the handshake header; legacy_version follows it. */
    if (pos + 6 > len) return;
    s->client_version = (__u16)((TLS_WIRE_AT(window, pos + 4) << 8) | TLS_WIRE_AT(window, pos + 5));
    __u32 p = pos + 4 + 2 + 32; /* legacy_version, random */
    if (p + 1 > len) return;
    p += 1 + TLS_WIRE_AT(window, p); /* legacy_session_id */
    if (p + 2 > len) return;
    p += 2 + ((TLS_WIRE_AT(window, p) << 8) | TLS_WIRE_AT(window, p + 1)); /* cipher_suites */
    if (p + 1 > len) return;
    p += 1 + TLS_WIRE_AT(window, p); /* legacy_compression_methods */
    if (p + 2 > len) return;
    __u32 extensions_end = p + 2 + ((TLS_WIRE_AT(window, p) << 8) | TLS_WIRE_AT(window, p + 1));
    p += 2;
    for (int i = 0; i < TLS_WIRE_MAX_EXTENSIONS; i++) {
        if (p + 4 > len || p + 4 > extensions_end) return;
        __u32 type = (TLS_WIRE_AT(window, p) << 8) | TLS_WIRE_AT(window, p + 1);
        __u32 ext_len = (TLS_WIRE_AT(window, p + 2) << 8) | TLS_WIRE_AT(window, p + 3);
        p += 4;
        if (type != 0) {
            p += ext_len;
            if (p > TLS_WIRE_WINDOW) return;
            continue;
        }
        /* server_name: list length (2), name_type (1) = host_name, name length (2), name */
        if (p + 5 > len || TLS_WIRE_AT(window, p + 2) != 0) return;
        __u32 name_len = (TLS_WIRE_AT(window, p + 3) << 8) | TLS_WIRE_AT(window, p + 4);
        p += 5;
        if (p + name_len > len) return; /* not all in this window: no SNI rather than half */
        __u32 keep = name_len > TLS_WIRE_SNI_LEN ? TLS_WIRE_SNI_LEN : name_len;
        for (__u32 j = 0; j < TLS_WIRE_SNI_LEN; j++) {
            if (j >= keep) break;
            s->sni[j] = TLS_WIRE_AT(window, p + j);
        }
        s->sni_len = (__u8)keep;
        s->sni_truncated = name_len > TLS_WIRE_SNI_LEN;
        return;
    }
}

/* BPF callers may route the ClientHello walk through a separately verified (global) function
 * to keep the verifier's work linear. */
#ifndef TLS_WIRE_CLIENT_HELLO
#define TLS_WIRE_CLIENT_HELLO(s, window, pos, len) tls_wire_client_hello(s, window, pos, len)
#endif

/* A complete record header is in s->header (or at window[pos]); start its body. Returns 1 if
 * the stream ended (outcome set or not TLS). */
static __always_inline int tls_wire_record(struct tls_wire_state* s, __u8 type, __u8 major,
                                           __u32 length, __u64 now) {
    if (major != 3 || length == 0 || length > TLS_WIRE_MAX_RECORD_LEN ||
        type < TLS_CONTENT_CHANGE_CIPHER_SPEC || type > TLS_CONTENT_APPLICATION_DATA) {
        s->phase = TLS_WIRE_NOT_TLS; /* not TLS, or we lost the record boundaries */
        return 1;
    }
    if (s->phase == TLS_WIRE_START && type != TLS_CONTENT_HANDSHAKE) {
        s->phase = TLS_WIRE_NOT_TLS;
        return 1;
    }
    if (type == TLS_CONTENT_APPLICATION_DATA && s->phase == TLS_WIRE_HANDSHAKE) {
        if (!s->plain_handshake && length < TLS_WIRE_MIN_TLS13_FINISHED)
            tls_wire_finish(s, TLS_WIRE_RESULT_ALERT, now); /* TLS 1.3 encrypted alert */
        else
            tls_wire_finish(s, TLS_WIRE_RESULT_OK, now);
        return 1;
    }
    s->record_type = type;
    s->record_len = (__u16)length;
    s->body_left = length;
    s->need_first_byte = type == TLS_CONTENT_HANDSHAKE || type == TLS_CONTENT_ALERT;
    s->need_second_byte = 0;
    return 0;
}

/* The first body byte of a handshake or alert record. Returns 1 if the stream ended. */
static __always_inline int tls_wire_first_byte(struct tls_wire_state* s, __u8 byte) {
    s->need_first_byte = 0;
    if (s->record_type == TLS_CONTENT_ALERT) {
        s->alert_level = byte;
        s->need_second_byte = 1;
        return 0;
    }
    if (byte == TLS_HANDSHAKE_CLIENT_HELLO) {
        if (s->phase == TLS_WIRE_START) s->phase = TLS_WIRE_HANDSHAKE;
        /* a second ClientHello (after HelloRetryRequest) keeps the first one's time */
        return 0;
    }
    if (s->phase == TLS_WIRE_START) {
        s->phase = TLS_WIRE_NOT_TLS; /* a client stream starts with a ClientHello */
        return 1;
    }
    s->plain_handshake = 1;
    return 0;
}

/* One step at window[pos] (pos < len <= TLS_WIRE_WINDOW): a record header (or what is here of
 * it), the first or second body byte of a handshake/alert record, or a run of body bytes.
 * Returns the new position; it does not advance only when the stream ended. */
static __always_inline __u32 tls_wire_step(struct tls_wire_state* s, const __u8* window, __u32 pos,
                                           __u32 len, __u64 now) {
    if (pos >= len || len > TLS_WIRE_WINDOW) return len;
    if (s->need_first_byte) {
        __u8 byte = TLS_WIRE_AT(window, pos);
        /* the ClientHello's handshake header is at pos */
        int hello = s->phase == TLS_WIRE_START && s->record_type == TLS_CONTENT_HANDSHAKE &&
                    byte == TLS_HANDSHAKE_CLIENT_HELLO;
        if (tls_wire_first_byte(s, byte)) return pos;
        if (hello) TLS_WIRE_CLIENT_HELLO(s, window, pos, len);
        s->body_left--;
        return pos + 1;
    }
    if (s->need_second_byte) {
        s->alert_description = TLS_WIRE_AT(window, pos);
        s->need_second_byte = 0;
        s->body_left--;
        if (s->phase == TLS_WIRE_HANDSHAKE) tls_wire_finish(s, TLS_WIRE_RESULT_ALERT, now);
        return pos + 1;
    }
    if (s->body_left) {
        __u32 pass = len - pos < s->body_left ? len - pos : s->body_left;
        s->body_left -= pass;
        return pos + pass;
    }
    /* A record header: whole in the window, or assembled across chunks. The stream's first
     * byte starts the clock (the ClientHello record). */
    if (s->phase == TLS_WIRE_START && !s->hello_ns) s->hello_ns = now;
    if (s->header_have == 0 && pos + 5 <= len) {
        __u8 type = TLS_WIRE_AT(window, pos);
        __u8 major = TLS_WIRE_AT(window, pos + 1);
        __u32 length = (TLS_WIRE_AT(window, pos + 3) << 8) | TLS_WIRE_AT(window, pos + 4);
        tls_wire_record(s, type, major, length, now);
        return pos + 5;
    }
    for (int i = 0; i < 5; i++) {
        __u8 have = s->header_have;
        if (have >= 5 || pos >= len) break;
        s->header[have] = TLS_WIRE_AT(window, pos);
        s->header_have = have + 1;
        pos++;
    }
    if (s->header_have < 5) return pos;
    s->header_have = 0;
    tls_wire_record(s, s->header[0], s->header[1], (s->header[3] << 8) | s->header[4], now);
    return pos;
}

/* BPF callers may route each step through a separately verified (global) function. */
#ifndef TLS_WIRE_STEP
#define TLS_WIRE_STEP(s, window, pos, len, now) tls_wire_step(s, window, pos, len, now)
#endif

/* Feeds window[0, len) (len <= TLS_WIRE_WINDOW), the next bytes of the stream, all taken at
 * `now`. Returns the bytes consumed: len, or fewer when the stream ended (tls_wire_finished)
 * or TLS_WIRE_MAX_STEPS steps were taken (call again with the rest). */
static __always_inline __u32 tls_wire_feed(struct tls_wire_state* s, const __u8* window, __u32 len,
                                           __u64 now) {
    __u32 pos = 0;
    if (len > TLS_WIRE_WINDOW) len = TLS_WIRE_WINDOW;
    for (int step = 0; step < TLS_WIRE_MAX_STEPS; step++) {
        if (tls_wire_finished(s) || pos >= len) break;
        __u32 next = TLS_WIRE_STEP(s, window, pos, len, now);
        if (next <= pos || next > len) break;
        pos = next;
    }
    return pos;
}

/* Feeds a whole in-memory chunk (C/C++ callers and tests): the same loop a BPF caller runs. */
static __always_inline void tls_wire_feed_chunk(struct tls_wire_state* s, const __u8* chunk,
                                                __u32 len, __u64 now) {
    __u32 off = 0;
    for (int i = 0; i < 64 && off < len && !tls_wire_finished(s); i++) {
        __u32 skip = tls_wire_skippable(s);
        if (skip) {
            __u32 pass = len - off < skip ? len - off : skip;
            tls_wire_skip(s, pass);
            off += pass;
            continue;
        }
        __u32 n = len - off < TLS_WIRE_WINDOW ? len - off : TLS_WIRE_WINDOW;
        off += tls_wire_feed(s, chunk + off, n, now);
    }
}

#endif /* MESHLANE_TLS_WIRE_H */
