// overlayd eBPF fast path: known unicast between TAP ports and VXLAN peers, at TC.
//
// Two programs, fed and watched by the daemon (src/daemon/fastpath.rs):
// - tap_egress, on the TC egress of every TAP of a VXLAN network (what the host sends into
//   the TAP): a frame whose destination MAC the network's table puts behind a peer is
//   encapsulated in VXLAN over the underlay's family (IPv4 or IPv6) and redirected to the
//   underlay; one whose destination is
//   behind another TAP of the network is redirected into that TAP (its ingress: delivered to
//   the host as if the daemon had written it);
// - underlay_ingress, on the TC ingress of the underlay device: VXLAN from a configured peer of
//   a network, for a MAC behind a TAP, is decapsulated and redirected into that TAP.
// Anything else (broadcast, multicast, unknown destinations, sources not yet learned at that
// ingress, frames over the MTU, ARP and other non-IP frames, neighbour discovery, DHCP,
// keepalives, IP options, fragments, anything unexpected) returns TC_ACT_OK untouched: the
// userspace path handles it, learns from it and counts it exactly as without this program.
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
#define ENCAP_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + VXLAN_LEN + ETH_HLEN)     // 50
#define ENCAP6_LEN (sizeof(struct ipv6hdr) + sizeof(struct udphdr) + VXLAN_LEN + ETH_HLEN) // 70
#define OUTER_LEN (ETH_HLEN + ENCAP_LEN)                                                      // 64
#define OUTER6_LEN (ETH_HLEN + ENCAP6_LEN)                                                    // 84
#define SEEN_GRANULARITY_NS 1000000000ULL
#define SOURCE_PORTS 16
#define HOP_LIMIT 64

enum { KIND_LOCAL = 1, KIND_PEER = 2 };
// The peer takes what this program sends: GSO super-packets and inner checksums left for the
// receiver (an overlayd, or a kernel whose own stack sends offloads). Any other peer (Open
// vSwitch's userspace datapath reading a veth) gets its frames from the userspace path, one
// datagram per segment with finished checksums.
#define PEER_TAKES_OFFLOADS 1
// Over IPv6: the peer accepts VXLAN with a zero UDP checksum (RFC 6935/6936), as overlayd
// says it does in its keepalives. A GSO super-frame can only be sent so: this kernel's
// bpf_skb_adjust_room marks it SKB_GSO_UDP_TUNNEL, never ..._CSUM, so the segments keep the
// outer checksum written here. To other peers (the kernel's vxlan device checks the checksum
// unless udp6zerocsumrx) super-frames go through the userspace path, whose UDP GSO sums each
// datagram; single frames get a real checksum here.
#define PEER_ZERO_CSUM6 2

// An underlay address: IPv4 in the first 4 bytes (the rest zero), or IPv6.
union addr {
	__u32 v4;
	__u32 w[4];
	__u8 b[16];
};

struct fdb_key {
	__u32 net;
	__u8 mac[6];
	__u16 pad;
};

struct fdb_val {
	__u8 kind;
	__u8 pad;
	__u16 idx;         // LocalPort or PeerIdx
	__u32 ifindex;     // KIND_LOCAL: the TAP
	union addr daddr;  // KIND_PEER: the peer's underlay address (network order)
	__u16 dport;       // KIND_PEER: its VXLAN port (network order)
	__u16 flags;       // KIND_PEER: PEER_TAKES_OFFLOADS, PEER_ZERO_CSUM6
	__u32 pad2;
	__u64 seen_ns;     // written by the programs: last frame forwarded from this MAC
};

struct tap_cfg {
	__u32 net;
	__u16 lport;
	__u16 mtu;
	__u32 vni;
	__u32 underlay_ifindex;
	union addr saddr; // our underlay address (network order)
	__u16 family;     // 4 or 6: the underlay's
	__u16 nports;     // source ports in use, at most SOURCE_PORTS
	// the UDP source ports of the userspace path's sockets: a flow takes sports[hash % nports],
	// its flow hash the userspace path's (flow_hash below), so both paths send a flow from the
	// same port
	__u16 sports[SOURCE_PORTS];
};

struct peer_key {
	__u32 vni;
	union addr saddr; // the peer's underlay address (network order)
};

