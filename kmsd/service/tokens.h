/*
 * tokens — admin API tokens as a resource: create, list, revoke. The token
 * format, hashing and lookup are auth.h's; this module decides who gets one.
 *
 * Contract:
 *  - A new token is made from the entropy interface and shown once, in the
 *    answer of tokens_create; only its SHA-256 reaches PostgreSQL, and it is
 *    never logged. Every other answer names tokens only by name.
 *  - Names follow names.h (at most 64 characters); a name has at most one
 *    live token at a time (revoked and expired ones keep their rows).
 *  - A crypto token acts for one party (acts_for: a device that is not
 *    revoked, or "@platform"); no other role takes one.
 *  - Errors (err.h; e must not be NULL): QK_INVALID "invalid_name",
 *    "invalid_role", "invalid_expiry", "invalid_acts_for", "unknown_device";
 *    QK_CONFLICT "conflict" (a live
 *    token has the name); QK_NOT_FOUND "not_found"; QK_UNAVAILABLE
 *    "entropy_unavailable" or "unavailable" (Retry-After 1); QK_INTERNAL.
 *  - Creation and revocation are logged with who asked ("by") in the
 *    request's context (who->log).
 */
#ifndef QKMS_TOKENS_H
#define QKMS_TOKENS_H

#include <stdbool.h>

#include <jansson.h>

#include "err.h"
#include "service/service.h"

#define TOKEN_EXPIRY_MAX_DAYS 3650

typedef struct {
    const char *name; /* NULL: not given (or not a string) */
    const char *role; /* "admin", "operator", "auditor", "crypto" or "release" */
    bool expires;     /* expires_in_days given; else the token never expires */
    long long expires_in_days; /* 1..TOKEN_EXPIRY_MAX_DAYS */
    const char *acts_for; /* a crypto token's party; NULL: none given */
} token_spec;

/* Make a token: *out = {"name", "role", "token", "created_at", "expires_at",
 * "acts_for"}. */
qk_kind tokens_create(qk_svc *s, const qk_principal *who, const token_spec *spec, json_t **out,
                      qk_err *e);
/* {"tokens": [{"name", "role", "state", "created_at", "expires_at",
 * "last_used_at", "revoked_at", "created_by", "acts_for"}, ...]} in creation
 * order. */
qk_kind tokens_list(qk_svc *s, json_t **out, qk_err *e);
/* Revoke the live token named name: *out = {"name", "revoked_at"}. */
qk_kind tokens_revoke(qk_svc *s, const qk_principal *who, const char *name, json_t **out,
                      qk_err *e);

#endif
