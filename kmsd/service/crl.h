/*
 * crl — the platform CA's certificate revocation list (docs/pki.md).
 *
 * Contract:
 *  - crl_refresh makes a new CRL for each CA version whose certificate is
 *    still valid (the active one and retired ones, each signed with its
 *    own key; docs/pki.md, "Rotating the CA") when forced (a
 *    certificate was just revoked), when a certificate was revoked since
 *    the newest one was made (a forced refresh that failed), or when the
 *    newest one is older than ca_crl_interval: every revoked certificate of that version that has
 *    not expired, with its revocation time and reason; thisUpdate now,
 *    nextUpdate thisUpdate + 2 x ca_crl_interval (a refresh that fails
 *    once leaves a CRL still current); a CRL number one past the last;
 *    signed in the token (ca_sign_crl). Instances serialize on the CA's
 *    row, so numbers never repeat; the newest rows are kept, older ones
 *    pruned.
 *  - Called after the revoking transaction committed: a failure here
 *    leaves the revocation in place (it is in the next CRL the
 *    maintenance thread makes, which checks every min(60 s,
 *    ca_crl_interval / 4)) and is logged, never undone.
 *  - crl_get answers the newest CRL (DER) and its number; with none yet
 *    (a fresh CA), it makes one first.
 */
#ifndef QKMS_CRL_H
#define QKMS_CRL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "service/service.h"

qk_kind crl_refresh(qk_svc *s, bool force, qk_err *e);
/* The newest CRL of a CA version (0: the active one), DER or PEM
 * (malloc'd); 404 not_found for a version this CA does not have or whose
 * certificate has expired. */
qk_kind crl_get(qk_svc *s, int version, bool pem, char **body, size_t *len, qk_err *e);
/* RFC 5280 CRLReason of a reason name a revocation may give
 * (unspecified, keyCompromise, affiliationChanged, superseded,
 * cessationOfOperation, privilegeWithdrawn), or -1. */
int crl_reason_code(const char *name);

#endif
