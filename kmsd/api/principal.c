/* principal — the service's principal of an admin request (principal.h). */
#include "api/principal.h"

qk_principal admin_principal(const http_request *rq)
{
    qk_principal p = {.kind = QK_PRINCIPAL_ADMIN, .name = rq->who.name, .roles = rq->who.role,
                      .token_id = rq->who.id, .log = http_log_ctx(rq)};
    return p;
}
