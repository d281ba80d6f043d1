/* fileio — bounded reads, exclusive 0600 writes; see fileio.h. */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "exitcodes.h"
#include "hexutil.h"
#include "output.h"

int file_read(const char *what, const char *path, size_t max, char **data, size_t *len)
{
    struct stat st;
    char *buf = NULL;
    size_t n = 0;
    int rc = EXIT_USAGE;
    /* O_NONBLOCK: a FIFO must not hang us before S_ISREG rejects it. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

    *data = NULL;
    *len = 0;
    if (fd < 0 || fstat(fd, &st) != 0) {
        out_error("cannot read %s %s: %s", what, out_safe(path), strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        out_error("%s %s is not a regular file", what, out_safe(path));
        goto cleanup;
    }
    if ((unsigned long long)st.st_size > max) {
        out_error("%s %s is larger than %zu bytes", what, out_safe(path), max);
        goto cleanup;
    }
    /* One byte more than allowed shows a file that grew since fstat. */
    if (!(buf = malloc(max + 2))) {
        out_error("out of memory");
        rc = EXIT_INTERNAL;
        goto cleanup;
    }
    for (;;) {
        ssize_t got = read(fd, buf + n, max + 1 - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            out_error("cannot read %s %s: %s", what, out_safe(path), strerror(errno));
            goto cleanup;
        }
        if (got == 0)
            break;
        n += (size_t)got;
        if (n > max) {
            out_error("%s %s is larger than %zu bytes", what, out_safe(path), max);
            goto cleanup;
        }
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    buf = NULL;
    rc = EXIT_OK;

cleanup:
    if (buf) {
        explicit_bzero(buf, n);
        free(buf);
    }
    if (fd >= 0)
        close(fd);
    return rc;
}

int file_create_new(const char *what, const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    if (errno == EEXIST)
        out_error("%s %s exists; refusing to overwrite it", what, out_safe(path));
    else
        out_error("cannot create %s %s: %s", what, out_safe(path), strerror(errno));
    return -1;
}

int file_write_close(int fd, const char *path, const void *buf, size_t len)
{
    const char *p = buf;
    int rc = EXIT_INTERNAL;
    while (len > 0) {
        ssize_t put = write(fd, p, len);
        if (put < 0 && errno == EINTR)
            continue;
        if (put < 0)
            goto fail;
        p += put;
        len -= (size_t)put;
    }
    /* Report success only once the bytes are on disk. */
    if (fsync(fd) != 0)
        goto fail;
    rc = EXIT_OK;
fail:
    if (rc)
        out_error("cannot write %s: %s", out_safe(path), strerror(errno));
    if (close(fd) != 0 && rc == EXIT_OK) {
        out_error("cannot write %s: %s", out_safe(path), strerror(errno));
        rc = EXIT_INTERNAL;
    }
    return rc;
}

void file_discard(int fd, const char *path)
{
    if (fd >= 0)
        close(fd);
    unlink(path);
}

int file_sha256(const char *what, const char *path, char hex[65], unsigned long long *size)
{
    FILE *f = fopen(path, "rb");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char buf[65536], dig[32];
    unsigned long long total = 0;
    size_t n;
    int rc = EXIT_INTERNAL;

    if (!f) {
        out_error("%s (%s): %s", out_safe(path), what, strerror(errno));
        EVP_MD_CTX_free(md);
        return EXIT_USAGE;
    }
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        goto out;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        if (EVP_DigestUpdate(md, buf, n) != 1)
            goto out;
        total += n;
    }
    if (ferror(f)) {
        out_error("%s: %s", out_safe(path), strerror(errno));
        rc = EXIT_USAGE;
        goto out;
    }
    if (EVP_DigestFinal_ex(md, dig, NULL) != 1)
        goto out;
    qkms_hex_encode(dig, 32, hex);
    if (size)
        *size = total;
    rc = EXIT_OK;
out:
    EVP_MD_CTX_free(md);
    fclose(f);
    return rc;
}
