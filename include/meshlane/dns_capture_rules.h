/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The DNS capture decision (Istio's DNS proxy, ISTIO_META_DNS_CAPTURE), as a pure function over
 * facts the caller has looked up, like outbound_decide in redirect_rules.h. It runs first for
 * every connect()/sendmsg() to port 53 of an enrolled workload, TCP and UDP.
 *
 * What it mirrors (istio/istio tools/istio-iptables/pkg/capture/run.go SetupDNSRedir, goldens
 * dns-uid-gid, ipv6-dns-uid-gid, ipv6-dns-outbound-owner-groups*; kept in
 * tests/unit/testdata/istio-dns-goldens.txt), in the order a port-53 packet meets the rules:
 *   ISTIO_OUTPUT  -p tcp --dport P -j RETURN               excluded outbound ports (TCP only)
 *                 -o lo -s 127.0.0.6/32 -j RETURN          any protocol
 *                 -o lo ! -d 127.0.0.1 -p tcp ! --dports 53,15008 --uid-owner U -j IN_REDIRECT
 *                 -o lo -p tcp ! --dport 53 ! --uid-owner U -j RETURN   (53 is left to DNS)
 *                 -m owner --uid-owner U -j RETURN         any protocol: the proxy itself
 *                 -o lo ! -d 127.0.0.1 -p tcp ! --dport 15008 --gid-owner G -j IN_REDIRECT
 *                 -o lo -p tcp ! --dport 53 ! --gid-owner G -j RETURN
 *                 -m owner --gid-owner G -j RETURN
 *                 -j ISTIO_OUTPUT_DNS
 *  ISTIO_OUTPUT_DNS -p tcp --dport 53 [-d NAMESERVER] -j REDIRECT --to-ports 15053
 *                 -p udp --dport 53 --uid-owner U / --gid-owner G -j RETURN
 *                 -p udp --dport 53 [-d NAMESERVER] -j REDIRECT --to-port 15053
 * Without "-d" when all DNS is captured (--capture-all-dns, istio-cni); with one rule per
 * nameserver of the pod's /etc/resolv.conf otherwise. A TCP packet no DNS rule took continues in
 * ISTIO_OUTPUT (outbound_decide); a UDP one is not captured at all.
 */
#ifndef MESHLANE_DNS_CAPTURE_RULES_H
#define MESHLANE_DNS_CAPTURE_RULES_H

#include "meshlane/pure_inline.h"
#include "meshlane/redirect_abi.h"

/* What is known about one connect()/sendmsg() to port 53 from an enrolled workload. */
struct dns_facts {
    __u8 capture;              /* MESHLANE_WL_DNS_CAPTURE_NAMESERVERS or _ALL is set */
    __u8 capture_all;          /* MESHLANE_WL_DNS_CAPTURE_ALL */
    __u8 is_tcp;               /* TCP (connect), else UDP (connect or sendmsg) */
    __u8 dst_port_excluded;    /* --exclude-outbound-ports lists 53 (a TCP-only rule) */
    __u8 bound_to_passthrough; /* socket bound to 127.0.0.6 / ::6 */
    __u8 dst_is_local;         /* destination is an address of the pod: leaves via "lo" */
    __u8 dst_is_localhost;     /* 127.0.0.1 or ::1 exactly */
    __u8 uid_is_proxy;
    __u8 gid_is_proxy;
    __u8 proxy_self_to_inbound; /* MESHLANE_WL_PROXY_SELF_TO_INBOUND: the IN_REDIRECT rules */
    __u8 dst_is_nameserver;     /* cidr_rules has it as MESHLANE_CIDR_DNS_SERVER */
};

enum dns_verdict {
    DNS_REDIRECT = 0, /* -> REDIRECT --to-ports 15053: the proxy's DNS listener */
    DNS_PASS,         /* RETURN before any DNS rule: not captured, final */
    DNS_TO_INBOUND,   /* TCP only: the gid rule "-o lo ! -d 127.0.0.1 -> ISTIO_IN_REDIRECT" */
    DNS_CONTINUE,     /* no DNS rule matched: TCP goes on to outbound_decide, UDP is not captured */
};

/* *counter receives the meshlane_redirect_counter that explains the verdict;
 * MESHLANE_REDIRECT_COUNTER_MAX when the verdict is left to outbound_decide (TCP DNS_CONTINUE),
 * which counts it itself. */
MESHLANE_INLINE enum dns_verdict dns_decide(const struct dns_facts* f, __u32* counter) {
    *counter = MESHLANE_REDIRECT_COUNTER_MAX;
    if (!f->capture) return DNS_CONTINUE; /* no ISTIO_OUTPUT_DNS: the plain TCP rules apply */
    /* -p tcp --dport 53 -j RETURN */
    if (f->is_tcp && f->dst_port_excluded) {
        *counter = MESHLANE_CNT_OUTBOUND_PASS_EXCLUDED_PORT;
        return DNS_PASS;
    }
    /* -o lo -s 127.0.0.6/32 -j RETURN (no -p: UDP too) */
    if (f->dst_is_local && f->bound_to_passthrough) {
        *counter = MESHLANE_CNT_OUTBOUND_PASS_INBOUND_PASSTHROUGH_SOURCE;
        return DNS_PASS;
    }
    /* The uid rules: IN_REDIRECT excludes 53, "--uid-owner U -j RETURN" matches any protocol. */
    if (f->uid_is_proxy) {
        *counter = MESHLANE_CNT_DNS_PASS_PROXY_OWNER;
        return DNS_PASS;
    }
    if (f->gid_is_proxy) {
        /* "-o lo ! -d 127.0.0.1 -p tcp ! --dport 15008 --gid-owner G -j ISTIO_IN_REDIRECT": the
         * gid rule does not exclude 53, and the lo RETURN before it no longer covers 53. */
        if (f->is_tcp && f->dst_is_local && !f->dst_is_localhost && f->proxy_self_to_inbound) {
            *counter = MESHLANE_CNT_OUTBOUND_PROXY_SELF_TO_INBOUND;
            return DNS_TO_INBOUND;
        }
        *counter = MESHLANE_CNT_DNS_PASS_PROXY_OWNER;
        return DNS_PASS;
    }
    /* ISTIO_OUTPUT_DNS: -p tcp|udp --dport 53 [-d NAMESERVER] -j REDIRECT --to-ports 15053 */
    if (f->capture_all || f->dst_is_nameserver) {
        *counter = f->is_tcp ? MESHLANE_CNT_DNS_REDIRECTED_TCP : MESHLANE_CNT_DNS_REDIRECTED_UDP;
        return DNS_REDIRECT;
    }
    if (!f->is_tcp) *counter = MESHLANE_CNT_DNS_PASS_NOT_NAMESERVER;
    return DNS_CONTINUE;
}

#endif /* MESHLANE_DNS_CAPTURE_RULES_H */
