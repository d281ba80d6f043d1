/* health — liveness, readiness and metrics endpoints. */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "service/readiness.h"
#include "api/routes.h"

void h_healthz(http_request *rq, http_response *rs)
{
    (void)rq;
    http_json(rs, 200, json_pack("{s:s}", "status", "ok"));
}

/* Ready means every dependency a key request needs answers now; the
 * prober (readiness.c) has asked them, so this never waits on one. */
void h_readyz(http_request *rq, http_response *rs)
{
    json_t *checks, *down;
    char msg[128] = "not ready:";
    size_t i;
    json_t *v;

    if (readiness_report(rq->kms->ready, &checks, &down) == 0) {
        json_decref(down);
        http_json(rs, 200, json_pack("{s:s,s:o}", "status", "ready", "checks", checks));
        return;
    }
    json_array_foreach(down, i, v) {
        strncat(msg, " ", sizeof(msg) - strlen(msg) - 1);
        strncat(msg, json_string_value(v), sizeof(msg) - strlen(msg) - 1);
    }
    rs->retry_after = 1;
    rs->err_code = "unavailable";
    http_json(rs, 503,
              json_pack("{s:{s:s,s:s,s:o},s:o}", "error", "code", "unavailable", "message", msg,
                        "down", down, "checks", checks));
}

void h_metrics(http_request *rq, http_response *rs)
{
    size_t len = 0;
    char *text = metrics_render(rq->kms->metrics, &len);
    if (!text) {
        http_error(rs, 500, "internal", "cannot render metrics");
        return;
    }
    http_text(rs, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

/* Source descriptions name URLs and command lines, which may carry API
 * keys: complete for admins, redacted for the other roles. */
static json_t *entropy_status_for(http_request *rq)
{
    return entropy_status(rq->kms->svc.ent, (rq->who.role & ROLE_ADMIN) != 0);
}

void h_admin_entropy(http_request *rq, http_response *rs)
{
    http_json(rs, 200, entropy_status_for(rq));
}

void h_admin_entropy_enable(http_request *rq, http_response *rs)
{
    const char *name = rq->params[0];
    if (entropy_enable(rq->kms->svc.ent, name) != 0) {
        http_error(rs, 404, "not_found", "no entropy source named '%.32s'", name);
        return;
    }
    http_log(rq, LOG_INFO, "entropy source re-enabled", "{s:s,s:s}", "source", name, "by",
             rq->who.name);
    http_json(rs, 200, entropy_status_for(rq));
}
