/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The capture decision, as pure functions over facts the caller has looked up. The BPF programs
 * fill the facts from maps and the socket; the unit tests fill them by hand and compare each rule
 * with istio-iptables. Keep the order of the checks identical to the iptables chains: first
 * match wins there, and here.
 */
#ifndef MESHLANE_REDIRECT_RULES_H
#define MESHLANE_REDIRECT_RULES_H

#include "meshlane/pure_inline.h"
#include "meshlane/redirect_abi.h"

/* Addresses below are 16 bytes, network order, IPv4 as v4-mapped (::ffff:a.b.c.d). Byte-wise, so
 * the host tests run them unchanged. */
MESHLANE_INLINE int rules_addr_is_v4_mapped(const __u8 a[16]) {
    for (int i = 0; i < 10; i++)
        if (a[i]) return 0;
    return a[10] == 0xff && a[11] == 0xff;
}

/* The kernel routes a connect() to 0.0.0.0 / :: (also ::ffff:0.0.0.0) to 127.0.0.1 / ::1 before
 * netfilter sees it: rewrite dst to what the iptables rules match against. */
MESHLANE_INLINE void outbound_dst_as_netfilter_sees(__u8 dst[16]) {
    int mapped = rules_addr_is_v4_mapped(dst);
    for (int i = mapped ? 12 : 0; i < 16; i++)
        if (dst[i]) return;
    if (mapped) {
        dst[12] = 127;
        dst[15] = 1;
    } else {
        dst[15] = 1;
    }
}

/* 127.0.0.6 or ::6: the inbound passthrough source Envoy binds. */
MESHLANE_INLINE int rules_addr_is_passthrough(const __u8 a[16]) {
    if (rules_addr_is_v4_mapped(a)) return a[12] == 127 && a[13] == 0 && a[14] == 0 && a[15] == 6;
    for (int i = 0; i < 15; i++)
        if (a[i]) return 0;
    return a[15] == 6;
}

/* Will the connection leave from 127.0.0.6 / ::6 (Istio: "-o lo -s 127.0.0.6/32 -j RETURN")?
 * src is the socket's bound address (all zero if unbound; ::ffff:0.0.0.0 for an unbound IPv4
 * socket). Bound to it, or an unbound IPv6 socket connecting to ::6: the kernel then picks the
 * destination itself as source (RFC 6724 rule 1). Unbound IPv4 leaves from the loopback route's
 * 127.0.0.1 whatever 127.x it connects to. */
MESHLANE_INLINE int outbound_source_is_passthrough(const __u8 src[16], const __u8 dst[16]) {
    if (rules_addr_is_passthrough(src)) return 1;
    for (int i = 0; i < 16; i++)
        if (src[i]) return 0;
    return !rules_addr_is_v4_mapped(dst) && rules_addr_is_passthrough(dst);
}

/* What is known about one outbound connect() from an enrolled workload. The destination is
 * the one netfilter would see: an unspecified one (0.0.0.0, ::) already turned into loopback, as
 * the kernel does before routing. */
struct outbound_facts {
    __u8 family_not_captured; /* --ip-families leaves this family alone: no rule at all */
    __u8 dst_port_excluded;   /* --exclude-outbound-ports */
    /* The connection's source is 127.0.0.6 / ::6: bound to it, or (IPv6, unbound, to ::6) picked
     * by the kernel, which prefers the destination address itself as source. */
    __u8 bound_to_passthrough;
    __u8 dst_is_local;       /* destination is an address of the pod: leaves via "lo" */
    __u8 dst_is_localhost;   /* 127.0.0.1 (or --host-loopback-cidr) or ::1 */
    __u8 dst_port_is_tunnel; /* 15008 (HBONE): "! --dport 15008" on the ISTIO_IN_REDIRECT rules */
    __u8 uid_is_proxy;       /* any of the proxy uids */
    __u8 uid_is_first_proxy; /* the first proxy uid: only its rules are reached on lo */
    __u8 gid_is_proxy;       /* any of the proxy gids */
    __u8 dst_cidr_excluded;  /* --exclude-cidrs */
    __u8 dst_port_included;  /* --include-outbound-ports */
    __u8 dst_cidr_included;  /* --include-cidrs (or "*") */
    __u8 proxy_self_to_inbound; /* MESHLANE_WL_PROXY_SELF_TO_INBOUND */
    __u8 include_has_loopback;  /* MESHLANE_WL_INCLUDE_HAS_LOOPBACK */
    /* DNS capture is on and the port is 53: istio-iptables then writes the app's lo RETURN as
     * "-o lo -p tcp ! --dport 53 -m owner ! --uid-owner u -j RETURN" (SetupDNSRedir), so an app's
     * TCP connection to a pod-local non-nameserver on 53 goes on to the CIDR / include rules. */
    __u8 lo_return_skips_port;
};

