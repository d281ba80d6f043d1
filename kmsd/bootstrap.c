/* bootstrap — create or re-register the bootstrap admin token. */
#include "bootstrap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "log.h"
#include "queries.h"

#define BOOTSTRAP_LOCK "7164803903"

static int read_token(const char *path, char tok[AUTH_TOKEN_LEN + 1])
{
    char buf[AUTH_TOKEN_LEN + 8];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;
    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = 0;
    if (!auth_token_well_formed(buf)) {
        OPENSSL_cleanse(buf, sizeof(buf));
        return -2;
    }
    memcpy(tok, buf, AUTH_TOKEN_LEN + 1);
    OPENSSL_cleanse(buf, sizeof(buf));
    return 0;
}

/* Write to a temporary file, then link() it into place: the token file
 * appears complete or not at all, and an existing file is never replaced. */
static int write_token(const char *path, const char *tok)
{
    char tmp[4096];
    size_t n = strlen(tok);
    int fd, rc = -1, saved;
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (write(fd, tok, n) == (ssize_t)n && write(fd, "\n", 1) == 1 && fsync(fd) == 0)
        rc = link(tmp, path);
    saved = errno;
    close(fd);
    unlink(tmp);
    errno = saved;
    return rc;
}

int bootstrap_admin_token(kms_ctx *k, char *err, size_t el)
{
    const char *path = k->cfg.bootstrap_token_file;
    char tok[AUTH_TOKEN_LEN + 1];
    uint8_t hash[32];
    const char *vals[1];
    int hash_len = 32, hash_fmt = 1; /* binary parameter */
    db_status st;
    db_conn *c = NULL;
    PGresult *r = NULL;
    int rc = -1, rd;
    bool fresh = false;

    if (!path)
        return 0;
    c = db_acquire(k->db, &st);
    if (!c) {
        snprintf(err, el, "database unavailable");
        return -1;
    }
    /* kmsd instances starting together must not both mint a token. */
    if (db_command(c, "SELECT pg_advisory_lock(" BOOTSTRAP_LOCK ")") != DB_OK) {
        snprintf(err, el, "cannot take the bootstrap lock");
        db_release(k->db, c);
        return -1;
    }
    rd = read_token(path, tok);
    if (rd == -2) {
        snprintf(err, el, "%s does not hold a qkms token", path);
        goto out;
    }
    if (rd == -1 && errno != ENOENT) {
        snprintf(err, el, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (rd == 0) {
        auth_token_hash(tok, hash);
        vals[0] = (const char *)hash;
        r = db_exec(c, Q_TOKEN_BY_HASH, 1, vals, &hash_len, &hash_fmt, &st);
        if (!r) {
            snprintf(err, el, "database error: %s", db_status_name(st));
            goto out;
        }
        if (PQntuples(r) > 0) {
            rc = 0; /* known (live or revoked by an operator): nothing to do */
            goto out;
        }
        PQclear(r);
        r = NULL;
    } else {
        vals[0] = "bootstrap";
        r = db_exec(c, Q_TOKEN_LIVE_NAME, 1, vals, NULL, NULL, &st);
        if (!r) {
            snprintf(err, el, "database error: %s", db_status_name(st));
            goto out;
        }
        if (PQntuples(r) > 0) {
            log_emit(LOG_WARN, "bootstrap token file missing but a live bootstrap token exists; "
                               "not creating another",
                     "{s:s}", "file", path);
            rc = 0;
            goto out;
        }
        PQclear(r);
        r = NULL;
        if (auth_token_new(k->ent, tok) != 0) {
            snprintf(err, el, "no entropy for the bootstrap token");
            goto out;
        }
        /* File first: if the insert then fails, the next start registers it. */
        if (write_token(path, tok) != 0) {
            snprintf(err, el, "cannot write %s: %s", path, strerror(errno));
            goto out;
        }
        fresh = true;
        auth_token_hash(tok, hash);
    }
    r = auth_token_insert(c, "bootstrap", "admin", hash, "kmsd", NULL, &st);
    if (!r) {
        if (st == DB_CONFLICT) {
            log_emit(LOG_WARN, "bootstrap token file differs from the live bootstrap token; "
                               "leaving both alone",
                     "{s:s}", "file", path);
            rc = 0;
        } else {
            snprintf(err, el, "storing the bootstrap token failed: %s", db_status_name(st));
        }
        goto out;
    }
    log_emit(LOG_INFO, fresh ? "bootstrap admin token created" : "bootstrap admin token registered",
             "{s:s}", "file", path);
    rc = 0;
out:
    OPENSSL_cleanse(tok, sizeof(tok));
    PQclear(r);
    db_command(c, "SELECT pg_advisory_unlock(" BOOTSTRAP_LOCK ")");
    db_release(k->db, c);
    return rc;
}
