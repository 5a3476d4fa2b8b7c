// One Clang module for libmnl and libnetfilter_queue (two module maps reaching the nfnetlink
// headers clash, see FACTS.md), plus thin shims: the Swift side never walks netlink attributes.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct mnl_socket;

/// One queued packet, as far as the flow handler needs it. `payload` points into the buffer
/// given to loupe_nfq_parse and is valid as long as that buffer is.
typedef struct {
    uint32_t id;
    uint16_t queue;
    uint16_t hw_protocol;   // host order: 0x0800 IPv4, 0x86DD IPv6
    uint8_t hook;
    uint8_t has_uid;
    uint8_t has_gid;
    uint8_t has_mark;
    uint32_t mark;
    uint32_t uid;
    uint32_t gid;
    const uint8_t *payload;
    uint32_t payload_len;
} loupe_nfq_packet;

/// Opens and binds a netfilter netlink socket; NULL and errno on failure.
struct mnl_socket *loupe_nfq_open(void);
void loupe_nfq_close(struct mnl_socket *nl);
int loupe_nfq_fd(struct mnl_socket *nl);

/// Binds `queue` to this socket with copy mode packet (`copy_range` bytes), the given
/// NFQA_CFG_F_* flags and maximum length. Returns 0, or -errno (EBUSY: another process owns it).
int loupe_nfq_configure(struct mnl_socket *nl, uint16_t queue, uint32_t copy_range, uint32_t flags, uint32_t maxlen);

/// Blocking receive of one datagram (may hold several packets); -errno on failure.
ssize_t loupe_nfq_receive(struct mnl_socket *nl, void *buf, size_t len);

/// Splits a received datagram into packets; returns how many were written to `out` (≤ max).
int loupe_nfq_parse(const void *buf, size_t len, loupe_nfq_packet *out, int max);

/// Appends one verdict message at `buf` (capacity `cap`); returns its aligned length or 0 when
/// it does not fit. Several may be sent in one datagram.
size_t loupe_nfq_put_verdict(void *buf, size_t cap, uint16_t queue, uint32_t id, uint32_t verdict, int set_mark, uint32_t mark);

/// Sends `len` bytes of verdict messages; -errno on failure.
ssize_t loupe_nfq_send(struct mnl_socket *nl, const void *buf, size_t len);

/// NFQA_CFG_F_* and verdict values, re-exported because Swift cannot see all of them.
enum {
    LOUPE_NFQA_CFG_F_FAIL_OPEN = 1 << 0,
    LOUPE_NFQA_CFG_F_UID_GID = 1 << 3,
    LOUPE_NF_DROP = 0,
    LOUPE_NF_ACCEPT = 1,
};

/// The socket owning a flow (sock_diag, NETLINK_SOCK_DIAG): one exact lookup by 5-tuple
/// instead of reading /proc/net's whole tables. `family` AF_INET/AF_INET6, `protocol`
/// IPPROTO_TCP/UDP, addresses in network order (4 or 16 bytes), ports in host order; `src` is
/// the local end. 0 with the socket's inode, or a negative errno (-ENOENT: none).
int loupe_sock_diag_lookup(int family, int protocol, const uint8_t *src, uint16_t sport,
                           const uint8_t *dst, uint16_t dport, uint64_t *inode);
