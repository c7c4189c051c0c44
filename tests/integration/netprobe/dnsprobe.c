/* dnsprobe: one UDP exchange from inside a RUN step (compiled static by the DNS tests).
 *   dnsprobe udp HOST PORT HEX   send the bytes HEX to HOST:PORT (IPv4), wait 2 s for one
 *                                datagram back: "reply N bytes", "no reply: ERR" or
 *                                "failed: ERR" (the send itself was refused)
 *   dnsprobe tcp HOST PORT HEX   the same as one DNS message over TCP (a 2-byte length
 *                                before it): "reply N bytes" (the answer's length),
 *                                "no reply: ERR" or "failed: ERR" (no connection)
 * Every line starts with "probe udp|tcp HOST:PORT", so the tests can find it in the output. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int tcp(const char *host, const char *port, unsigned char *buf, size_t n) {
    struct sockaddr_in to = {0};
    unsigned char head[2];
    to.sin_family = AF_INET;
    to.sin_port = htons(atoi(port));
    if (inet_pton(AF_INET, host, &to.sin_addr) != 1) return 2;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {3, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&to, sizeof to) < 0) {
        printf("probe tcp %s:%s: failed: %s\n", host, port, strerror(errno));
        return 1;
    }
    errno = 0;
    head[0] = n >> 8;
    head[1] = n & 0xff;
    if (write(s, head, 2) != 2 || write(s, buf, n) != (ssize_t)n
            || recv(s, head, 2, MSG_WAITALL) != 2) {
        printf("probe tcp %s:%s: no reply: %s\n", host, port,
               errno ? strerror(errno) : "closed");
        return 1;
    }
    printf("probe tcp %s:%s: reply %d bytes\n", host, port, head[0] << 8 | head[1]);
    close(s);
    return 0;
}

int main(int argc, char **argv) {
    unsigned char buf[65536];
    if (argc != 5 || (strcmp(argv[1], "udp") != 0 && strcmp(argv[1], "tcp") != 0)) {
        fprintf(stderr, "usage: dnsprobe udp|tcp HOST PORT HEX\n");
        return 2;
    }
    size_t n = strlen(argv[4]) / 2;
    if (n > sizeof buf) return 2;
    for (size_t i = 0; i < n; i++) sscanf(argv[4] + 2 * i, "%2hhx", &buf[i]);
    if (strcmp(argv[1], "tcp") == 0) return tcp(argv[2], argv[3], buf, n);
    struct sockaddr_in to = {0};
    to.sin_family = AF_INET;
    to.sin_port = htons(atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &to.sin_addr) != 1) return 2;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct timeval tv = {2, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (sendto(s, buf, n, 0, (struct sockaddr *)&to, sizeof to) < 0) {
        printf("probe udp %s:%s: failed: %s\n", argv[2], argv[3], strerror(errno));
        return 1;
    }
    ssize_t got = recv(s, buf, sizeof buf, 0);
    if (got < 0) {
        printf("probe udp %s:%s: no reply: %s\n", argv[2], argv[3], strerror(errno));
        return 1;
    }
    printf("probe udp %s:%s: reply %zd bytes\n", argv[2], argv[3], got);
    close(s);
    return 0;
}
