/* A by-hand latency probe at concurrency 1, timed to the ns (wrk keeps whole µs).
 *
 *   cc -O2 -o /tmp/c1 benches/load/c1.c
 *   taskset -c 0 /tmp/c1 127.0.0.1 PORT SECONDS
 *   taskset -c 0 /tmp/c1 unix:/path/to/proxy.sock - SECONDS    # a Unix socket (Host: localhost)
 *
 * One keep-alive connection (opened again when the server closes it, as nginx does after
 * `keepalive_requests`), `GET /x` with `User-Agent` and `Accept` as the load harness sends it,
 * the next request once the whole answer (its head and a `Content-Length` body) is in. The
 * first 200 ms are not counted. Prints the reconnections, the requests counted, p10, p25, p50,
 * p75, p90, p95, p99 and the mean in µs. Run it beside the proxy and the origin on the same
 * CPU, as the harness's latency run does (README, Performance).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

/* Where to connect: an IPv4 address and port, or a Unix socket's path. */
static struct sockaddr_storage target;
static socklen_t target_len;

static int open_connection(void) {
    int fd = socket(target.ss_family, SOCK_STREAM, 0), one = 1;
    if (fd < 0 || connect(fd, (const struct sockaddr *)&target, target_len) != 0) {
        perror("connect");
        exit(1);
    }
    if (target.ss_family == AF_INET)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s HOST PORT SECONDS\n       %s unix:PATH - SECONDS\n", argv[0], argv[0]);
        return 2;
    }
    char host[128];
    if (strncmp(argv[1], "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&target;
        if (strlen(argv[1] + 5) >= sizeof un->sun_path) {
            fprintf(stderr, "socket path too long: %s\n", argv[1] + 5);
            return 2;
        }
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, argv[1] + 5);
        target_len = sizeof *un;
        snprintf(host, sizeof host, "localhost");
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&target;
        in->sin_family = AF_INET;
        in->sin_port = htons(atoi(argv[2]));
        if (inet_pton(AF_INET, argv[1], &in->sin_addr) != 1) {
            fprintf(stderr, "not an IPv4 address: %s\n", argv[1]);
            return 2;
        }
        target_len = sizeof *in;
        snprintf(host, sizeof host, "%s:%s", argv[1], argv[2]);
    }
    char req[256];
    int req_len =
        snprintf(req, sizeof req, "GET /x HTTP/1.1\r\nHost: %s\r\nUser-Agent: load\r\nAccept: */*\r\n\r\n", host);
    long cap = 8000000, n = 0, reconnects = 0;
    long *lat = malloc(cap * sizeof *lat);
    static char buf[65536];
    long start = now_ns(), end = start + (long)(atof(argv[3]) * 1e9), warm = start + 200000000L;
    int fd = open_connection();
    while (n < cap) {
        long t0 = now_ns();
        if (t0 > end)
            break;
        if (send(fd, req, req_len, 0) != req_len) {
            perror("send");
            return 1;
        }
        long got = 0, need = -1;
        for (;;) {
            ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
            if (r <= 0 && got == 0) { /* closed between answers: again on a new connection */
                close(fd);
                fd = open_connection();
                reconnects++;
                goto next;
            }
            if (r <= 0) {
                fprintf(stderr, "the connection ended within an answer\n");
                return 1;
            }
            got += r;
            buf[got] = 0;
            char *head_end = strstr(buf, "\r\n\r\n");
            if (!head_end)
                continue;
            if (need < 0) {
                char *cl = strcasestr(buf, "\r\ncontent-length:");
                if (!cl || cl > head_end) {
                    fprintf(stderr, "an answer without Content-Length\n");
                    return 1;
                }
                need = (head_end + 4 - buf) + atol(cl + 17);
            }
            if (got >= need)
                break;
        }
        if (t0 > warm)
            lat[n++] = now_ns() - t0;
    next:;
    }
    if (n == 0) {
        fprintf(stderr, "no request counted\n");
        return 1;
    }
    qsort(lat, n, sizeof *lat, by_value);
    double sum = 0;
    for (long i = 0; i < n; i++)
        sum += lat[i];
    printf("reconnects %ld n %ld p10 %.2f p25 %.2f p50 %.2f p75 %.2f p90 %.2f p95 %.2f p99 %.2f mean %.2f\n", reconnects, n,
           lat[n / 10] / 1e3, lat[n / 4] / 1e3, lat[n / 2] / 1e3, lat[n * 3 / 4] / 1e3, lat[n * 9 / 10] / 1e3,
           lat[n * 95 / 100] / 1e3, lat[n * 99 / 100] / 1e3, sum / n / 1e3);
    return 0;
}
