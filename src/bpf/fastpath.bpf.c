// overlayd eBPF fast path: known unicast between TAP ports and VXLAN peers, at TC.
//
// Two programs, fed and watched by the daemon (src/daemon/fastpath.rs):
// - tap_egress, on the TC egress of every TAP of a VXLAN network (what the host sends into
//   the TAP): a frame whose destination MAC the network's table puts behind a peer is
//   encapsulated in VXLAN over IPv4 and redirected to the underlay; one whose destination is
//   behind another TAP of the network is redirected into that TAP (its ingress: delivered to
//   the host as if the daemon had written it);
// - underlay_ingress, on the TC ingress of the underlay device: VXLAN from a configured peer of
//   a network, for a MAC behind a TAP, is decapsulated and redirected into that TAP.
// Anything else (broadcast, multicast, unknown destinations, sources not yet learned at that
// ingress, frames over the MTU, ARP and other non-IP frames, neighbour discovery, DHCP,
// keepalives, IP options, fragments, IPv6 underlay, anything unexpected) returns TC_ACT_OK
// untouched: the userspace path handles it, learns from it and counts it exactly as without
// this program.
//
// The MAC table stays the daemon's: `fdb` is a mirror it writes. The programs only refresh an
// entry's `seen_ns` when they forward a frame from it, which the daemon folds back into its
// table's ageing.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// not in every linux/bpf.h yet; the values are the kernel's ABI (6.3+)
#define ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#define ADJ_ROOM_DECAP_L4_UDP (1ULL << 10)

#define MAX_NETS 64
#define STRIDE 256 // u64 counters per network
#define MAX_PEERS 63
#define VXLAN_LEN 8
#define ENCAP_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + VXLAN_LEN + ETH_HLEN) // 50
#define OUTER_LEN (ETH_HLEN + ENCAP_LEN)                                                  // 64
#define SEEN_GRANULARITY_NS 1000000000ULL

enum { KIND_LOCAL = 1, KIND_PEER = 2 };
// The peer takes what this program sends: GSO super-packets and inner checksums left for the
// receiver (an overlayd, or a kernel whose own stack sends offloads). Any other peer (Open
// vSwitch's userspace datapath reading a veth) gets its frames from the userspace path, one
// datagram per segment with finished checksums.
#define PEER_TAKES_OFFLOADS 1

struct fdb_key {
	__u32 net;
	__u8 mac[6];
	__u16 pad;
};

struct fdb_val {
	__u8 kind;
	__u8 pad;
	__u16 idx;     // LocalPort or PeerIdx
	__u32 ifindex; // KIND_LOCAL: the TAP
	__u32 daddr;   // KIND_PEER: the peer's underlay IPv4 address (network order)
	__u16 dport;   // KIND_PEER: its VXLAN port (network order)
	__u16 flags;   // KIND_PEER: PEER_TAKES_OFFLOADS
	__u64 seen_ns; // written by the programs: last frame forwarded from this MAC
};

struct tap_cfg {
	__u32 net;
	__u16 lport;
	__u16 mtu;
	__u32 vni;
	__u32 saddr; // our underlay IPv4 address (network order)
	__u32 underlay_ifindex;
	__u16 sport_min; // UDP source ports [sport_min, sport_min + sport_span)
	__u16 sport_span;
};

struct peer_key {
	__u32 vni;
	__u32 saddr; // the peer's underlay address (network order)
};

struct peer_val {
	__u32 net;
	__u16 idx;
	__u16 dport; // our VXLAN port for this network (network order)
	__u32 daddr; // our underlay address (network order)
	__u16 mtu;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fdb_key);
	__type(value, struct fdb_val);
} FDB SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct tap_cfg);
} TAPS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct peer_key);
	__type(value, struct peer_val);
} PEERS SEC(".maps");

// per network: [0] tap rx frames, [1] bytes, [2] tap tx frames, [3] bytes, then per peer p:
// [4+4p] tx packets, [5+4p] tx bytes, [6+4p] rx packets, [7+4p] rx bytes
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_NETS *STRIDE);
	__type(key, __u32);
	__type(value, __u64);
} STATS SEC(".maps");

static __always_inline void count(__u32 net, __u32 slot, __u64 n) {
	__u32 k = net * STRIDE + slot;
	__u64 *c = bpf_map_lookup_elem(&STATS, &k);
	if (c)
		*c += n;
}

static __always_inline int is_multicast(const __u8 *mac) {
	return mac[0] & 1;
}

