// The floor for bench-proxy: a TCP relay that only copies bytes (no TLS termination, no
// parsing), a blocking thread per direction — the fewest steps an extra hop on loopback can
// take. `tcp-relay LISTEN_PORT UPSTREAM_PORT` (both on 127.0.0.1).
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

struct connection { int client, upstream; atomic_int directions; };
struct direction { struct connection *connection; int from, to; };

static void *pump(void *argument) {
    struct direction *d = argument;
    char buffer[65536];
    ssize_t n;
    while ((n = read(d->from, buffer, sizeof buffer)) > 0) {
        for (ssize_t sent = 0; sent < n;) {
            ssize_t w = send(d->to, buffer + sent, n - sent, MSG_NOSIGNAL);  // a peer gone: EPIPE, not a signal
            if (w <= 0) goto done;
            sent += w;
        }
    }
done:
    shutdown(d->to, SHUT_WR);  // half-close passes on
    struct connection *c = d->connection;
    free(d);
    if (atomic_fetch_sub(&c->directions, 1) == 1) { close(c->client); close(c->upstream); free(c); }
    return NULL;
}

static void start(struct connection *c, int from, int to) {
    struct direction *d = malloc(sizeof *d);
    *d = (struct direction){ c, from, to };
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attributes, 256 * 1024);
    pthread_t thread;
    if (pthread_create(&thread, &attributes, pump, d) != 0) { perror("pthread_create"); exit(1); }
    pthread_attr_destroy(&attributes);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: tcp-relay LISTEN_PORT UPSTREAM_PORT\n"); return 2; }
    int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in here = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    inet_pton(AF_INET, "127.0.0.1", &here.sin_addr);
    struct sockaddr_in there = here;
    there.sin_port = htons(atoi(argv[2]));
    if (bind(listener, (struct sockaddr *)&here, sizeof here) || listen(listener, 512)) { perror("listen"); return 1; }
    for (;;) {
        int client = accept(listener, NULL, NULL);
        if (client < 0) continue;
        int upstream = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(upstream, (struct sockaddr *)&there, sizeof there)) { close(client); close(upstream); continue; }
        setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct connection *c = malloc(sizeof *c);
        c->client = client;
        c->upstream = upstream;
        atomic_init(&c->directions, 2);
        start(c, client, upstream);
        start(c, upstream, client);
    }
}