struct peer_val {
	__u32 net;
	__u16 idx;
	__u16 dport;      // our VXLAN port for this network (network order)
	union addr daddr; // our underlay address (network order)
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

// The headers every segment of a GSO super-frame (Ethernet header at `off`) repeats: its
// Ethernet, IP and TCP/UDP headers; 0 for a frame that is not one. The tunnel counters count
// what goes on the wire, as the userspace path does: each segment with its own headers.
static __always_inline __u32 seg_headers(struct __sk_buff *skb, __u32 gso_size, __u32 off, __u16 proto) {
	if (gso_size == 0)
		return 0;
	return ETH_HLEN + l34_len(skb, off + ETH_HLEN, proto);
}

static __always_inline __u32 segments(__u32 len, __u32 gso_size, __u32 gso_segs) {
	if (gso_segs)
		return gso_segs;
	if (gso_size)
		return (len + gso_size - 1) / gso_size;
	return 1;
}

static __always_inline __u32 fold(__u32 sum) {
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

// One's complement sum of `n` bytes (even, a constant) at `p`, as 16-bit words read in host
// order: the sum of network-order data, byte-swapped alike, folds to the right checksum when
// stored back in host order.
static __always_inline __u32 sum16(const void *p, int n) {
	const __u16 *w = p;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < n / 2; i++)
		sum += w[i];
	return sum;
}

static __always_inline __u16 ip_checksum(const struct iphdr *ip) {
	return ~fold(sum16(ip, sizeof(*ip)));
}

// The userspace path's flow hash (EthernetFrame::flow_hash in src/core/wire/ethernet.rs): the
// MAC addresses, for IPv4/IPv6 the addresses and protocol, and the ports of TCP, UDP and SCTP
// (unfragmented). Both paths take the UDP source port from it, so a flow keeps its outer port
// whichever path carries a frame of it (the fast path only takes untagged IP frames).
static __always_inline __u64 mix(__u64 h, __u64 v) {
	h = (h ^ v) * 0x9e3779b97f4a7c15ULL;
	return (h << 29) | (h >> 35);
}

static __always_inline __u64 mac_word(const __u8 *m) {
	return ((__u64)m[0] << 40) | ((__u64)m[1] << 32) | ((__u64)m[2] << 24) | ((__u64)m[3] << 16) | ((__u64)m[4] << 8) | m[5];
}

static __always_inline __u64 be64(const void *p) {
	__u64 v;
	__builtin_memcpy(&v, p, 8);
	return bpf_be64_to_cpu(v);
}

static __always_inline int hashed_ports(__u8 proto) {
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

static __always_inline __u32 flow_hash(struct __sk_buff *skb, const struct ethhdr *eth) {
	__u64 h = 0x243f6a8885a308d3ULL;
	h = mix(h, mac_word(eth->h_dest));
	h = mix(h, mac_word(eth->h_source));
	__u32 ports;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (!bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip))) {
			h = mix(h, ((__u64)bpf_ntohl(ip.saddr) << 32) | bpf_ntohl(ip.daddr));
			__u64 last = (__u64)ip.protocol << 32;
			__u32 ihl = ip.ihl * 4;
			if (!(ip.frag_off & bpf_htons(0x3fff)) && hashed_ports(ip.protocol) &&
			    !bpf_skb_load_bytes(skb, ETH_HLEN + ihl, &ports, 4))
				last |= bpf_ntohl(ports);
			h = mix(h, last);
		}
	} else {
		struct ipv6hdr ip6;
		if (!bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6))) {
			const __u8 *a = (const __u8 *)&ip6.saddr;
#pragma unroll
			for (int i = 0; i < 4; i++)
				h = mix(h, be64(a + 8 * i));
			__u64 last = (__u64)ip6.nexthdr << 32;
			if (hashed_ports(ip6.nexthdr) && !bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip6), &ports, 4))
				last |= bpf_ntohl(ports);
			h = mix(h, last);
		}
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return (__u32)h;
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

// 40 + 8 + 8 + 14 bytes
struct encap6_hdr {
	__u32 ver_tc_flow;
	__u16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
	struct udphdr udp;
	__u32 vx_flags;
	__u32 vx_vni;
	struct ethhdr eth;
} __attribute__((packed, aligned(4)));
_Static_assert(__builtin_offsetof(struct encap6_hdr, eth) + ETH_HLEN == ENCAP6_LEN, "VXLAN encapsulation over IPv6 is 70 bytes");