static __always_inline int is_zero(const __u8 *mac) {
	return !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]);
}

static __always_inline void refresh(struct fdb_val *e) {
	__u64 now = bpf_ktime_get_ns();
	if (now - e->seen_ns > SEEN_GRANULARITY_NS)
		e->seen_ns = now;
}

// Length of the L3 + L4 headers of the IP packet at `off` (IPv4 without fragments, or IPv6
// whose next header is TCP or UDP), or 0 when it is something else.
static __always_inline __u32 l34_len(struct __sk_buff *skb, __u32 off, __u16 proto) {
	__u8 l4;
	__u32 l3;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)))
			return 0;
		if (ip.frag_off & bpf_htons(0x3fff))
			return 0;
		l3 = ip.ihl * 4;
		l4 = ip.protocol;
	} else {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return 0;
		l3 = sizeof(ip6);
		l4 = ip6.nexthdr;
	}
	if (l4 == IPPROTO_UDP)
		return l3 + sizeof(struct udphdr);
	if (l4 != IPPROTO_TCP)
		return 0;
	__u8 doff;
	if (bpf_skb_load_bytes(skb, off + l3 + 12, &doff, 1))
		return 0;
	return l3 + (doff >> 4) * 4;
}

// Is the IP packet at `off` IPv6 neighbour discovery (ICMPv6 types 133..137: router and
// neighbour solicitations and advertisements, redirects)? The userspace path must see those:
// it snoops neighbour advertisements that cross the tunnel (arp_suppress) and answers
// solicitations from local ports; they are a few packets a minute, never bulk.
static __always_inline int is_nd(struct __sk_buff *skb, __u32 off, __u16 proto) {
	if (proto != bpf_htons(ETH_P_IPV6))
		return 0;
	__u8 nexthdr, type;
	if (bpf_skb_load_bytes(skb, off + 6, &nexthdr, 1) || nexthdr != IPPROTO_ICMPV6)
		return 0;
	if (bpf_skb_load_bytes(skb, off + sizeof(struct ipv6hdr), &type, 1))
		return 1; // cut short: let the userspace path judge it
	return type >= 133 && type <= 137;
}

// Is the IP packet at `off` DHCP (IPv4/UDP to port 67 or 68)? The userspace path snoops
// DHCP acknowledgements, releases and refusals for the neighbour tables (a lease's address
// bound to its client's MAC); an exchange is a few packets per lease, never bulk.
static __always_inline int is_dhcp(struct __sk_buff *skb, __u32 off, __u16 proto) {
	if (proto != bpf_htons(ETH_P_IP))
		return 0;
	__u8 vihl, l4;
	if (bpf_skb_load_bytes(skb, off, &vihl, 1) || bpf_skb_load_bytes(skb, off + 9, &l4, 1))
		return 1; // cut short: let the userspace path judge it
	if (l4 != IPPROTO_UDP)
		return 0;
	__be16 dport;
	if (bpf_skb_load_bytes(skb, off + (vihl & 0x0f) * 4 + 2, &dport, sizeof(dport)))
		return 1;
	return dport == bpf_htons(67) || dport == bpf_htons(68);
}

// Does the frame (Ethernet header at `off`) fit the network's MTU, as the userspace path
// judges it: L3 length, or for a GSO super-frame its segments' L3 length?
// (`len`, `gso_size`, `gso_segs`: the skb's, read once at the start of a program: clang must
// not keep a pointer into the context around, the verifier refuses that)
static __always_inline int fits_mtu(struct __sk_buff *skb, __u32 len, __u32 gso_size, __u32 off, __u16 proto, __u32 mtu) {
	if (gso_size == 0)
		return len - off - ETH_HLEN <= mtu;
	__u32 h = l34_len(skb, off + ETH_HLEN, proto);
	return h && h + gso_size <= mtu;
}

static __always_inline __u32 segments(__u32 len, __u32 gso_size, __u32 gso_segs) {
	if (gso_segs)
		return gso_segs;
	if (gso_size)
		return (len + gso_size - 1) / gso_size;
	return 1;
}

