/* resource — checked, escaped member paths and requests; see resource.h. */
#include "resource.h"

#include <stdio.h>
#include <stdlib.h>

#include "client.h"
#include "exitcodes.h"
#include "output.h"

char *resource_path(const struct resource *r, const char *id, const char *suffix)
{
    char *escaped = client_escape_segment(id), *path = NULL;
    if (!escaped)
        return NULL; /* reported */
    if (asprintf(&path, "%s/%s%s%s", r->base, escaped, suffix ? "/" : "", suffix ? suffix : "") < 0) {
        path = NULL;
        out_error("out of memory");
    }
    free(escaped);
    return path;
}

int resource_call(const struct kmsctl_ctx *ctx, const struct resource *r, const char *method,
                  const char *id, const char *suffix, const json_t *body, json_t **resp)
{
    char *path = NULL;
    int rc;

    *resp = NULL;
    if ((rc = r->check(r->what, id)))
        return rc;
    if (!(path = resource_path(r, id, suffix)))
        return EXIT_INTERNAL;
    rc = client_call(ctx, method, path, body, resp);
    free(path);
    if (!rc && r->record && !json_is_object(*resp)) {
        out_error("server response is not a %s", r->record);
        json_decref(*resp);
        *resp = NULL;
        rc = EXIT_SERVER;
    }
    return rc;
}

int resource_act(const struct kmsctl_ctx *ctx, const struct resource *r, const char *id,
                 const char *verb, json_t **resp)
{
    json_t *body = json_object();
    int rc;

    *resp = NULL;
    if (!body) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    rc = resource_call(ctx, r, "POST", id, verb, body, resp);
    json_decref(body);
    return rc;
}

const json_t *resource_items(const json_t *resp, const char *key)
{
    const json_t *items = json_object_get(resp, key);
    if (json_is_array(items))
        return items;
    out_error("server response has no \"%s\" list", key);
    return NULL;
}

int resource_list(const struct kmsctl_ctx *ctx, const char *base, const char *query,
                  const char *key, json_t **resp)
{
    char *path = NULL;
    int rc;

    *resp = NULL;
    if (asprintf(&path, "%s%s", base, query ? query : "") < 0) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    rc = client_call(ctx, "GET", path, NULL, resp);
    free(path);
    if (!rc && !resource_items(*resp, key)) {
        json_decref(*resp);
        *resp = NULL;
        rc = EXIT_SERVER;
    }
    return rc;
}
