/*
 * signkeys — list, create, rotate and revoke one family of the platform's
 * signing keys (firmware keys by product, data-signing keys by name):
 * `list [NAME] [--pem] | create NAME | rotate NAME [--overlap-days N] |
 * revoke NAME VERSION [--reason R]` against path (GET, POST path; POST
 * path/NAME/rotate, path/NAME/versions/VERSION/revoke), the name in field.
 */
#ifndef KMSCTL_SIGNKEYS_H
#define KMSCTL_SIGNKEYS_H

#include "command.h"

struct signkeys {
    const char *path;  /* "/v1/admin/firmware/keys" */
    const char *field; /* "product" */
    const char *upper; /* "PRODUCT": the argument's and the column's name */
};

extern const struct opt_spec signkeys_opts[];

int signkeys_run(const struct kmsctl_ctx *ctx, const struct invocation *inv,
                 const struct signkeys *f);

#endif
