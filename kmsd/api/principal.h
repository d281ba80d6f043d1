/*
 * principal — who asks, as the service sees it (service.h qk_principal),
 * built from an authenticated admin request.
 *
 * Contract: the principal borrows the request's strings (token name,
 * request id, client address); it is valid while the request is. Only for
 * routes that require a role (the gate has authenticated the token).
 */
#ifndef QKMS_API_PRINCIPAL_H
#define QKMS_API_PRINCIPAL_H

#include "api/server.h"
#include "service/service.h"

qk_principal admin_principal(const http_request *rq);

#endif