// The sum over the inner frame from its IP header on, once every checksum in it is final (the
// host's stack or the device finishes a partial one later), or 0 when this cannot be known from
// the headers alone. Its L4 segment sums to the complement of its pseudo-header, whether its
// checksum is finished yet or left partial; its IPv4 header (no options) and ICMP message sum
// to zero. This is the kernel's local checksum offload (lco_csum): an outer UDP checksum from
// the headers only. Frames it does not cover (fragments, options, extension headers, other
// protocols, UDP over IPv4 without a checksum, padding) return 0: not here.
static __always_inline __u32 inner_sum(struct __sk_buff *skb, __u32 len0, __u16 proto) {
	__u32 sum;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
			return 0;
		if (ip.ihl != 5 || (ip.frag_off & bpf_htons(0x3fff)) || bpf_ntohs(ip.tot_len) != len0 - ETH_HLEN)
			return 0;
		sum = sum16(&ip, sizeof(ip));
		if (ip.protocol == IPPROTO_ICMP)
			return sum + 0xffff; // (a nonzero marker; 0xffff adds nothing)
		if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
			return 0;
		if (ip.protocol == IPPROTO_UDP) {
			__u16 check;
			if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(ip) + 6, &check, 2) || check == 0)
				return 0;
		}
		__u32 pseudo = (ip.saddr & 0xffff) + (ip.saddr >> 16) + (ip.daddr & 0xffff) + (ip.daddr >> 16) +
			       bpf_htons(ip.protocol) + bpf_htons(bpf_ntohs(ip.tot_len) - sizeof(ip));
		return sum + (~fold(pseudo) & 0xffff);
	}
	struct ipv6hdr ip6;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
		return 0;
	if (bpf_ntohs(ip6.payload_len) != len0 - ETH_HLEN - sizeof(ip6))
		return 0;
	if (ip6.nexthdr != IPPROTO_TCP && ip6.nexthdr != IPPROTO_UDP && ip6.nexthdr != IPPROTO_ICMPV6)
		return 0;
	sum = sum16(&ip6, sizeof(ip6));
	__u32 pseudo = sum16(&ip6.saddr, 32) + ip6.payload_len + bpf_htons(ip6.nexthdr);
	return sum + (~fold(pseudo) & 0xffff);
}