enum outbound_verdict {
    OUTBOUND_REDIRECT = 0, /* -> ISTIO_REDIRECT: the outbound listener */
    OUTBOUND_TO_INBOUND,   /* -> ISTIO_IN_REDIRECT: the inbound listener */
    OUTBOUND_PASS,         /* RETURN */
};

/* Does the caller need the CIDR / include facts (the tail of ISTIO_OUTPUT)? Lets the BPF program
 * skip those lookups for the connects the owner and lo rules already decide. */
MESHLANE_INLINE int outbound_needs_tail(const struct outbound_facts* f) {
    if (f->family_not_captured || f->dst_port_excluded) return 0;
    if (f->dst_is_local)
        return (f->include_has_loopback || f->lo_return_skips_port) && !f->bound_to_passthrough &&
               !f->uid_is_proxy && !f->gid_is_proxy;
    return !f->uid_is_proxy && !f->gid_is_proxy;
}

/* The owner rules on lo, for every proxy uid u then every proxy gid g (istio-iptables order):
 *   -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner u -j ISTIO_IN_REDIRECT
 *   -o lo -m owner ! --uid-owner u -j RETURN      (left out when include has a loopback range)
 *   -m owner --uid-owner u -j RETURN
 * Returns 1 when they decide the connect. */
MESHLANE_INLINE int outbound_decide_lo_owner(const struct outbound_facts* f,
                                             enum outbound_verdict* verdict, __u32* counter) {
    int to_inbound = f->proxy_self_to_inbound && !f->dst_is_localhost && !f->dst_port_is_tunnel;
    /* Without the "! --uid-owner u" RETURN the rules of every listed uid and gid are reached;
     * with it, everything but the first uid returns at the first uid's rules. */
    int owner =
        f->include_has_loopback ? (f->uid_is_proxy || f->gid_is_proxy) : f->uid_is_first_proxy;
    if (owner && to_inbound) {
        *counter = MESHLANE_CNT_OUTBOUND_PROXY_SELF_TO_INBOUND;
        *verdict = OUTBOUND_TO_INBOUND;
        return 1;
    }
    if (owner || !(f->include_has_loopback || f->lo_return_skips_port)) {
        *counter = MESHLANE_CNT_OUTBOUND_PASS_LOOPBACK;
        *verdict = OUTBOUND_PASS;
        return 1;
    }
    /* the app over lo, include with a loopback range or DNS's "! --dport 53": on to the CIDR
     * rules */
    return 0;
}

/* ISTIO_OUTPUT, rule by rule. *counter receives the meshlane_redirect_counter that explains the
 * verdict, so every decision is visible per workload. */
