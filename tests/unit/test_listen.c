/* Unit tests: the listeners' sockets (kmsd/api/listen.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "api/listen.h"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/qkms-listen-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rmdir(dir);
}

static void path_in(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", dir, name);
}

static int connect_to(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0), rc;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    close(fd);
    return rc;
}

static void tcp_addresses(void **state)
{
    struct sockaddr_storage ss;
    bool v6 = true;
    (void)state;
    assert_int_equal(listen_tcp_addr("127.0.0.1", 8470, &ss, &v6), 0);
    assert_false(v6);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 8470);
    assert_int_equal(listen_tcp_addr("::1", 8471, &ss, &v6), 0);
    assert_true(v6);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 8471);
    /* Never a host name: a listener's address is not looked up. */
    assert_int_equal(listen_tcp_addr("localhost", 1, &ss, &v6), -1);
    assert_int_equal(listen_tcp_addr("", 1, &ss, &v6), -1);
    assert_int_equal(listen_tcp_addr(NULL, 1, &ss, &v6), -1);
}

static void unix_socket_lifecycle(void **state)
{
    char path[128], err[256];
    listen_unix_id id;
    struct stat st;
    int fd;
    (void)state;
    path_in(path, sizeof(path), "admin.sock");
    fd = listen_unix_open(path, &id, err, sizeof(err));
    assert_true(fd >= 0);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0660);
    assert_int_equal(connect_to(path), 0);
    {
        /* The socket was made under a temporary name and renamed onto
         * path listening: nothing of it is left behind. */
        char tmp[160];
        snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid());
        assert_int_equal(lstat(tmp, &st), -1);
        assert_int_equal(lstat(path, &st), 0);
    }
    /* Someone listens: a second kmsd is refused, the socket left alone. */
    assert_int_equal(listen_unix_open(path, &id, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "another process listens on it"));
    /* Closed without removal (a killed kmsd): the stale socket is replaced. */
    close(fd);
    assert_int_equal(lstat(path, &st), 0);
    fd = listen_unix_open(path, &id, err, sizeof(err));
    assert_true(fd >= 0);
    assert_int_equal(connect_to(path), 0);
    close(fd);
    listen_unix_remove(path, &id);
    assert_int_equal(lstat(path, &st), -1);
}

static void unix_socket_refuses_other_files(void **state)
{
    char path[128], err[256];
    listen_unix_id id;
    FILE *f;
    (void)state;
    path_in(path, sizeof(path), "regular");
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("keep me\n", f);
    fclose(f);
    assert_int_equal(listen_unix_open(path, &id, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "is not a socket; not replaced"));
    assert_int_equal(access(path, F_OK), 0);
    unlink(path);
    /* A path too long for sun_path. */
    char longp[200];
    memset(longp, 'x', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = 0;
    assert_int_equal(listen_unix_open(longp, &id, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "too long"));
}

static void remove_only_our_socket(void **state)
{
    char path[128], err[256];
    listen_unix_id id, other;
    struct stat st;
    int fd, fd2;
    (void)state;
    path_in(path, sizeof(path), "mine.sock");
    fd = listen_unix_open(path, &id, err, sizeof(err));
    assert_true(fd >= 0);
    close(fd);
    /* Another process replaced it meanwhile: not ours to remove. */
    fd2 = listen_unix_open(path, &other, err, sizeof(err));
    assert_true(fd2 >= 0);
    listen_unix_remove(path, &id);
    assert_int_equal(lstat(path, &st), 0);
    close(fd2);
    listen_unix_remove(path, &other);
    assert_int_equal(lstat(path, &st), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tcp_addresses),
        cmocka_unit_test(unix_socket_lifecycle),
        cmocka_unit_test(unix_socket_refuses_other_files),
        cmocka_unit_test(remove_only_our_socket),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
