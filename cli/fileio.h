/*
 * fileio — the local files kmsctl reads (keys, packages) and writes (fill
 * output). Messages name the file and `what` it is for, never its content.
 *
 * Files kmsctl writes hold key material, so they are created new with mode
 * 0600 (O_CREAT|O_EXCL|O_NOFOLLOW: an existing file or symlink is never
 * followed or overwritten), fully written and fsync'ed before success is
 * reported, and removed again if anything fails after creation.
 */
#ifndef KMSCTL_FILEIO_H
#define KMSCTL_FILEIO_H
#include <stddef.h>

/*
 * Reads the regular file at path, at most max bytes, into a heap buffer
 * with a NUL after the data (*len excludes it). Returns EXIT_OK, EXIT_USAGE
 * (cannot open or read, not a regular file, larger than max) or
 * EXIT_INTERNAL, after reporting. Buffers that held secrets should be
 * wiped with explicit_bzero(*data, *len) before free.
 */
int file_read(const char *what, const char *path, size_t max, char **data, size_t *len);

/* Creates path as described above. Returns the descriptor, or -1 after
 * reporting (the caller exits with EXIT_USAGE: nothing was sent yet). */
int file_create_new(const char *what, const char *path);

/* Writes all of buf to fd, fsyncs and closes it. EXIT_OK, or EXIT_INTERNAL
 * after reporting; either way fd is closed. */
int file_write_close(int fd, const char *path, const void *buf, size_t len);

/* After a failure: closes fd (if >= 0) and removes path, which the caller
 * created with file_create_new. */
void file_discard(int fd, const char *path);

/* SHA-256 of the file at path as 64 hex digits (and its size, when size
 * is not NULL), read in pieces. EXIT_OK, EXIT_USAGE (cannot read it) or
 * EXIT_INTERNAL, after reporting. */
int file_sha256(const char *what, const char *path, char hex[65], unsigned long long *size);

#endif