// The IPv6 flow label of a flow: nonzero, like the kernel's own (ip6_make_flowlabel with
// net.ipv6.auto_flowlabels), from the flow hash.
static __always_inline __u32 flow_label(__u32 hash) {
	__u32 l = (hash ^ ((hash << 12) | (hash >> 20))) & 0xfffff;
	return l ? l : 1;
}

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
	if (dst->kind != KIND_PEER || dst->idx >= MAX_PEERS || !(dst->flags & PEER_TAKES_OFFLOADS))
		return TC_ACT_OK;
	__u32 peer = dst->idx, pflags = dst->flags, nports = t->nports;
	union addr daddr = dst->daddr;
	__u16 dport = dst->dport;
	if (daddr.w[0] == 0 && daddr.w[1] == 0 && daddr.w[2] == 0 && daddr.w[3] == 0)
		return TC_ACT_OK;
	if (nports == 0 || nports > SOURCE_PORTS)
		return TC_ACT_OK;
	__u32 hash = flow_hash(skb, &eth);
	__u32 hdrs = seg_headers(skb, gso_size, 0, eth.h_proto); // (read before the headers move)
	__u32 slot = hash % nports;
	// (slot < nports <= 16 already; the mask is for the verifier, which cannot know that)
	asm volatile("" : "+r"(slot));
	slot &= SOURCE_PORTS - 1;
	__u16 sport = t->sports[slot];
	__u32 vni = bpf_htonl(t->vni << 8);
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
		      BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	__u16 outer_proto;
	if (t->family == 6) {
		union addr saddr = t->saddr;
		__u32 ulen = len0 + VXLAN_LEN + sizeof(struct udphdr);
		// the outer UDP checksum: real where the headers give it (lco_csum); zero only for a
		// super-frame to a peer that said it takes that; else the userspace path sends it
		__u32 inner = 0;
		if (gso_size == 0)
			inner = inner_sum(skb, len0, eth.h_proto);
		if (inner == 0 && !(pflags & PEER_ZERO_CSUM6))
			return TC_ACT_OK;
		if (bpf_skb_adjust_room(skb, ENCAP6_LEN, BPF_ADJ_ROOM_MAC, flags | BPF_F_ADJ_ROOM_ENCAP_L3_IPV6))
			return TC_ACT_OK;
		struct encap6_hdr h = {};
		h.ver_tc_flow = bpf_htonl((6U << 28) | flow_label(hash)); // traffic class 0, as the socket's
		h.payload_len = bpf_htons(ulen);
		h.nexthdr = IPPROTO_UDP;
		h.hop_limit = HOP_LIMIT;
		__builtin_memcpy(h.saddr, saddr.b, 16);
		__builtin_memcpy(h.daddr, daddr.b, 16);
		h.udp.source = bpf_htons(sport);
		h.udp.dest = dport;
		h.udp.len = bpf_htons(ulen);
		h.vx_flags = bpf_htonl(0x08000000);
		h.vx_vni = vni;
		h.eth = eth;
		if (inner) {
			__u32 sum = sum16(h.saddr, 32) + bpf_htons(ulen) + bpf_htons(IPPROTO_UDP);
			sum += sum16(&h.udp, sizeof(h.udp) + VXLAN_LEN + ETH_HLEN);
			sum = fold(sum) + fold(inner);
			__u16 c = ~fold(sum);
			h.udp.check = c ? c : 0xffff;
		}
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, ENCAP6_LEN, 0))
			return TC_ACT_SHOT; // the frame is half rewritten: it cannot go on as it was
		outer_proto = bpf_htons(ETH_P_IPV6);
	} else {
		if (bpf_skb_adjust_room(skb, ENCAP_LEN, BPF_ADJ_ROOM_MAC, flags | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
			return TC_ACT_OK;
		struct encap_hdr h = {};
		h.ip.version = 4;
		h.ip.ihl = 5;
		h.ip.tot_len = bpf_htons(len0 - ETH_HLEN + ENCAP_LEN);
		h.ip.frag_off = bpf_htons(0x4000); // DF
		h.ip.ttl = 64;
		h.ip.protocol = IPPROTO_UDP;
		h.ip.saddr = t->saddr.v4;
		h.ip.daddr = daddr.v4;
		struct iphdr ip = h.ip;
		h.ip.check = ip_checksum(&ip);
		h.udp.source = bpf_htons(sport);
		h.udp.dest = dport;
		h.udp.len = bpf_htons(len0 - ETH_HLEN + ENCAP_LEN - sizeof(struct iphdr));
		h.vx_flags = bpf_htonl(0x08000000);
		h.vx_vni = vni;
		h.eth = eth;
		if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, ENCAP_LEN, 0))
			return TC_ACT_SHOT; // the frame is half rewritten: it cannot go on as it was
		outer_proto = bpf_htons(ETH_P_IP);
	}
	if (bpf_skb_store_bytes(skb, 12, &outer_proto, sizeof(outer_proto), 0))
		return TC_ACT_SHOT;
	refresh(src);
	__u32 segs = segments(len0, gso_size, gso_segs);
	count(net, 0, 1);
	count(net, 1, len0);
	count(net, 4 + 4 * peer, segs);
	count(net, 5 + 4 * peer, len0 + segs * VXLAN_LEN + (segs - 1) * hdrs);
	return bpf_redirect_neigh(t->underlay_ifindex, NULL, 0, 0);
}

// The length of the inner frame's IP packet as its header says (Ethernet header at `off`), or
// 0 when it cannot be read.
static __always_inline __u32 inner_l3_len(struct __sk_buff *skb, __u32 off, __u16 proto) {
	__u16 l;
	if (proto == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, off + ETH_HLEN + 2, &l, 2))
			return 0;
		return bpf_ntohs(l);
	}
	if (bpf_skb_load_bytes(skb, off + ETH_HLEN + 4, &l, 2))
		return 0;
	return bpf_ntohs(l) + sizeof(struct ipv6hdr);
}

