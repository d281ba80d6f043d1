/*
 * fuzz_import_json — the server's checks of a device import body
 * (POST /v1/admin/devices/import, kmsd/admin_devices.c h_devices_import):
 * the body parse (http_body_object), the {"devices":[...]} shape and
 * device_spec_from_json on each row, up to where the handler hands the rows
 * to the database (devices_register), and the echo of a refused row's
 * device_id into the results. Also POST /v1/admin/devices (one row).
 * A row that passes must hold a valid ID, type and group, a parent that
 * differs from the device, and in-range numbers; every string the handler
 * puts into JSON must be valid for jansson; attributes that pass are in
 * their normal form (checking them again changes nothing).
 */
#include "fuzz_common.h"

#include <stdlib.h>

#include "service/device_model.h"
#include "api/server.h"
#include "log.h"

#define IMPORT_MAX_ROWS 1000 /* kmsd/admin_devices.c */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    if (!fuzz_env_on("QKMS_FUZZ_VERBOSE"))
        log_set_level((log_level)(LOG_ERROR + 1));
    return 0;
}

static void check_row(const json_t *o, const device_defaults *d)
{
    device_spec s;
    const char *code = NULL;
    char msg[200];
    json_t *id;

    if (device_spec_from_json(o, d, &s, &code, msg, sizeof(msg)) != 0) {
        const char *raw = json_string_value(json_object_get(o, "device_id"));
        FUZZ_CHECK(code != NULL);
        /* The handler's echo of what the operator sent. */
        id = s.device_id[0] ? json_string(s.device_id)
             : raw ? json_stringn(raw, strnlen(raw, DEVICE_ID_MAX)) : json_null();
        json_decref(id);
        return;
    }
    FUZZ_CHECK(device_id_valid(s.device_id) && device_type_name_valid(s.type) &&
               device_group_valid(s.group));
    FUZZ_CHECK(!s.parent[0] || (device_id_valid(s.parent) && strcmp(s.parent, s.device_id)));
    FUZZ_CHECK(s.nkeys >= 1 && s.nkeys <= DEVICE_MAX_KEYS);
    FUZZ_CHECK(s.key_bits == 128 || s.key_bits == 256);
    FUZZ_CHECK(s.validity_days >= 1 && s.validity_days <= 3650);
    FUZZ_CHECK(s.service_days == DEVICE_SERVICE_TYPE || s.service_days == DEVICE_SERVICE_NONE ||
               (s.service_days >= 1 && s.service_days <= DEVICE_SERVICE_DAYS_MAX));
    /* Attributes (device_attrs.h): what passed is one JSON object within
     * the limits, and its normal form is a fixed point. */
    if (s.attributes[0]) {
        char m2[200];
        json_t *a = json_loads(s.attributes, 0, NULL), *again;
        char *text;
        FUZZ_CHECK(json_is_object(a) && json_object_size(a) <= DEVICE_ATTRS_MAX &&
                   strlen(s.attributes) <= DEVICE_ATTRS_TEXT_MAX);
        again = device_attrs_check(a, m2, sizeof(m2));
        FUZZ_CHECK(again != NULL);
        text = json_dumps(again, JSON_COMPACT | JSON_SORT_KEYS);
        FUZZ_CHECK(text && !strcmp(text, s.attributes));
        free(text);
        json_decref(again);
        json_decref(a);
    }
    id = json_string(s.device_id);
    FUZZ_CHECK(id != NULL);
    json_decref(id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    http_request rq;
    http_response rs;
    device_defaults d = {4, 365};
    json_t *in, *list;

    memset(&rq, 0, sizeof(rq));
    memset(&rs, 0, sizeof(rs));
    rq.method = "POST";
    rq.path = "/v1/admin/devices/import";
    rq.body = (const char *)data;
    rq.body_len = size;
    rq.content_type = "application/json";
    in = http_body_object(&rq, &rs);
    if (!in) {
        FUZZ_CHECK(rs.status == 400 || rs.status == 415); /* never 500 (issue 12, item 14) */
        free(rs.body);
        return 0;
    }
    list = json_object_get(in, "devices");
    if (json_is_array(list) && json_object_size(in) == 1 && json_array_size(list) >= 1 &&
        json_array_size(list) <= IMPORT_MAX_ROWS) {
        size_t i;
        json_t *o;
        json_array_foreach(list, i, o)
            check_row(o, &d);
    } else {
        check_row(in, &d); /* the single-device route takes the object itself */
    }
    json_decref(in);
    return 0;
}
