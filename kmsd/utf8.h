/*
 * utf8 — make outside bytes safe to quote in JSON (error messages, logs).
 *
 * jansson refuses strings that are not valid UTF-8, so a client's byte
 * quoted in an error message or a log field would cost the whole answer or
 * the whole log line. Everything kmsd quotes from outside goes through here.
 *
 * Contract:
 *  - Valid means RFC 3629: shortest form, no surrogates, at most U+10FFFF.
 *  - utf8_sanitize copies in[0..len) into out (capacity cap, NUL included),
 *    replacing every byte that does not begin a valid sequence with U+FFFD.
 *    It never splits a character: when out is full it stops at the last
 *    whole character. A NUL byte in the input is also replaced. Returns the
 *    number of bytes written (without the NUL); *replaced (may be NULL) is
 *    set when anything was replaced.
 *  - Pure; no allocation.
 */
#ifndef QKMS_UTF8_H
#define QKMS_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Length of the valid sequence at s (1-4), or 0 when s[0] does not begin one. */
size_t utf8_seq_len(const unsigned char *s, size_t avail);
bool utf8_valid(const char *s, size_t len);
size_t utf8_sanitize(const char *in, size_t len, char *out, size_t cap, bool *replaced);

#endif
