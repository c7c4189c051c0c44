/* netprobe: one network check from inside a RUN step (compiled static by the tests).
 *   netprobe tcp HOST PORT      connect (3 s); "connected" (exit 0) or "failed: ERR" (1)
 *   netprobe abstract NAME      connect to the abstract unix socket "\0NAME"
 *   netprobe packet             open an AF_PACKET socket (needs CAP_NET_RAW)
 *   netprobe route HOST         UDP connect (sends nothing): prints the source address
 *   netprobe loopback           listen on 127.0.0.1, connect, pass one byte
 * Every line starts with the check's name, so the tests can find it in the build output. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/if_ether.h>

static int report(const char *what, const char *arg, int err) {
    if (err == 0) { printf("probe %s %s: connected\n", what, arg); return 0; }
    printf("probe %s %s: failed: %s\n", what, arg, strerror(err));
    return 1;
}

static int tcp(const char *host, const char *port) {
    struct sockaddr_in v4 = {0};
    struct sockaddr_in6 v6 = {0};
    struct sockaddr *sa = (struct sockaddr *)&v4;
    socklen_t salen = sizeof v4;
    if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons(atoi(port));
    } else if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons(atoi(port));
        sa = (struct sockaddr *)&v6;
        salen = sizeof v6;
    } else {
        printf("probe tcp %s: bad address\n", host);
        return 2;
    }
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int err = 0;
    if (connect(fd, sa, salen) != 0) {
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd p = {fd, POLLOUT, 0};
            if (poll(&p, 1, 3000) == 1) {
                socklen_t len = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            } else {
                err = ETIMEDOUT;
            }
        }
    }
    char label[300];
    snprintf(label, sizeof label, "%s:%s", host, port);
    return report("tcp", label, err);
}

static int abstract(const char *name) {
    struct sockaddr_un sa = {0};
    sa.sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (n > sizeof sa.sun_path - 2) n = sizeof sa.sun_path - 2;
    memcpy(sa.sun_path + 1, name, n);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    int err = connect(fd, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + 1 + n)
        == 0 ? 0 : errno;
    return report("abstract", name, err);
}

static int packet(void) {
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    return report("packet", "socket", fd >= 0 ? 0 : errno);
}

static int route(const char *host) {
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(53);
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) return report("route", host, errno);
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &len);
    char buf[INET_ADDRSTRLEN];
    printf("probe route %s: via %s\n", host, inet_ntop(AF_INET, &me.sin_addr, buf, sizeof buf));
    return 0;
}

static int loopback(void) {
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (bind(srv, (struct sockaddr *)&sa, sizeof sa) || listen(srv, 1) ||
        getsockname(srv, (struct sockaddr *)&sa, &len))
        return report("loopback", "listen", errno);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&sa, sizeof sa)) return report("loopback", "connect", errno);
    int a = accept(srv, NULL, NULL);
    char byte = 'x', got = 0;
    if (a < 0 || write(c, &byte, 1) != 1 || read(a, &got, 1) != 1 || got != 'x')
        return report("loopback", "echo", errno ? errno : EIO);
    return report("loopback", "127.0.0.1", 0);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && !strcmp(argv[1], "tcp")) return tcp(argv[2], argv[3]);
    if (argc == 3 && !strcmp(argv[1], "abstract")) return abstract(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "packet")) return packet();
    if (argc == 3 && !strcmp(argv[1], "route")) return route(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "loopback")) return loopback();
    fprintf(stderr, "usage: netprobe tcp HOST PORT | abstract NAME | packet | route HOST | loopback\n");
    return 2;
}
