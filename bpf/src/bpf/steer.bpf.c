// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Steers the packets of chosen flows on one RX queue into an AF_XDP socket; everything else,
 * and every matched packet whose queue has no socket, goes on to the kernel (fail-open). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "steer.h"

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, STEER_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_RULES);
	__type(key, struct rule_key);
	__type(value, struct rule_val);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_MAX_QUEUES);
	__type(key, __u32);
	__type(value, struct queue_counters);
} counters SEC(".maps");

enum verdict { V_PASS, V_MALFORMED, V_FRAGMENT, V_NOT_IPV4, V_MATCH };

/* Returns V_MATCH with *key filled in when the frame is a TCP/UDP IPv4 packet; never reads past
 * data_end. */
static __always_inline enum verdict parse(struct xdp_md *ctx, struct rule_key *key, int *tagged)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *cur;
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return V_MALFORMED;
	proto = eth->h_proto;
	cur = eth + 1;

	/* Up to two VLAN tags (802.1Q, 802.1ad / QinQ). */
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *vh = cur;
		if ((void *)(vh + 1) > data_end)
			return V_MALFORMED;
		proto = vh->encap_proto;
		cur = vh + 1;
		*tagged = 1;
	}
	if (proto != bpf_htons(ETH_P_IP))
		return V_NOT_IPV4;

	struct iphdr *ip = cur;
	if ((void *)(ip + 1) > data_end)
		return V_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return V_MALFORMED;
	__u32 ihl = ip->ihl * 4;
	if (cur + ihl > data_end)
		return V_MALFORMED;
	/* Any fragment (MF set or offset non-zero) goes to the kernel, which reassembles. */
	if (ip->frag_off & bpf_htons(0x3fff))
		return V_FRAGMENT;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return V_PASS;

	void *l4 = cur + ihl;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return V_MALFORMED;
		key->port = th->dest;
	} else {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			return V_MALFORMED;
		key->port = uh->dest;
	}
	key->proto = ip->protocol;
	key->addr = ip->daddr;
	return V_MATCH;
}

SEC("xdp")
int xdp_steer(struct xdp_md *ctx)
{
	__u32 queue = ctx->rx_queue_index;
	__u32 zero = 0;
	struct queue_counters *c = bpf_map_lookup_elem(&counters, &queue);
	struct steer_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct rule_key key = {};
	int tagged = 0;
	int action;

	if (c)
		c->seen++;

	enum verdict v = parse(ctx, &key, &tagged);
	if (v != V_MATCH) {
		if (c) {
			if (v == V_MALFORMED)
				c->malformed++;
			else if (v == V_FRAGMENT)
				c->fragments++;
			else if (v == V_NOT_IPV4)
				c->not_ipv4++;
			c->passed++;
		}
		return XDP_PASS;
	}

	/* An exact (address, port) rule first, then the any-address rule. */
	if (!bpf_map_lookup_elem(&rules, &key)) {
		key.addr = 0;
		if (!bpf_map_lookup_elem(&rules, &key)) {
			if (c)
				c->passed++;
			return XDP_PASS;
		}
	}

	if (c)
		c->matched++;
	if (tagged) {
		/* The stack speaks untagged Ethernet only: tagged flows stay with the kernel. */
		if (c) {
			c->vlan++;
			c->passed++;
		}
		return XDP_PASS;
	}
	if (!cfg || cfg->queue != queue) {
		/* The flow landed on a queue this attachment does not serve. */
		if (c) {
			c->no_xsk++;
			c->passed++;
		}
		return XDP_PASS;
	}

	action = bpf_redirect_map(&xsks, queue, XDP_PASS);
	if (c) {
		if (action == XDP_REDIRECT) {
			c->redirected++;
		} else {
			c->no_xsk++;
			c->passed++;
		}
	}
	return action;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Userspace cannot look into an XSKMAP, and this kernel may lack AF_XDP sock_diag: so
 * `xdp-loader status` test-runs this program (BPF_PROG_TEST_RUN), which writes a bitmap of the
 * queues that have a socket registered into the first 8 bytes of the test packet. bpf_loop keeps
 * verification linear (an open-coded loop forks the verifier's state at every lookup). */
struct probe_ctx {
	__u64 bits;
};

static long probe_one(__u32 i, void *data)
{
	struct probe_ctx *p = data;
	__u32 q = i;

	if (bpf_map_lookup_elem(&xsks, &q))
		p->bits |= 1ULL << (i & 63);
	return 0;
}

SEC("xdp")
int xsk_probe(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct probe_ctx pc = {};
	__u64 *out = data;

	if ((void *)(out + 1) > data_end)
		return XDP_ABORTED;
	bpf_loop(STEER_MAX_QUEUES, probe_one, &pc, 0);
	*out = pc.bits;
	return XDP_PASS;
}
