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
