// include/meshlane/tls_wire.h on synthetic client->server streams, split at every offset and
// fed byte by byte: the outcome, timing, version and SNI must not depend on segmentation.
#include "meshlane/tls_wire.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace {

using Bytes = std::vector<std::uint8_t>;

void put16(Bytes& b, unsigned v) {
    b.push_back(static_cast<std::uint8_t>(v >> 8));
    b.push_back(static_cast<std::uint8_t>(v));
}

Bytes record(std::uint8_t type, const Bytes& body, unsigned version = 0x0303) {
    Bytes r{type};
    put16(r, version);
    put16(r, static_cast<unsigned>(body.size()));
    r.insert(r.end(), body.begin(), body.end());
    return r;
}

Bytes handshake(std::uint8_t type, const Bytes& body) {
    Bytes h{type, 0};
    put16(h, static_cast<unsigned>(body.size()));
    h.insert(h.end(), body.begin(), body.end());
    return h;
}

Bytes extension(unsigned type, const Bytes& data) {
    Bytes e;
    put16(e, type);
    put16(e, static_cast<unsigned>(data.size()));
    e.insert(e.end(), data.begin(), data.end());
    return e;
}

// A ClientHello like OpenSSL's: session id, 31 cipher suites, a few extensions around SNI.
Bytes client_hello(const std::string& sni, unsigned client_version = 0x0303,
                   std::size_t padding_before_sni = 0) {
    Bytes body;
    put16(body, client_version);
    for (int i = 0; i < 32; ++i) body.push_back(static_cast<std::uint8_t>(i * 7));
    body.push_back(32);
    for (int i = 0; i < 32; ++i) body.push_back(static_cast<std::uint8_t>(0xa0 + i));
    put16(body, 62);
    for (int i = 0; i < 31; ++i) put16(body, 0x1301 + i);
    body.push_back(1);
    body.push_back(0);
    Bytes extensions;
    auto add = [&](const Bytes& e) { extensions.insert(extensions.end(), e.begin(), e.end()); };
    add(extension(0xff01, {0}));  // renegotiation_info
    if (padding_before_sni) add(extension(0x0015, Bytes(padding_before_sni, 0)));
    if (!sni.empty()) {
        Bytes data;
        put16(data, static_cast<unsigned>(sni.size() + 3));
        data.push_back(0);
        put16(data, static_cast<unsigned>(sni.size()));
        data.insert(data.end(), sni.begin(), sni.end());
        add(extension(0x0000, data));
    }
    add(extension(0x000a, {0, 4, 0, 0x1d, 0, 0x17}));     // supported_groups
    add(extension(0x002b, {4, 0x03, 0x04, 0x03, 0x03}));  // supported_versions
    add(extension(0x0033, Bytes(38, 0x42)));              // key_share
    put16(body, static_cast<unsigned>(extensions.size()));
    body.insert(body.end(), extensions.begin(), extensions.end());
    return record(22, handshake(1, body), 0x0301);
}

Bytes concat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

Bytes tls13_stream(const std::string& sni) {
    return concat({client_hello(sni), record(20, {1}), record(23, Bytes(74, 0x55)),
                   record(23, Bytes(300, 0x66))});
}

Bytes tls12_stream(const std::string& sni) {
    return concat({client_hello(sni), record(22, handshake(16, Bytes(33, 0x11))), record(20, {1}),
                   record(22, Bytes(40, 0x01)), record(23, Bytes(200, 0x77))});
}

// Offset of the first byte of the first type-23 record header.
std::size_t first_app_data(const Bytes& stream) {
    std::size_t pos = 0;
    while (pos + 5 <= stream.size()) {
        if (stream[pos] == 23) return pos;
        pos += 5 + (stream[pos + 3] << 8 | stream[pos + 4]);
    }
    return stream.size();
}

std::string sni_of(const tls_wire_state& s) {
    return std::string(reinterpret_cast<const char*>(s.sni), s.sni_len);
}

constexpr std::uint64_t kT1 = 1000, kT2 = 2000, kT3 = 3000;

tls_wire_state feed_split(const Bytes& stream, std::size_t at) {
    tls_wire_state s{};
    tls_wire_feed_chunk(&s, stream.data(), static_cast<__u32>(at), kT1);
    tls_wire_feed_chunk(&s, stream.data() + at, static_cast<__u32>(stream.size() - at), kT2);
    return s;
}

