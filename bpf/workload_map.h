/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * workload_by_netns: the one map every BPF object uses to know whether a socket belongs to an
 * enrolled pod. Defined once here so that every object declares it identically (libbpf only
 * re-uses a pinned map whose type, sizes, flags and pinning match). The agent sets max_entries
 * to its max_workloads before load. Include after vmlinux.h and bpf_helpers.h.
 */
#ifndef MESHLANE_BPF_WORKLOAD_MAP_H
#define MESHLANE_BPF_WORKLOAD_MAP_H

#include "meshlane/redirect_abi.h"

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MESHLANE_MAX_WORKLOADS_DEFAULT);
    __type(key, __u64); /* network namespace cookie */
    __type(value, struct workload_config);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} workload_by_netns SEC(".maps");

#endif /* MESHLANE_BPF_WORKLOAD_MAP_H */
