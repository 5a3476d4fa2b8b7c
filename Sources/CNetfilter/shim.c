#include "CNetfilter.h"
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <time.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

struct mnl_socket *loupe_nfq_open(void) {
    /* Close-on-exec: the nft and iptables children the agent runs must not hold its queue. */
    struct mnl_socket *nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
    if (!nl) return NULL;
    if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
        int saved = errno;
        mnl_socket_close(nl);
        errno = saved;
        return NULL;
    }
    // A full socket buffer must not turn into an error on every later receive.
    int one = 1;
    mnl_socket_setsockopt(nl, NETLINK_NO_ENOBUFS, &one, sizeof one);
    return nl;
}

void loupe_nfq_close(struct mnl_socket *nl) { if (nl) mnl_socket_close(nl); }
int loupe_nfq_fd(struct mnl_socket *nl) { return mnl_socket_get_fd(nl); }

static int send_and_ack(struct mnl_socket *nl, struct nlmsghdr *nlh) {
    nlh->nlmsg_flags |= NLM_F_ACK;
    nlh->nlmsg_seq = (uint32_t)time(NULL);
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) return -errno;
    char buf[MNL_SOCKET_BUFFER_SIZE];
    ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof buf);
    if (n < 0) return -errno;
    if (mnl_cb_run(buf, (size_t)n, nlh->nlmsg_seq, mnl_socket_get_portid(nl), NULL, NULL) < 0) return -errno;
    return 0;
}

int loupe_nfq_configure(struct mnl_socket *nl, uint16_t queue, uint32_t copy_range, uint32_t flags, uint32_t maxlen) {
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_BIND);
    int rc = send_and_ack(nl, nlh);
    if (rc < 0) return rc;
    nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, (int)copy_range);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, maxlen);
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_UID_GID));
    return send_and_ack(nl, nlh);
}

ssize_t loupe_nfq_receive(struct mnl_socket *nl, void *buf, size_t len) {
    ssize_t n = mnl_socket_recvfrom(nl, buf, len);
    return n < 0 ? -errno : n;
}

int loupe_nfq_parse(const void *buf, size_t len, loupe_nfq_packet *out, int max) {
    int count = 0;
    const struct nlmsghdr *nlh = buf;
    int remaining = (int)len;
    while (count < max && mnl_nlmsg_ok(nlh, remaining)) {
        if (nlh->nlmsg_type == ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)) {
            struct nlattr *attr[NFQA_MAX + 1] = {0};
            if (nfq_nlmsg_parse(nlh, attr) >= 0 && attr[NFQA_PACKET_HDR]) {
                const struct nfgenmsg *nfg = mnl_nlmsg_get_payload(nlh);
                const struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
                loupe_nfq_packet *p = &out[count++];
                memset(p, 0, sizeof *p);
                p->id = ntohl(ph->packet_id);
                p->queue = ntohs(nfg->res_id);
                p->hw_protocol = ntohs(ph->hw_protocol);
                p->hook = ph->hook;
                if (attr[NFQA_MARK]) { p->has_mark = 1; p->mark = ntohl(mnl_attr_get_u32(attr[NFQA_MARK])); }
                if (attr[NFQA_UID]) { p->has_uid = 1; p->uid = ntohl(mnl_attr_get_u32(attr[NFQA_UID])); }
                if (attr[NFQA_GID]) { p->has_gid = 1; p->gid = ntohl(mnl_attr_get_u32(attr[NFQA_GID])); }
                if (attr[NFQA_PAYLOAD]) {
                    p->payload = mnl_attr_get_payload(attr[NFQA_PAYLOAD]);
                    p->payload_len = mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]);
                }
            }
        }
        nlh = mnl_nlmsg_next(nlh, &remaining);
    }
    return count;
}

size_t loupe_nfq_put_verdict(void *buf, size_t cap, uint16_t queue, uint32_t id, uint32_t verdict, int set_mark, uint32_t mark) {
    // Header + verdict attribute + mark attribute, each aligned: well under 64 bytes.
    if (cap < 64) return 0;
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_VERDICT, queue);
    nfq_nlmsg_verdict_put(nlh, (int)id, (int)verdict);
    if (set_mark) nfq_nlmsg_verdict_put_mark(nlh, mark);
    return MNL_ALIGN(nlh->nlmsg_len);
}

ssize_t loupe_nfq_send(struct mnl_socket *nl, const void *buf, size_t len) {
    ssize_t n = mnl_socket_sendto(nl, buf, len);
    return n < 0 ? -errno : n;
}

#include <linux/inet_diag.h>
#include <linux/sock_diag.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int loupe_sock_diag_lookup(int family, int protocol, const uint8_t *src, uint16_t sport,
                           const uint8_t *dst, uint16_t dport, uint64_t *inode) {
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return -errno;
    // The kernel answers at once; the timeout only guards against a reply that never comes.
    struct timeval timeout = { .tv_sec = 0, .tv_usec = 100000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    struct { struct nlmsghdr nlh; struct inet_diag_req_v2 req; } msg;
    memset(&msg, 0, sizeof msg);
    msg.nlh.nlmsg_len = sizeof msg;
    msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.nlh.nlmsg_flags = NLM_F_REQUEST;
    msg.req.sdiag_family = (uint8_t)family;
    msg.req.sdiag_protocol = (uint8_t)protocol;
    msg.req.idiag_states = ~0U;
    // TCP looks the socket up with idiag_src as the local end; UDP, "for historical reasons"
    // (net/ipv4/udp_diag.c), as a received datagram would be: idiag_src is the remote end.
    int swapped = protocol == IPPROTO_UDP;
    msg.req.id.idiag_sport = htons(swapped ? dport : sport);
    msg.req.id.idiag_dport = htons(swapped ? sport : dport);
    size_t length = family == AF_INET ? 4 : 16;
    memcpy(msg.req.id.idiag_src, swapped ? dst : src, length);
    memcpy(msg.req.id.idiag_dst, swapped ? src : dst, length);
    msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
    msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    if (sendto(fd, &msg, sizeof msg, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    union { struct nlmsghdr h; char bytes[8192]; } reply;
    ssize_t n = recv(fd, &reply, sizeof reply, 0);
    int saved = errno;
    close(fd);
    if (n < 0) return -saved;
    struct nlmsghdr *h = &reply.h;
    if (!NLMSG_OK(h, (size_t)n)) return -EIO;
    if (h->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *error = NLMSG_DATA(h);
        return error->error < 0 ? error->error : -ENOENT;
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) return -EIO;
    struct inet_diag_msg *found = NLMSG_DATA(h);
    *inode = found->idiag_inode;
    return 0;
}