void expect_split_invariants(const Bytes& stream, std::uint16_t version, const std::string& sni) {
    const std::size_t end_header = first_app_data(stream) + 5;  // the header's last byte + 1
    const std::size_t hello_len = 5 + (stream[3] << 8 | stream[4]);
    for (std::size_t at = 0; at <= stream.size(); ++at) {
        SCOPED_TRACE("split at " + std::to_string(at));
        auto s = feed_split(stream, at);
        EXPECT_EQ(s.phase, TLS_WIRE_DONE);
        EXPECT_EQ(s.result, TLS_WIRE_RESULT_OK);
        EXPECT_EQ(s.hello_ns, at == 0 ? kT2 : kT1);
        EXPECT_EQ(s.end_ns, at >= end_header ? kT1 : kT2);
        EXPECT_EQ(s.version, version);
        // SNI is promised when the whole ClientHello body is in one window.
        if (at == 0 || at >= hello_len) {
            EXPECT_EQ(sni_of(s), sni);
        }
        if (!sni_of(s).empty()) {
            EXPECT_EQ(sni_of(s), sni);
        }
    }
}

TEST(TlsWire, Tls13SplitAtEveryOffset) {
    expect_split_invariants(tls13_stream("api.example.test"), 0x0304, "api.example.test");
}

TEST(TlsWire, Tls12SplitAtEveryOffset) {
    expect_split_invariants(tls12_stream("db.internal"), 0x0303, "db.internal");
}

TEST(TlsWire, ByteByByteAndThreeWaySplits) {
    const Bytes stream = tls13_stream("x.test");
    tls_wire_state s{};
    for (std::size_t i = 0; i < stream.size(); ++i) tls_wire_feed_chunk(&s, &stream[i], 1, kT1 + i);
    EXPECT_EQ(s.result, TLS_WIRE_RESULT_OK);
    EXPECT_EQ(s.hello_ns, kT1);
    EXPECT_EQ(s.end_ns, kT1 + first_app_data(stream) + 4);
    EXPECT_EQ(s.version, 0x0304);

    for (std::size_t a = 0; a <= stream.size(); a += 3) {
        for (std::size_t b = a; b <= stream.size(); b += 7) {
            tls_wire_state t{};
            tls_wire_feed_chunk(&t, stream.data(), static_cast<__u32>(a), kT1);
            tls_wire_feed_chunk(&t, stream.data() + a, static_cast<__u32>(b - a), kT2);
            tls_wire_feed_chunk(&t, stream.data() + b, static_cast<__u32>(stream.size() - b), kT3);
            ASSERT_EQ(t.result, TLS_WIRE_RESULT_OK) << a << "," << b;
            ASSERT_EQ(t.version, 0x0304);
        }
    }
}

TEST(TlsWire, PlainAlertIsAFailureWithItsDescription) {
    const Bytes stream = concat({client_hello("bad.test"), record(21, {2, 42})});
    for (std::size_t at = 0; at <= stream.size(); ++at) {
        auto s = feed_split(stream, at);
        ASSERT_EQ(s.result, TLS_WIRE_RESULT_ALERT) << at;
        EXPECT_EQ(s.alert_level, 2);
        EXPECT_EQ(s.alert_description, 42);
        EXPECT_EQ(s.end_ns, at == stream.size() ? kT1 : kT2);
    }
}

TEST(TlsWire, Tls13EncryptedAlertIsAFailure) {
    // CCS then a 19-byte type-23 record: an alert under handshake keys, not a Finished.
    const Bytes stream =
        concat({client_hello("bad.test"), record(20, {1}), record(23, Bytes(19, 9))});
    for (std::size_t at = 0; at <= stream.size(); ++at) {
        auto s = feed_split(stream, at);
        ASSERT_EQ(s.result, TLS_WIRE_RESULT_ALERT) << at;
        EXPECT_EQ(s.alert_level, 0);
    }
}

TEST(TlsWire, CloseOrResetMidHandshake) {
    const Bytes hello = client_hello("a.test");
    tls_wire_state s{};
    tls_wire_feed_chunk(&s, hello.data(), static_cast<__u32>(hello.size()), kT1);
    EXPECT_EQ(s.phase, TLS_WIRE_HANDSHAKE);
    EXPECT_EQ(tls_wire_close(&s, 1, kT2), 1);
    EXPECT_EQ(s.result, TLS_WIRE_RESULT_RESET);
    EXPECT_EQ(s.end_ns, kT2);

    tls_wire_state t{};
    tls_wire_feed_chunk(&t, hello.data(), static_cast<__u32>(hello.size()), kT1);
    EXPECT_EQ(tls_wire_close(&t, 0, kT2), 1);
    EXPECT_EQ(t.result, TLS_WIRE_RESULT_CLOSED);

    // After the end, a close changes nothing.
    const Bytes stream = tls13_stream("a.test");
    tls_wire_state u{};
    tls_wire_feed_chunk(&u, stream.data(), static_cast<__u32>(stream.size()), kT1);
    EXPECT_EQ(tls_wire_close(&u, 1, kT2), 0);
    EXPECT_EQ(u.result, TLS_WIRE_RESULT_OK);
}

