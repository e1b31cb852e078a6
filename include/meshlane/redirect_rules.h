/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The capture decision, as pure functions over facts the caller has looked up. The BPF programs
 * fill the facts from maps and the socket; the unit tests fill them by hand and compare each rule
 * with istio-iptables. Keep the order of the checks identical to the iptables chains: first
 * match wins there, and here.
 */
#ifndef MESHLANE_REDIRECT_RULES_H
#define MESHLANE_REDIRECT_RULES_H

#ifndef __BPF__
#include <linux/types.h>
#endif

#include "meshlane/redirect_abi.h"

#ifndef MESHLANE_INLINE
#ifdef __BPF__
#define MESHLANE_INLINE static __always_inline
#else
#define MESHLANE_INLINE static inline
#endif
#endif

/* What is known about one outbound connect() from an enrolled workload. */
struct outbound_facts {
    __u8 dst_port_excluded;    /* --exclude-outbound-ports */
    __u8 bound_to_passthrough; /* socket already bound to 127.0.0.6 / ::6 */
    __u8 dst_is_local;         /* destination is an address of the pod: leaves via "lo" */
    __u8 dst_is_localhost;     /* 127.0.0.1 or ::1 exactly */
    __u8 uid_is_proxy;
    __u8 gid_is_proxy;
    __u8 dst_cidr_excluded;     /* --exclude-cidrs */
    __u8 dst_port_included;     /* --include-outbound-ports */
    __u8 dst_cidr_included;     /* --include-cidrs (or "*") */
    __u8 proxy_self_to_inbound; /* MESHLANE_WL_PROXY_SELF_TO_INBOUND */
};

enum outbound_verdict {
    OUTBOUND_REDIRECT = 0, /* -> ISTIO_REDIRECT: the outbound listener */
    OUTBOUND_TO_INBOUND,   /* -> ISTIO_IN_REDIRECT: the inbound listener */
    OUTBOUND_PASS,         /* RETURN */
};

/* ISTIO_OUTPUT, rule by rule. *counter receives the meshlane_redirect_counter that explains the
 * verdict, so every decision is visible per workload. */
MESHLANE_INLINE enum outbound_verdict outbound_decide(const struct outbound_facts* f,
                                                      __u32* counter) {
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
    /* -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
     * -o lo -m owner ! --uid-owner 1337 -j RETURN
     * -m owner --uid-owner 1337 -j RETURN            (then the same three for --gid-owner) */
    if (f->dst_is_local) {
        /* Only the uid rules can match on lo: "! --uid-owner 1337 -o lo" returns everything
         * else before the gid rules are reached. */
        if (f->uid_is_proxy && !f->dst_is_localhost && f->proxy_self_to_inbound) {
            *counter = MESHLANE_CNT_OUTBOUND_PROXY_SELF_TO_INBOUND;
            return OUTBOUND_TO_INBOUND;
        }
        *counter = MESHLANE_CNT_OUTBOUND_PASS_LOOPBACK;
        return OUTBOUND_PASS;
    }
    if (f->uid_is_proxy || f->gid_is_proxy) {
        *counter = MESHLANE_CNT_OUTBOUND_PASS_PROXY_OWNER;
        return OUTBOUND_PASS;
    }
    /* -d 127.0.0.1/32 -j RETURN: covered by dst_is_local above (127.0.0.0/8 is local). */
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
