/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * MESHLANE_INLINE: how the pure decision headers (redirect_rules.h, dns_capture_rules.h,
 * features/fastpath/fastpath_state.h) define their functions, so one source compiles into the BPF
 * programs (always inlined: no BPF-to-BPF calls on the hot path) and into the host unit tests.
 */
#ifndef MESHLANE_PURE_INLINE_H
#define MESHLANE_PURE_INLINE_H

#ifndef __BPF__
#include <linux/types.h>
#endif

#ifndef MESHLANE_INLINE
#ifdef __BPF__
#define MESHLANE_INLINE static __always_inline
#else
#define MESHLANE_INLINE static inline
#endif
#endif

#endif /* MESHLANE_PURE_INLINE_H */
