// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Link impairment for tests (this kernel has no netem): on a clsact egress hook, randomly drop,
 * duplicate or corrupt IPv4 TCP/UDP packets at rates set in the config map (parts per million). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct impair_config {
	__u32 drop_ppm;
	__u32 dup_ppm;
	__u32 corrupt_ppm;
	__u32 pad;
};

struct impair_counters {
	__u64 seen;
	__u64 dropped;
	__u64 duplicated;
	__u64 corrupted;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct impair_config);
} impair_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct impair_counters);
} impair_stats SEC(".maps");

SEC("tc")
int impair(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct impair_config *cfg = bpf_map_lookup_elem(&impair_cfg, &zero);
	struct impair_counters *c = bpf_map_lookup_elem(&impair_stats, &zero);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if (!cfg || !c)
		return TC_ACT_OK;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP))
		return TC_ACT_OK;
	c->seen++;

	__u32 r = bpf_get_prandom_u32() % 1000000;
	if (r < cfg->drop_ppm) {
		c->dropped++;
		return TC_ACT_SHOT;
	}
	r -= cfg->drop_ppm;
	if (r < cfg->dup_ppm) {
		c->duplicated++;
		/* A clone goes out first; the original follows. */
		bpf_clone_redirect(skb, skb->ifindex, 0);
		return TC_ACT_OK;
	}
	r -= cfg->dup_ppm;
	if (r < cfg->corrupt_ppm) {
		/* Flip a byte of the IPv4 identification field. TCP/UDP checksums are still partial
		 * here (the software fallback computes them after tc egress, over whatever we wrote),
		 * so L4 damage would go unnoticed by anyone; the IPv4 header checksum is final, so
		 * this corruption must be caught by the receiver's header check. */
		__u32 off = ETH_HLEN + 4;
		__u8 b;
		if (bpf_skb_load_bytes(skb, off, &b, 1) == 0) {
			b ^= 0xff;
			bpf_skb_store_bytes(skb, off, &b, 1, 0);
			c->corrupted++;
		}
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
