/*
 * resource — requests about one member of an admin collection:
 * METHOD <base>/<ID>[/<suffix>], e.g. POST /v1/admin/devices/D1/rotate.
 *
 * Every such request checks the ID first with the collection's own rule,
 * so a bad ID is a usage error and nothing is sent. The ID then travels as
 * one path segment: percent-escaped, "." and ".." as %2E segments (see
 * client_escape_segment), so no ID can name another route.
 *
 * resource_list is the other half: one GET of a whole collection.
 */
#ifndef KMSCTL_RESOURCE_H
#define KMSCTL_RESOURCE_H
#include <jansson.h>
#include "context.h"

/* A collection: constant data, one per kind of ID. */
struct resource {
    const char *base; /* the collection's path, e.g. "/v1/admin/devices" */
    const char *what; /* the ID in messages, e.g. "device ID" */
    /* EXIT_OK, or EXIT_USAGE after saying what is wrong with id. */
    int (*check)(const char *what, const char *id);
    /* Non-NULL: a 2xx answer must be a JSON object, else EXIT_SERVER
     * after "server response is not a <record>". */
    const char *record;
};

/*
 * base + "/" + the escaped id + "/suffix" unless suffix is NULL (the
 * suffix is sent as it is). Does not check id. Heap string; NULL on out of
 * memory (reported).
 */
char *resource_path(const struct resource *r, const char *id, const char *suffix);

/*
 * Checks id, then client_call(ctx, method, resource_path(r, id, suffix),
 * body, resp) with its exit codes. *resp is NULL unless EXIT_OK.
 */
int resource_call(const struct kmsctl_ctx *ctx, const struct resource *r, const char *method,
                  const char *id, const char *suffix, const json_t *body, json_t **resp);

/* resource_call(ctx, r, "POST", id, verb, {}, resp): an action on a
 * member whose route takes an empty JSON object as its body. */
int resource_act(const struct kmsctl_ctx *ctx, const struct resource *r, const char *id,
                 const char *verb, json_t **resp);

/* resp[key] when it is an array, else NULL after reporting 'server
 * response has no "<key>" list' (an EXIT_SERVER failure). */
const json_t *resource_items(const json_t *resp, const char *key);

/*
 * GET base + query (query NULL: none; else as built by client_query_add)
 * with client_call's exit codes. The answer must hold an array under key,
 * else EXIT_SERVER after 'server response has no "<key>" list'. *resp is
 * NULL unless EXIT_OK.
 */
int resource_list(const struct kmsctl_ctx *ctx, const char *base, const char *query,
                  const char *key, json_t **resp);

#endif
