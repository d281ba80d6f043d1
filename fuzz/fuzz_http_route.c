/*
 * fuzz_http_route — what every request meets before any handler, none of
 * it authenticated: the router (kmsd/http.c http_route_find) over kmsd's
 * real route table (kmsd/routes.c), the X-Request-Id check
 * (http_request_id_ok), the Authorization header (kmsd/auth.c auth_bearer,
 * auth_token_well_formed) and the Content-Type check of http_body_object.
 *
 * Input: byte 0 the method (and in bits 2-3 the listener: device, admin,
 * or both when 0), byte 1 the size of the parameter buffer (allocated
 * exactly, so ASan sees an overrun; 0 means dispatch's 1024 bytes), the
 * rest the path up to a NUL. Properties: a match is a route that listener
 * serves, of that method, whose pattern, with the captured parameters put
 * back, is the path; -405 names the allowed methods; the request-id check
 * accepts exactly 1-64 of [A-Za-z0-9._-]. The same text, taken as a header value, must give
 * a bearer token that is in the header, trimmed, non-empty and shorter than
 * dispatch's 128-byte buffer, and a JSON body is refused with 415 unless
 * the text names application/json.
 */
#include "fuzz_common.h"

#include <strings.h>

#include "service/auth.h"
#include "api/server.h"
#include "log.h"
#include "api/routes.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    if (!fuzz_env_on("QKMS_FUZZ_VERBOSE"))
        log_set_level((log_level)(LOG_ERROR + 1));
    return 0;
}

/* The pattern with {x} replaced by the captured parameters, in order. */
static void rebuild(const char *pattern, const char **params, int np, char *out, size_t cap)
{
    size_t o = 0;
    int i = 0;
    for (const char *p = pattern; *p;) {
        if (*p == '{') {
            const char *e = strchr(p, '}');
            FUZZ_CHECK(e && i < np);
            o += (size_t)snprintf(out + o, o < cap ? cap - o : 0, "%s", params[i++]);
            p = e + 1;
        } else {
            if (o + 1 < cap)
                out[o] = *p;
            o++;
            p++;
        }
    }
    FUZZ_CHECK(i == np && o < cap);
    out[o] = 0;
}

static bool id_ok_ref(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= 64 &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == n;
}

/* The header checks, on the same text. */
static void headers(const char *text)
{
    char tok[128];
    http_request rq;
    http_response rs;
    json_t *j;

    if (auth_bearer(text, tok, sizeof(tok)) == 0) {
        size_t n = strlen(tok);
        FUZZ_CHECK(n >= 1 && n < sizeof(tok) && tok[0] != ' ' && tok[n - 1] != ' ');
        FUZZ_CHECK(!strncasecmp(text, "Bearer ", 7) && strstr(text + 7, tok) != NULL);
        (void)auth_token_well_formed(tok);
    }
    memset(&rq, 0, sizeof(rq));
    memset(&rs, 0, sizeof(rs));
    rq.body = "{}";
    rq.body_len = 2;
    rq.content_type = text;
    j = http_body_object(&rq, &rs);
    if (j) {
        FUZZ_CHECK(!strncasecmp(text, "application/json", 16));
        json_decref(j);
    } else {
        FUZZ_CHECK(rs.status == 415);
    }
    free(rs.body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", ""};
    const char *params[HTTP_MAX_PARAMS];
    char allow[64], *path, *buf, again[2048];
    size_t bl;
    int np = 0, idx;
    unsigned door;
    const char *method;

    if (size < 2)
        return 0;
    method = methods[data[0] % (sizeof(methods) / sizeof(methods[0]))];
    bl = data[1] ? data[1] : 1024;
    path = fuzz_strndup(data + 2, size - 2);
    FUZZ_CHECK(http_request_id_ok(path) == id_ok_ref(path));
    headers(path);
    buf = malloc(bl);
    FUZZ_CHECK(buf != NULL);
    /* The listener: bits 2-3 of byte 0 (0: one listener serving both). */
    door = (data[0] >> 2) & DOOR_ALL;
    if (!door)
        door = DOOR_ALL;
    idx = http_route_find(routes, routes_count, door, method, path, buf, bl, params, &np, allow,
                          (size_t)(data[0] >> 4) + 1);
    if (idx >= 0) {
        FUZZ_CHECK(idx < routes_count && !strcmp(routes[idx].method, method));
        FUZZ_CHECK(routes[idx].door & door);
        FUZZ_CHECK(np >= 0 && np <= HTTP_MAX_PARAMS);
        for (int i = 0; i < np; i++)
            FUZZ_CHECK(params[i] >= buf && params[i] + strlen(params[i]) < buf + bl &&
                       params[i][0] != 0 && !strchr(params[i], '/'));
        if (strlen(path) < sizeof(again) - 1) {
            rebuild(routes[idx].pattern, params, np, again, sizeof(again));
            FUZZ_CHECK(!strcmp(again, path));
        }
    } else {
        FUZZ_CHECK(idx == -404 || idx == -405);
        FUZZ_CHECK(strlen(allow) < (size_t)(data[0] >> 4) + 1);
    }
    free(buf);
    free(path);
    return 0;
}