TEST(TlsWire, NotTlsStreamsAreIgnored) {
    const std::string http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    tls_wire_state s{};
    tls_wire_feed_chunk(&s, reinterpret_cast<const __u8*>(http.data()),
                        static_cast<__u32>(http.size()), kT1);
    EXPECT_EQ(s.phase, TLS_WIRE_NOT_TLS);
    EXPECT_EQ(tls_wire_close(&s, 1, kT2), 0);

    // A handshake record that is not a ClientHello.
    const Bytes server_hello = record(22, handshake(2, Bytes(40, 0)));
    tls_wire_state t{};
    tls_wire_feed_chunk(&t, server_hello.data(), static_cast<__u32>(server_hello.size()), kT1);
    EXPECT_EQ(t.phase, TLS_WIRE_NOT_TLS);

    // An absurd record length after the ClientHello: lost sync, no outcome invented.
    const Bytes garbage = concat({client_hello("a"), Bytes{22, 3, 3, 0xff, 0xff}});
    tls_wire_state u{};
    tls_wire_feed_chunk(&u, garbage.data(), static_cast<__u32>(garbage.size()), kT1);
    EXPECT_EQ(u.phase, TLS_WIRE_NOT_TLS);
    EXPECT_EQ(u.result, TLS_WIRE_RESULT_NONE);
}

TEST(TlsWire, SniBoundsAndPosition) {
    const std::string long_name(100, 'n');
    const Bytes stream = concat({client_hello(long_name), record(23, Bytes(60, 1))});
    tls_wire_state s{};
    tls_wire_feed_chunk(&s, stream.data(), static_cast<__u32>(stream.size()), kT1);
    EXPECT_EQ(s.sni_len, TLS_WIRE_SNI_LEN);
    EXPECT_EQ(s.sni_truncated, 1);
    EXPECT_EQ(sni_of(s), long_name.substr(0, TLS_WIRE_SNI_LEN));

    // server_name beyond the first window: no SNI, but the handshake is still measured.
    const Bytes far = concat({client_hello("far.test", 0x0303, 600), record(23, Bytes(60, 1))});
    tls_wire_state t{};
    tls_wire_feed_chunk(&t, far.data(), static_cast<__u32>(far.size()), kT1);
    EXPECT_EQ(t.sni_len, 0);
    EXPECT_EQ(t.result, TLS_WIRE_RESULT_OK);

    // No SNI at all.
    const Bytes none = concat({client_hello(""), record(23, Bytes(60, 1))});
    tls_wire_state u{};
    tls_wire_feed_chunk(&u, none.data(), static_cast<__u32>(none.size()), kT1);
    EXPECT_EQ(u.sni_len, 0);
    EXPECT_EQ(u.result, TLS_WIRE_RESULT_OK);
}

TEST(TlsWire, OldClientVersionAndHelloRetry) {
    // TLS 1.1 client: version from ClientHello.legacy_version.
    const Bytes old = concat({client_hello("o", 0x0302), record(22, handshake(16, Bytes(10, 0))),
                              record(20, {1}), record(22, Bytes(40, 2)), record(23, Bytes(50, 3))});
    tls_wire_state s{};
    tls_wire_feed_chunk(&s, old.data(), static_cast<__u32>(old.size()), kT1);
    EXPECT_EQ(s.version, 0x0302);

    // HelloRetryRequest: a second ClientHello keeps the first one's time and TLS 1.3.
    const Bytes hrr =
        concat({client_hello("h"), record(20, {1}), client_hello("h"), record(23, Bytes(74, 1))});
    tls_wire_state t{};
    const std::size_t first = client_hello("h").size();
    tls_wire_feed_chunk(&t, hrr.data(), static_cast<__u32>(first), kT1);
    tls_wire_feed_chunk(&t, hrr.data() + first, static_cast<__u32>(hrr.size() - first), kT2);
    EXPECT_EQ(t.result, TLS_WIRE_RESULT_OK);
    EXPECT_EQ(t.hello_ns, kT1);
    EXPECT_EQ(t.version, 0x0304);
}

}  // namespace