SEC("classifier")
int underlay_ingress(struct __sk_buff *skb) {
	__u32 len0 = skb->len, gso_size = skb->gso_size, gso_segs = skb->gso_segs;
	if (skb->vlan_present)
		return TC_ACT_OK;
	union addr from, to;
	// (all 16 bytes: `= {}` would clear a union's first member only, and an IPv4 address
	// leaves the other 12 to stack garbage, which then fails the peer lookups now and then)
	__builtin_memset(&from, 0, sizeof(from));
	__builtin_memset(&to, 0, sizeof(to));
	__u32 l3;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
			return TC_ACT_OK;
		if (ip.version != 4 || ip.ihl != 5 || ip.protocol != IPPROTO_UDP || (ip.frag_off & bpf_htons(0x3fff)))
			return TC_ACT_OK;
		if (bpf_ntohs(ip.tot_len) != len0 - ETH_HLEN && gso_size == 0)
			return TC_ACT_OK;
		from.v4 = ip.saddr;
		to.v4 = ip.daddr;
		l3 = sizeof(ip);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return TC_ACT_OK;
		// no extension headers: VXLAN senders put none
		if (ip6.version != 6 || ip6.nexthdr != IPPROTO_UDP)
			return TC_ACT_OK;
		if (bpf_ntohs(ip6.payload_len) != len0 - ETH_HLEN - sizeof(ip6) && gso_size == 0)
			return TC_ACT_OK;
		__builtin_memcpy(from.b, &ip6.saddr, 16);
		__builtin_memcpy(to.b, &ip6.daddr, 16);
		l3 = sizeof(ip6);
	} else {
		return TC_ACT_OK;
	}
	__u32 outer = ETH_HLEN + l3 + sizeof(struct udphdr) + VXLAN_LEN + ETH_HLEN;
	struct {
		struct udphdr udp;
		__u32 vx_flags;
		__u32 vx_vni;
		struct ethhdr eth;
	} __attribute__((packed)) h;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + l3, &h, sizeof(h)))
		return TC_ACT_OK;
	// a valid VXLAN header: only the I flag, reserved bits zero
	if (h.vx_flags != bpf_htonl(0x08000000) || (h.vx_vni & bpf_htonl(0xff)))
		return TC_ACT_OK;
	struct peer_key pk = {.vni = bpf_ntohl(h.vx_vni) >> 8, .saddr = from};
	struct peer_val *p = bpf_map_lookup_elem(&PEERS, &pk);
	if (!p || p->dport != h.udp.dest || p->idx >= MAX_PEERS)
		return TC_ACT_OK;
	if (p->daddr.w[0] != to.w[0] || p->daddr.w[1] != to.w[1] || p->daddr.w[2] != to.w[2] || p->daddr.w[3] != to.w[3])
		return TC_ACT_OK;
	// A UDP checksum the kernel has not vouched for is the socket's to check. A super-packet's
	// is vouched for: built on this host (a veth carries it whole, checksums partial) or
	// merged by GRO, which checks every datagram it merges. A zero checksum is accepted over
	// IPv6 too: so does overlayd's socket (RFC 6935/6936).
	if (h.udp.check != 0 && gso_size == 0 && bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) < 0)
		return TC_ACT_OK;
	struct ethhdr eth = h.eth;
	if (eth.h_proto != bpf_htons(ETH_P_IP) && eth.h_proto != bpf_htons(ETH_P_IPV6))
		return TC_ACT_OK;
	// one VXLAN packet whose inner frame is segmented (SKB_GSO_UDP_TUNNEL), never a train of
	// datagrams coalesced for a socket with UDP_GRO (SKB_GSO_UDP_L4): there the first inner
	// frame is one segment long
	if (gso_size != 0 && inner_l3_len(skb, outer - ETH_HLEN, eth.h_proto) != len0 - outer)
		return TC_ACT_OK;
	if (is_multicast(eth.h_dest) || is_multicast(eth.h_source) || is_zero(eth.h_source))
		return TC_ACT_OK;
	if (!fits_mtu(skb, len0, gso_size, outer - ETH_HLEN, eth.h_proto, p->mtu))
		return TC_ACT_OK;
	if (is_nd(skb, outer, eth.h_proto) || is_dhcp(skb, outer, eth.h_proto))
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
	__u32 hdrs = seg_headers(skb, gso_size, outer - ETH_HLEN, eth.h_proto);
	__u64 inner_l3 = eth.h_proto == bpf_htons(ETH_P_IP) ? ADJ_ROOM_DECAP_L3_IPV4 : ADJ_ROOM_DECAP_L3_IPV6;
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | inner_l3;
	__s32 shrink = -(__s32)(outer - ETH_HLEN);
	// Kernels without ADJ_ROOM_DECAP_L4_UDP (before 6.19) cannot clear a super-packet's
	// tunnel GSO bits: it is delivered to the host behind the TAP with them, which its stack
	// ignores (the socket behind the underlay could not take it whole either: it would see one
	// datagram of many segments).
	if (bpf_skb_adjust_room(skb, shrink, BPF_ADJ_ROOM_MAC, flags | ADJ_ROOM_DECAP_L4_UDP) &&
	    bpf_skb_adjust_room(skb, shrink, BPF_ADJ_ROOM_MAC, flags))
		return TC_ACT_OK;
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
		return TC_ACT_SHOT;
	refresh(src);
	count(net, 6 + 4 * peer, segs);
	count(net, 7 + 4 * peer, len0 - ETH_HLEN - l3 - sizeof(struct udphdr) + (segs - 1) * (VXLAN_LEN + hdrs));
	count(net, 2, 1);
	count(net, 3, len0 - outer + ETH_HLEN);
	return bpf_redirect(tap, BPF_F_INGRESS);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
