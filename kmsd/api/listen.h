/*
 * listen — the sockets kmsd's HTTP listeners serve on: a TCP address
 * (listen_addr, admin_listen_addr) and the admin unix socket
 * (admin_listen_unix). server.c hands them to libmicrohttpd.
 *
 * Contract:
 *  - listen_tcp_addr() parses an IPv4 or IPv6 literal (no host names: a
 *    listener's address is never looked up) and port into *ss.
 *  - listen_unix_open() returns a listening unix stream socket bound at
 *    path, mode 0660 (set before it listens, so no client ever connects
 *    while it is wider), close-on-exec. What is at path decides: nothing is
 *    fine; a socket nobody answers on (a kmsd that stopped without removing
 *    it) is replaced; a socket another process listens on, or any other kind
 *    of file, is refused and left alone. *id identifies the socket file it
 *    created, for listen_unix_remove().
 *  - listen_unix_remove() removes path only if it is still the file *id
 *    names (another process may have replaced it since).
 *  - Errors fill err with a sentence naming the path or address; -1.
 */
#ifndef QKMS_LISTEN_H
#define QKMS_LISTEN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

/* The socket file kmsd made: device, inode and change time (an inode
 * number alone may be reused by a file made after ours was removed). */
typedef struct {
    dev_t dev;
    ino_t ino;
    struct timespec ctime;
} listen_unix_id;

/* 0, or -1 when addr is not an IPv4 or IPv6 address. *ipv6 says which. */
int listen_tcp_addr(const char *addr, int port, struct sockaddr_storage *ss, bool *ipv6);
/* The listening socket (backlog 1024), or -1 with err. */
int listen_unix_open(const char *path, listen_unix_id *id, char *err, size_t errlen);
void listen_unix_remove(const char *path, const listen_unix_id *id);

#endif
