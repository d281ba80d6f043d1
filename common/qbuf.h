/*
 * qbuf — one bounded byte buffer for everything qkms builds or receives
 * (request bodies, fill documents, PostgreSQL array literals, the audit
 * chain's canonical form, the device library's requests), in the spirit of
 * OpenSSH's sshbuf.
 *
 * Contract:
 *  - A qbuf never grows past the maximum given at creation: a put that
 *    would is refused with QBUF_E_LIMIT and leaves the buffer unchanged.
 *    Out of memory is QBUF_E_NOMEM, also with the buffer unchanged.
 *  - Growing copies into a new block and wipes the old one; reset and free
 *    wipe what was written. Old bytes never stay behind in freed heap, so
 *    a qbuf may hold secrets.
 *  - With QBUF_SECURE the storage comes from OpenSSL's secure heap (locked,
 *    never swapped, never in a core dump) when it is initialised, and from
 *    the ordinary heap otherwise.
 *  - The contents are always followed by a NUL byte (not counted in
 *    qbuf_len), so text can be used as a C string.
 *  - Not thread-safe: one owner at a time.
 */
#ifndef QKMS_QBUF_H
#define QKMS_QBUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct qbuf qbuf;

#define QBUF_SECURE 0x1u

enum {
    QBUF_OK = 0,
    QBUF_E_NOMEM = -1, /* allocation failed */
    QBUF_E_LIMIT = -2, /* would grow past the buffer's maximum */
};

/* A new, empty buffer of at most max bytes (max >= 1). NULL when out of
 * memory. */
qbuf *qbuf_new(size_t max, unsigned flags);
/* Wipe and free (NULL is a no-op). */
void qbuf_free(qbuf *b);
/* Wipe the contents; the buffer is empty again, its storage kept. */
void qbuf_reset(qbuf *b);

size_t qbuf_len(const qbuf *b);
size_t qbuf_max(const qbuf *b);
/* The contents (NUL-terminated); valid until the next change. Never NULL. */
const char *qbuf_str(const qbuf *b);
const uint8_t *qbuf_ptr(const qbuf *b);

/* Append n bytes. */
int qbuf_put(qbuf *b, const void *p, size_t n);
int qbuf_put_str(qbuf *b, const char *s);
int qbuf_put_u8(qbuf *b, uint8_t v);
/* Append formatted text. */
int qbuf_putf(qbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int qbuf_vputf(qbuf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Make room for n more bytes and point *dst at them; the caller writes
 * them and qbuf_len grows by n at once (the bytes count as written). */
int qbuf_reserve(qbuf *b, size_t n, uint8_t **dst);
/* Drop bytes from the end so that len bytes remain (len <= qbuf_len);
 * the dropped bytes are wiped. */
void qbuf_truncate(qbuf *b, size_t len);

/* Hand the storage to the caller: *out (NUL-terminated, *len bytes before
 * the NUL) must be freed with qbuf_free_stolen(*out, *len), which wipes it
 * and knows which heap it came from. The qbuf is then empty.
 * QBUF_E_NOMEM if an empty buffer cannot get storage. */
int qbuf_steal(qbuf *b, char **out, size_t *len);
void qbuf_free_stolen(char *p, size_t len);

#endif
