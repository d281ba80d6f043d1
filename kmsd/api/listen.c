/*
 * listen — owns the listening sockets' set-up that libmicrohttpd does not
 * do for kmsd: parsing a listener's TCP address, and the admin unix socket
 * (stale-socket replacement, permissions, removal at stop). It owns no
 * socket after returning one: the MHD daemon closes it.
 */
#include "api/listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define LISTEN_BACKLOG 1024
#define UNIX_SOCKET_MODE 0660

int listen_tcp_addr(const char *addr, int port, struct sockaddr_storage *ss, bool *ipv6)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    *ipv6 = false;
    if (addr && inet_pton(AF_INET, addr, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (addr && inet_pton(AF_INET6, addr, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *ipv6 = true;
        return 0;
    }
    return -1;
}

static int unix_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path))
        return -1;
    memcpy(sa->sun_path, path, strlen(path));
    return 0;
}

/* What is at path already: 0 when path is free (nothing there, or a socket
 * no one listens on, now removed), -1 with err otherwise. */
static int clear_stale(const char *path, const struct sockaddr_un *sa, char *err, size_t el)
{
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, el, "admin_listen_unix %s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, el, "admin_listen_unix %s exists and is not a socket; not replaced", path);
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, el, "admin_listen_unix: socket: %s", strerror(errno));
        return -1;
    }
    rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    close(fd);
    if (rc == 0) {
        snprintf(err, el, "admin_listen_unix %s: another process listens on it", path);
        return -1;
    }
    if (errno != ECONNREFUSED) {
        snprintf(err, el, "admin_listen_unix %s: %s", path, strerror(errno));
        return -1;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        snprintf(err, el, "admin_listen_unix %s: cannot remove the stale socket: %s", path,
                 strerror(errno));
        return -1;
    }
    return 0;
}

int listen_unix_open(const char *path, listen_unix_id *id, char *err, size_t el)
{
    struct sockaddr_un sa, tsa;
    struct stat tst, st;
    char tmp[sizeof(sa.sun_path) + 32];
    int fd = -1;

    if (unix_addr(path, &sa) != 0) {
        snprintf(err, el, "admin_listen_unix %s: path too long for a unix socket", path);
        return -1;
    }
    /* The socket is made under a temporary name in the same directory,
     * given its mode and put to listening there, then renamed onto path:
     * at path there is never a socket that is bound but not listening yet,
     * which another kmsd starting at the same time would take for a stale
     * one and remove. */
    snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid());
    if (unix_addr(tmp, &tsa) != 0) {
        snprintf(err, el, "admin_listen_unix %s: path too long for a unix socket", path);
        return -1;
    }
    if (clear_stale(path, &sa, err, el) != 0)
        return -1;
    unlink(tmp); /* left by a killed kmsd of the same pid */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, el, "admin_listen_unix: socket: %s", strerror(errno));
        return -1;
    }
    if (bind(fd, (const struct sockaddr *)&tsa, sizeof(tsa)) != 0) {
        snprintf(err, el, "cannot bind admin_listen_unix %s: %s", path, strerror(errno));
        goto fail;
    }
    /* Before listen(): until then a connect is refused, so the umask's
     * mode never lets anyone in. */
    if (chmod(tmp, UNIX_SOCKET_MODE) != 0 || lstat(tmp, &tst) != 0) {
        snprintf(err, el, "admin_listen_unix %s: %s", path, strerror(errno));
        goto fail_unlink;
    }
    if (listen(fd, LISTEN_BACKLOG) != 0) {
        snprintf(err, el, "cannot listen on admin_listen_unix %s: %s", path, strerror(errno));
        goto fail_unlink;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, el, "admin_listen_unix %s: %s", path, strerror(errno));
        goto fail_unlink;
    }
    /* rename changes the inode's ctime: read the identity at path, and make
     * sure it is still ours. */
    if (lstat(path, &st) != 0 || st.st_dev != tst.st_dev || st.st_ino != tst.st_ino) {
        snprintf(err, el, "admin_listen_unix %s: replaced by another process while starting",
                 path);
        goto fail;
    }
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    id->ctime = st.st_ctim;
    return fd;
fail_unlink:
    unlink(tmp);
fail:
    close(fd);
    return -1;
}

void listen_unix_remove(const char *path, const listen_unix_id *id)
{
    struct stat st;
    if (path && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == id->dev &&
        st.st_ino == id->ino && st.st_ctim.tv_sec == id->ctime.tv_sec &&
        st.st_ctim.tv_nsec == id->ctime.tv_nsec)
        unlink(path);
}
