/*
 * bootstrap — the first admin token, so a fresh install can be administered.
 *
 * Contract: when bootstrap_token_file is set and names no file yet, a token
 * named "bootstrap" with role admin is made from the entropy interface,
 * written to the file (O_EXCL, mode 0600) and its hash stored. When the file
 * exists, its token is registered if the database lacks it (a restored or
 * re-created database) and no other live "bootstrap" token exists. The file
 * is never overwritten and the token is never logged.
 */
#ifndef QKMS_BOOTSTRAP_H
#define QKMS_BOOTSTRAP_H

#include <stddef.h>

#include "service/service.h"

int bootstrap_admin_token(qk_svc *k, char *err, size_t errlen);

#endif
