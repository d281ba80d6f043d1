/*
 * device_cert — `kmsctl device cert issue ID --csr FILE [--validity DAYS]
 * [--out FILE]`, `cert bind ID --cert FILE`, `cert list ID`, `cert show
 * ID SERIAL`, `cert revoke ID SERIAL [--reason R]`:
 * /v1/admin/devices/ID/certificates[/SERIAL[/revoke]] (docs/pki.md).
 *
 * issue reads the CSR file (at most 16 KiB, a PEM CERTIFICATE REQUEST: the
 * server checks the rest) and, with --out, writes the certificate PEM to a
 * new file (mode 0600, never over an existing one); without it the
 * certificate record is printed, PEM included.
 */
#ifndef KMSCTL_DEVICE_CERT_H
#define KMSCTL_DEVICE_CERT_H
#include "args.h"
#include "context.h"

extern const struct opt_spec device_cert_opts[];
int device_cert_run(const struct kmsctl_ctx *ctx, const struct invocation *inv);

#endif
