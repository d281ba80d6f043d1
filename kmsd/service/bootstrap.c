/* bootstrap — create or re-register the bootstrap admin token. */
#include "service/bootstrap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "service/auth.h"
#include "log.h"
#include "store/queries.h"


/* Reads the token file: 0 ok; -1 errno set (ENOENT: no file); -2 not a
 * token; -3 not a regular file of mode 0600 owned by kmsd's user (anyone
 * else who can write it could plant an admin token; why in *why). */
static int read_token(const char *path, char tok[AUTH_TOKEN_LEN + 1], const char **why)
{
    char buf[AUTH_TOKEN_LEN + 8];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    ssize_t n;
    if (fd < 0)
        return -1;
    if (fstat(fd, &sb) != 0) {
        close(fd);
        return -1;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_uid != geteuid() || (sb.st_mode & 07777) != 0600) {
        *why = !S_ISREG(sb.st_mode)      ? "is not a regular file"
               : sb.st_uid != geteuid() ? "is not owned by kmsd's user"
                                        : "must have mode 0600";
        close(fd);
        return -3;
    }
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

/* The file's token: 0 read, 1 no file, -1 refused or unreadable (err). */
static int token_file(const char *path, char tok[AUTH_TOKEN_LEN + 1], char *err, size_t el)
{
    const char *why = "";
    int rd = read_token(path, tok, &why);
    if (rd == -3)
        snprintf(err, el,
                 "bootstrap_token_file %s %s (refused: whoever can write it could plant an "
                 "admin token)", path, why);
    else if (rd == -2)
        snprintf(err, el, "%s does not hold a qkms token", path);
    else if (rd == -1 && errno != ENOENT)
        snprintf(err, el, "%s: %s", path, strerror(errno));
    else
        return rd == 0 ? 0 : 1;
    return -1;
}

/* Whether the one-parameter statement stmt finds a row: 1 yes, 0 no, -1
 * error in err. len 0: val is text; else val is len binary bytes. */
static int row_exists(db_conn *c, int stmt, const void *val, int len, char *err, size_t el)
{
    const char *vals[1] = {val};
    int fmt = len ? 1 : 0;
    db_status st;
    PGresult *r = db_exec(c, stmt, 1, vals, len ? &len : NULL, len ? &fmt : NULL, &st);
    int n;
    if (!r) {
        snprintf(err, el, "database error: %s", db_status_name(st));
        return -1;
    }
    n = PQntuples(r) > 0;
    PQclear(r);
    return n;
}

/* Whether a token with this hash is registered (live or revoked). */
static int token_known(db_conn *c, const uint8_t hash[32], char *err, size_t el)
{
    return row_exists(c, Q_TOKEN_BY_HASH, hash, 32, err, el);
}

/* Whether a token named "bootstrap" was ever registered (revoked rows count). */
static int bootstrap_ever(db_conn *c, char *err, size_t el)
{
    return row_exists(c, Q_TOKEN_NAME_EVER, "bootstrap", 0, err, el);
}

/* A token file's token is registered, or a new one minted, only while no
 * bootstrap token ever existed: once one was revoked, neither a planted
 * file nor a deleted one grants admin again (create tokens with the API). */
int bootstrap_admin_token(qk_svc *k, char *err, size_t el)
{
    const char *path = k->cfg->bootstrap_token_file;
    char tok[AUTH_TOKEN_LEN + 1];
    uint8_t hash[32];
    db_status st;
    db_conn *c = NULL;
    PGresult *r = NULL;
    int rc = -1, rd, ever, known;
    bool fresh = false;

    if (!path)
        return 0;
    c = db_acquire(k->db, &st);
    if (!c) {
        snprintf(err, el, "database unavailable");
        return -1;
    }
    /* kmsd instances starting together must not both mint a token. */
    if (qt_command(c, QT_BOOTSTRAP_LOCK) != DB_OK) {
        snprintf(err, el, "cannot take the bootstrap lock");
        db_release(k->db, c);
        return -1;
    }
    rd = token_file(path, tok, err, el);
    if (rd < 0)
        goto out;
    if (rd == 0) {
        auth_token_hash(tok, hash);
        known = token_known(c, hash, err, el);
        if (known != 0) {
            rc = known > 0 ? 0 : -1; /* known (live or revoked): nothing to do */
            goto out;
        }
    }
    ever = bootstrap_ever(c, err, el);
    if (ever < 0)
        goto out;
    if (ever) {
        log_emit(LOG_WARN,
                 rd == 0 ? "bootstrap token file holds an unknown token and a bootstrap token "
                           "existed before; not registering it"
                         : "bootstrap token file missing and a bootstrap token existed before; "
                           "not creating another",
                 "{s:s}", "file", path);
        rc = 0;
        goto out;
    }
    if (rd != 0) {
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
    r = auth_token_insert(c, "bootstrap", "admin", hash, "kmsd", NULL, NULL, &st);
    if (!r) {
        snprintf(err, el, "storing the bootstrap token failed: %s", db_status_name(st));
        goto out;
    }
    log_emit(LOG_INFO, fresh ? "bootstrap admin token created" : "bootstrap admin token registered",
             "{s:s}", "file", path);
    rc = 0;
out:
    OPENSSL_cleanse(tok, sizeof(tok));
    PQclear(r);
    qt_command(c, QT_BOOTSTRAP_UNLOCK);
    db_release(k->db, c);
    return rc;
}