static __always_inline __u16 ip_checksum(const struct iphdr *ip) {
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

// 20 + 8 + 8 + 14 bytes; every member at an offset of its own alignment (2 or 4) but the
// last, so only the Ethernet header needs `packed` alignment of 2
struct encap_hdr {
	struct iphdr ip;
	struct udphdr udp;
	__u32 vx_flags;
	__u32 vx_vni;
	struct ethhdr eth;
} __attribute__((packed, aligned(4)));
_Static_assert(__builtin_offsetof(struct encap_hdr, eth) + ETH_HLEN == ENCAP_LEN, "VXLAN encapsulation is 50 bytes");

SEC("classifier")
int tap_egress(struct __sk_buff *skb) {
	__u32 ifindex = skb->ifindex, len0 = skb->len, gso_size = skb->gso_size, gso_segs = skb->gso_segs;
	__u32 vlan = skb->vlan_present;
	struct tap_cfg *t = bpf_map_lookup_elem(&TAPS, &ifindex);
	if (!t)
		return TC_ACT_OK;
	struct ethhdr eth;
	if (vlan || bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return TC_ACT_OK;
	if (eth.h_proto != bpf_htons(ETH_P_IP) && eth.h_proto != bpf_htons(ETH_P_IPV6))
		return TC_ACT_OK;
	if (is_multicast(eth.h_dest) || is_multicast(eth.h_source) || is_zero(eth.h_source))
		return TC_ACT_OK;
	if (!fits_mtu(skb, len0, gso_size, 0, eth.h_proto, t->mtu))
		return TC_ACT_OK;
	if (is_nd(skb, ETH_HLEN, eth.h_proto) || is_dhcp(skb, ETH_HLEN, eth.h_proto))
		return TC_ACT_OK;
	struct fdb_key k = {.net = t->net};
	__builtin_memcpy(k.mac, eth.h_source, 6);
	struct fdb_val *src = bpf_map_lookup_elem(&FDB, &k);
	// a source not known at this port yet: the daemon learns it (or the move) first
	if (!src || src->kind != KIND_LOCAL || src->idx != t->lport)
		return TC_ACT_OK;
	__builtin_memcpy(k.mac, eth.h_dest, 6);
	struct fdb_val *dst = bpf_map_lookup_elem(&FDB, &k);
	if (!dst)
		return TC_ACT_OK;
	__u32 net = t->net;
	if (dst->kind == KIND_LOCAL) {
		if (dst->idx == t->lport || dst->ifindex == 0)
			return TC_ACT_OK; // hairpin: the userspace path drops and counts it
		refresh(src);
		count(net, 0, 1);
		count(net, 1, len0);
		count(net, 2, 1);
		count(net, 3, len0);
		return bpf_redirect(dst->ifindex, BPF_F_INGRESS);
	}
	if (dst->kind != KIND_PEER || dst->idx >= MAX_PEERS || dst->daddr == 0 || !(dst->flags & PEER_TAKES_OFFLOADS))
		return TC_ACT_OK;
	__u32 peer = dst->idx, daddr = dst->daddr;
	__u16 dport = dst->dport;
	__u32 hash = bpf_get_hash_recalc(skb);
	__u16 sport = t->sport_min + (__u16)(((__u64)hash * t->sport_span) >> 32);
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
		      BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	if (bpf_skb_adjust_room(skb, ENCAP_LEN, BPF_ADJ_ROOM_MAC, flags))
		return TC_ACT_OK;
	struct encap_hdr h = {};
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tot_len = bpf_htons(len0 - ETH_HLEN + ENCAP_LEN);
	h.ip.frag_off = bpf_htons(0x4000); // DF
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_UDP;
	h.ip.saddr = t->saddr;
	h.ip.daddr = daddr;
	struct iphdr ip = h.ip;
	h.ip.check = ip_checksum(&ip);
	h.udp.source = bpf_htons(sport);
	h.udp.dest = dport;
	h.udp.len = bpf_htons(len0 - ETH_HLEN + ENCAP_LEN - sizeof(struct iphdr));
	h.vx_flags = bpf_htonl(0x08000000);
	h.vx_vni = bpf_htonl(t->vni << 8);
	h.eth = eth;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, ENCAP_LEN, 0))
		return TC_ACT_SHOT; // the frame is half rewritten: it cannot go on as it was
	__u16 proto = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 12, &proto, sizeof(proto), 0))
		return TC_ACT_SHOT;
	refresh(src);
	__u32 segs = segments(len0, gso_size, gso_segs);
	count(net, 0, 1);
	count(net, 1, len0);
	count(net, 4 + 4 * peer, segs);
	count(net, 5 + 4 * peer, len0 + segs * VXLAN_LEN);
	return bpf_redirect_neigh(t->underlay_ifindex, NULL, 0, 0);
}

