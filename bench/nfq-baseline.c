// The reference for DESIGN.md's queue target: a minimal batched C consumer (libmnl +
// libnetfilter_queue) that accepts every packet, up to 64 verdicts per sendto. Prints the rate
// from its first packet to its N-th.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <poll.h>
#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

static uint32_t ids[64];
static int count;

static int on_packet(const struct nlmsghdr *nlh, void *data) {
    struct nlattr *attr[NFQA_MAX + 1] = {0};
    if (nfq_nlmsg_parse(nlh, attr) < 0 || !attr[NFQA_PACKET_HDR]) return MNL_CB_OK;
    struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
    if (count < 64) ids[count++] = ntohl(ph->packet_id);
    return MNL_CB_OK;
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: nfq-baseline QUEUE N\n"); return 2; }
    uint16_t queue = (uint16_t)atoi(argv[1]);
    long n = atol(argv[2]);
    struct mnl_socket *nl = mnl_socket_open(NETLINK_NETFILTER);
    if (!nl || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) { perror("netlink"); return 1; }
    int one = 1; mnl_socket_setsockopt(nl, NETLINK_NO_ENOBUFS, &one, sizeof one);
    static char buf[0x10000 + 4096];
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, NFQNL_CFG_CMD_BIND);
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) { perror("bind"); return 1; }
    nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue);
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 128);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, 65536);
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(NFQA_CFG_F_FAIL_OPEN));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_FAIL_OPEN));
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) { perror("config"); return 1; }
    int size = 8 << 20; setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    fprintf(stderr, "ready\n");
    long done = 0; double start = 0;
    static char out[64 * 64];
    while (done < n) {
        struct pollfd p = { .fd = mnl_socket_get_fd(nl), .events = POLLIN };
        if (poll(&p, 1, 5000) <= 0) break;
        count = 0;
        for (;;) {
            ssize_t r = recv(p.fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r <= 0) break;
            mnl_cb_run(buf, r, 0, 0, on_packet, NULL);
            if (count >= 64) break;
        }
        if (count && !start) start = now();
        size_t len = 0;
        for (int i = 0; i < count; i++) {
            struct nlmsghdr *v = nfq_nlmsg_put(out + len, NFQNL_MSG_VERDICT, queue);
            nfq_nlmsg_verdict_put(v, ids[i], NF_ACCEPT);
            len += MNL_ALIGN(v->nlmsg_len);
        }
        if (len) mnl_socket_sendto(nl, out, len);
        done += count;
    }
    double elapsed = now() - start;
    printf("%ld %.6f\n", done, elapsed);
    return 0;
}
