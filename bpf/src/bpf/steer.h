/* Shared between the XDP program and the Rust crate (mirrored in src/maps.rs). */
#ifndef STEER_H
#define STEER_H

#define STEER_MAX_QUEUES 64
#define STEER_MAX_RULES 4096

/* A steering rule: protocol + destination port [+ destination IPv4]. Network byte order for
 * port and address; addr == 0 means "any local address". */
struct rule_key {
	__u8 proto;   /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
	__u16 port;   /* network order */
	__u32 addr;   /* network order, 0 = any */
};

/* Who put a rule in: the loader's static rules are replaced on re-attach; a service's stay. */
#define RULE_OWNER_STATIC 1
#define RULE_OWNER_SERVICE 2

struct rule_val {
	__u32 owner;
	__u32 pid; /* the service that added it, 0 for static rules */
};

/* One entry: the queue this attachment steers, and how it was attached. */
struct steer_config {
	__u32 queue;
	__u32 mode; /* 1 native, 2 generic (informational; the kernel knows the truth) */
	__u32 ifindex;
	__u32 pad;
};

/* Per RX queue, per CPU. seen = redirected + passed. */
struct queue_counters {
	__u64 seen;
	__u64 matched;
	__u64 redirected;
	__u64 passed;
	__u64 no_xsk;     /* matched a rule, but no XSK on this queue (or wrong queue) */
	__u64 malformed;  /* truncated or invalid L2/L3/L4 header */
	__u64 fragments;  /* IPv4 fragments: never steered */
	__u64 not_ipv4;
	__u64 vlan;       /* matched a rule but VLAN-tagged: the stack does not do VLAN, kernel gets it */
};

#endif
