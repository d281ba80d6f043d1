/* principal — the service's principal of an admin request (principal.h). */
#include "api/principal.h"

qk_principal admin_principal(const http_request *rq)
{
    qk_principal p = {.kind = QK_PRINCIPAL_ADMIN, .name = rq->who.name, .roles = rq->who.role};
    p.log.req_id = rq->req_id;
    p.log.client = rq->client_ip;
    p.log.principal = rq->who.name;
    return p;
}