MESHLANE_INLINE enum outbound_verdict outbound_decide(const struct outbound_facts* f,
                                                      __u32* counter) {
    enum outbound_verdict verdict = OUTBOUND_PASS;
    /* No ip6tables (or iptables) rules for this family: nothing is captured. */
    if (f->family_not_captured) {
        *counter = MESHLANE_CNT_OUTBOUND_PASS_FAMILY_NOT_CAPTURED;
        return OUTBOUND_PASS;
    }
    /* -p tcp --dport P -j RETURN (excluded outbound ports come first) */
    if (f->dst_port_excluded) {
        *counter = MESHLANE_CNT_OUTBOUND_PASS_EXCLUDED_PORT;
        return OUTBOUND_PASS;
    }
    /* -o lo -s 127.0.0.6/32 -j RETURN */
    if (f->dst_is_local && f->bound_to_passthrough) {
        *counter = MESHLANE_CNT_OUTBOUND_PASS_INBOUND_PASSTHROUGH_SOURCE;
        return OUTBOUND_PASS;
    }
    if (f->dst_is_local && outbound_decide_lo_owner(f, &verdict, counter)) return verdict;
    /* -m owner --uid-owner u -j RETURN / --gid-owner g (off lo: every listed id) */
    if (f->uid_is_proxy || f->gid_is_proxy) {
        *counter = MESHLANE_CNT_OUTBOUND_PASS_PROXY_OWNER;
        return OUTBOUND_PASS;
    }
    /* -d 127.0.0.1/32 -j RETURN */
    if (f->dst_is_localhost) {
        *counter = MESHLANE_CNT_OUTBOUND_PASS_LOOPBACK;
        return OUTBOUND_PASS;
    }
    /* -d CIDR -j RETURN for every excluded CIDR */
    if (f->dst_cidr_excluded) {
        *counter = MESHLANE_CNT_OUTBOUND_PASS_EXCLUDED_CIDR;
        return OUTBOUND_PASS;
    }
    /* -p tcp --dport P -j ISTIO_REDIRECT for every included outbound port */
    if (f->dst_port_included) {
        *counter = MESHLANE_CNT_OUTBOUND_REDIRECTED;
        return OUTBOUND_REDIRECT;
    }
    /* -j ISTIO_REDIRECT (include "*") or -d CIDR -j ISTIO_REDIRECT per included CIDR */
    if (f->dst_cidr_included) {
        *counter = MESHLANE_CNT_OUTBOUND_REDIRECTED;
        return OUTBOUND_REDIRECT;
    }
    *counter = MESHLANE_CNT_OUTBOUND_PASS_NOT_INCLUDED;
    return OUTBOUND_PASS;
}

/* What is known about one inbound TCP SYN arriving in an enrolled netns (sk_lookup). */
struct inbound_facts {
    __u8 family_not_captured;     /* --ip-families leaves this family alone */
    __u8 dst_is_inbound_listener; /* the proxy's own inbound port */
    __u8 dst_port_excluded;       /* 15008, --exclude-inbound-ports (incl. 15020/15021/15090) */
    __u8 dst_port_included;       /* --include-ports lists it, or it is "*" */
    __u8 src_is_local;            /* originated inside the pod: ISTIO_OUTPUT already decided */
};

enum inbound_verdict {
    INBOUND_STEER = 0, /* -> ISTIO_IN_REDIRECT: select the proxy's inbound listener */
    INBOUND_PASS,      /* RETURN: normal socket lookup */
};

/* ISTIO_INBOUND (PREROUTING). Locally generated connections never traverse PREROUTING, so they
 * pass here: connect4/6 have already applied ISTIO_OUTPUT to them. */
MESHLANE_INLINE enum inbound_verdict inbound_decide(const struct inbound_facts* f, __u32* counter) {
    if (f->family_not_captured) {
        *counter = MESHLANE_CNT_INBOUND_PASS_FAMILY_NOT_CAPTURED;
        return INBOUND_PASS;
    }
    if (f->src_is_local) {
        *counter = MESHLANE_CNT_INBOUND_PASS_LOCAL_SOURCE;
        return INBOUND_PASS;
    }
    if (f->dst_is_inbound_listener) {
        /* Already addressed to the listener; steering it to itself would be a no-op. */
        *counter = MESHLANE_REDIRECT_COUNTER_MAX; /* nothing to count */
        return INBOUND_PASS;
    }
    if (f->dst_port_excluded || !f->dst_port_included) {
        *counter = MESHLANE_CNT_INBOUND_PASS_EXCLUDED_PORT;
        return INBOUND_PASS;
    }
    *counter = MESHLANE_CNT_INBOUND_STEERED;
    return INBOUND_STEER;
}

#endif /* MESHLANE_REDIRECT_RULES_H */