SEC("classifier")
int underlay_ingress(struct __sk_buff *skb) {
	__u32 len0 = skb->len, gso_size = skb->gso_size, gso_segs = skb->gso_segs;
	if (skb->protocol != bpf_htons(ETH_P_IP) || skb->vlan_present)
		return TC_ACT_OK;
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
		return TC_ACT_OK;
	if (ip.version != 4 || ip.ihl != 5 || ip.protocol != IPPROTO_UDP || (ip.frag_off & bpf_htons(0x3fff)))
		return TC_ACT_OK;
	struct {
		struct udphdr udp;
		__u32 vx_flags;
		__u32 vx_vni;
		struct ethhdr eth;
	} __attribute__((packed)) h;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip), &h, sizeof(h)))
		return TC_ACT_OK;
	// a valid VXLAN header: only the I flag, reserved bits zero
	if (h.vx_flags != bpf_htonl(0x08000000) || (h.vx_vni & bpf_htonl(0xff)))
		return TC_ACT_OK;
	struct peer_key pk = {.vni = bpf_ntohl(h.vx_vni) >> 8, .saddr = ip.saddr};
	struct peer_val *p = bpf_map_lookup_elem(&PEERS, &pk);
	if (!p || p->dport != h.udp.dest || p->daddr != ip.daddr || p->idx >= MAX_PEERS)
		return TC_ACT_OK;
	// a UDP checksum the kernel has not vouched for is the socket's to check
	if (h.udp.check != 0 && bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) < 0)
		return TC_ACT_OK;
	if (bpf_ntohs(ip.tot_len) != len0 - ETH_HLEN && gso_size == 0)
		return TC_ACT_OK;
	struct ethhdr eth = h.eth;
	if (eth.h_proto != bpf_htons(ETH_P_IP) && eth.h_proto != bpf_htons(ETH_P_IPV6))
		return TC_ACT_OK;
	if (is_multicast(eth.h_dest) || is_multicast(eth.h_source) || is_zero(eth.h_source))
		return TC_ACT_OK;
	if (!fits_mtu(skb, len0, gso_size, OUTER_LEN - ETH_HLEN, eth.h_proto, p->mtu))
		return TC_ACT_OK;
	if (is_nd(skb, OUTER_LEN, eth.h_proto) || is_dhcp(skb, OUTER_LEN, eth.h_proto))
		return TC_ACT_OK;
	struct fdb_key k = {.net = p->net};
	__builtin_memcpy(k.mac, eth.h_source, 6);
	struct fdb_val *src = bpf_map_lookup_elem(&FDB, &k);
	if (!src || src->kind != KIND_PEER || src->idx != p->idx)
		return TC_ACT_OK;
	__builtin_memcpy(k.mac, eth.h_dest, 6);
	struct fdb_val *dst = bpf_map_lookup_elem(&FDB, &k);
	if (!dst || dst->kind != KIND_LOCAL || dst->ifindex == 0)
		return TC_ACT_OK;
	__u32 net = p->net, peer = p->idx, tap = dst->ifindex;
	__u32 segs = segments(len0, gso_size, gso_segs);
	__u64 l3 = eth.h_proto == bpf_htons(ETH_P_IP) ? ADJ_ROOM_DECAP_L3_IPV4 : ADJ_ROOM_DECAP_L3_IPV6;
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | l3;
	// Kernels without ADJ_ROOM_DECAP_L4_UDP (before 6.19) cannot clear a super-packet's
	// tunnel GSO bits: it is delivered to the host behind the TAP with them, which its stack
	// ignores (the socket behind the underlay could not take it whole either: it would see one
	// datagram of many segments).
	if (bpf_skb_adjust_room(skb, -(__s32)ENCAP_LEN, BPF_ADJ_ROOM_MAC, flags | ADJ_ROOM_DECAP_L4_UDP) &&
	    bpf_skb_adjust_room(skb, -(__s32)ENCAP_LEN, BPF_ADJ_ROOM_MAC, flags))
		return TC_ACT_OK;
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
		return TC_ACT_SHOT;
	refresh(src);
	count(net, 6 + 4 * peer, segs);
	count(net, 7 + 4 * peer, len0 - ETH_HLEN - sizeof(struct iphdr) - sizeof(struct udphdr));
	count(net, 2, 1);
	count(net, 3, len0 - OUTER_LEN + ETH_HLEN);
	return bpf_redirect(tap, BPF_F_INGRESS);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
