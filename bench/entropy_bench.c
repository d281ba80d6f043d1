/*
 * entropy_bench — key generation throughput of the entropy module per
 * source and mode: 16-byte keys through entropy_get() for S seconds.
 * Prints: name=entropy source=S mode=M keys=N keys_per_s=K bytes_per_s=B
 *
 * usage: entropy_bench SOURCE MODE SECONDS [KEY=VALUE config overrides...]
 *   SOURCE: os | pkcs11 | http | device | exec  (pkcs11 needs the
 *   pkcs11_module/pkcs11_token_label/pkcs11_pin overrides; http needs
 *   entropy_http_url, ...). MODE: drbg | direct.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "config.h"
#include "entropy/entropy.h"
#include "log.h"
#include "p11.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    kms_config c;
    char err[512];
    p11_token *tok = NULL;
    entropy *e = NULL;
    uint8_t key[16];
    const char *prov = "";
    long keys = 0, fails = 0;
    double t0, el, secs;

    if (argc < 4)
        return 2;
    CRYPTO_secure_malloc_init(1 << 22, 16);
    log_set_level(LOG_WARN);
    config_defaults(&c);
    config_set(&c, "entropy_sources", argv[1], err, sizeof(err));
    config_set(&c, "entropy_mode", argv[2], err, sizeof(err));
    config_set(&c, "entropy_policy", "require", err, sizeof(err));
    secs = atof(argv[3]);
    for (int i = 4; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            return 2;
        *eq = 0;
        if (config_set(&c, argv[i], eq + 1, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s: %s\n", argv[i], err);
            return 2;
        }
    }
    if (!strcmp(argv[1], "pkcs11")) {
        p11_opts o = {c.pkcs11_module, c.pkcs11_token_label, c.pkcs11_pin,
                      c.pkcs11_pin ? strlen(c.pkcs11_pin) : 0, 4};
        if (p11_open(&tok, &o, err, sizeof(err)) != CKR_OK) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
    }
    if (entropy_open(&e, &c, tok, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    t0 = now();
    while ((el = now() - t0) < secs) {
        if (entropy_get(e, key, sizeof(key), &prov) == 0)
            keys++;
        else
            fails++;
    }
    printf("name=entropy source=%s mode=%s keys=%ld failures=%ld keys_per_s=%.0f bytes_per_s=%.0f "
           "provenance=%s\n",
           argv[1], argv[2], keys, fails, keys / el, 16.0 * keys / el, keys ? prov : "-");
    OPENSSL_cleanse(key, sizeof(key));
    entropy_close(e);
    p11_close(tok);
    config_free(&c);
    return 0;
}
