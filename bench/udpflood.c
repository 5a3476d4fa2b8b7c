// Sends N UDP datagrams from one socket to DST, each to another destination port, so every
// datagram is the first packet of a new flow (a new conntrack entry): the queue's worst case.
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: udpflood DST_IPV4 N\n"); return 2; }
    long n = atol(argv[2]);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in dst = { .sin_family = AF_INET };
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    char payload[16] = "loupe-bench";
    for (long i = 0; i < n; i++) {
        dst.sin_port = htons((uint16_t)(1024 + i % 60000));
        // Every 60,000 datagrams the ports repeat: those flows are already decided.
        if (sendto(fd, payload, sizeof payload, 0, (struct sockaddr *)&dst, sizeof dst) < 0) { perror("sendto"); return 1; }
    }
    close(fd);
    return 0;
}
