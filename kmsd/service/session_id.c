/*
 * session_id — the session ID hash key's one unwrapped copy, and the
 * hashes and wrap contexts session rows are keyed by (session_id.h).
 */
#include "service/session_id.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "hexutil.h"

static uint8_t *sid_key; /* secure heap, SID_KEY_LEN; set once at start */

int sessions_set_id_key(const uint8_t *key, size_t len)
{
    if (sid_key)
        OPENSSL_secure_clear_free(sid_key, SID_KEY_LEN);
    sid_key = NULL;
    if (!key)
        return 0;
    if (len != SID_KEY_LEN || !(sid_key = OPENSSL_secure_malloc(SID_KEY_LEN)))
        return -1;
    memcpy(sid_key, key, SID_KEY_LEN);
    return 0;
}

int session_hash(const char *session_id, uint8_t out[32])
{
    unsigned int n = 32;
    if (!sid_key || !HMAC(EVP_sha256(), sid_key, SID_KEY_LEN, (const uint8_t *)session_id,
                          strlen(session_id), out, &n) || n != 32)
        return -1;
    return 0;
}

void session_hash_legacy(const char *session_id, uint8_t out[32])
{
    unsigned int n = 0;
    EVP_Digest(session_id, strlen(session_id), out, &n, EVP_sha256(), NULL);
}

int session_key_context(const char *hash_hex, const char *key_id, char *out, size_t len)
{
    int n = snprintf(out, len, "qkms/session-key/v1\n%s\n%s", hash_hex, key_id);
    return n > 0 && (size_t)n < len ? n : -1;
}

int session_key_context_of(const uint8_t hash[32], const char *key_id, char *out, size_t len)
{
    char hx[65];
    qkms_hex_encode(hash, 32, hx);
    return session_key_context(hx, key_id, out, len);
}

int uuid4_text(char out[37])
{
    uint8_t b[16];
    if (RAND_bytes(b, sizeof(b)) != 1)
        return -1;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return 0;
}
