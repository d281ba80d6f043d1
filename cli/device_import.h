/*
 * device_import — `kmsctl device import FILE [--batch N] [--format F]`:
 * rows from import_file.h, sent N at a time to POST
 * /v1/admin/devices/import, results combined with the rows that did not
 * parse locally (which are never sent).
 *
 * Output: "created N, failed M" and a line per failed row, or with --json
 * {"created":N,"failed":M,"results":[every row, in file order]}. Exit
 * status EXIT_REFUSED if any row failed. A batch the server refuses as a
 * whole, or a transport, auth or server error, stops the import with that
 * batch's exit status; earlier batches stay committed and a note says how
 * far the import got.
 */
#ifndef KMSCTL_DEVICE_IMPORT_H
#define KMSCTL_DEVICE_IMPORT_H
#include "args.h"
#include "context.h"

extern const struct opt_spec device_import_opts[];
int device_import_run(const struct kmsctl_ctx *ctx, const struct invocation *inv);

#endif
