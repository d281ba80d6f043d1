/* device_model — validation of device registrations. */
#include "service/device_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/names.h"

bool device_id_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > DEVICE_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7e || c == '/' || c == '\\' || c == '%' || c == '?' || c == '#')
            return false;
    }
    return true;
}

bool device_group_valid(const char *s) { return name_valid(s, DEVICE_GROUP_MAX); }

bool device_type_name_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > DEVICE_TYPE_MAX || s[0] < 'a' || s[0] > 'z')
        return false;
    for (size_t i = 1; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

bool device_state_valid(const char *s)
{
    return s && (!strcmp(s, "active") || !strcmp(s, "suspended") || !strcmp(s, "revoked"));
}

static int fail(const char **code, const char *c, char *msg, size_t ml, const char *m)
{
    *code = c;
    snprintf(msg, ml, "%s", m);
    return -1;
}

/* An optional integer field within [lo, hi]; absent or null keeps *out. */
static int opt_int(const json_t *o, const char *key, long lo, long hi, int *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return -1;
    *out = (int)json_integer_value(v);
    return 0;
}

int device_spec_from_json(const json_t *o, const device_defaults *d, device_spec *s,
                          const char **code, char *msg, size_t ml)
{
    static const char *const known[] = {"device_id",     "type", "group",      "parent", "keys",
                                        "key_bits",      "validity_days", "line",
                                        "attributes",    "service_days", NULL};
    const char *key, *v;
    json_t *val;

    memset(s, 0, sizeof(*s));
    s->nkeys = d->keys;
    s->key_bits = 128;
    s->validity_days = d->validity_days;
    s->service_days = DEVICE_SERVICE_TYPE;
    if (!json_is_object(o))
        return fail(code, "invalid_request", msg, ml, "a device must be a JSON object");
    json_object_foreach((json_t *)o, key, val) {
        bool ok = false;
        for (int i = 0; known[i]; i++)
            ok = ok || !strcmp(key, known[i]);
        if (!ok) {
            *code = "invalid_request";
            snprintf(msg, ml, "unknown field '%.64s'", key);
            return -1;
        }
    }
    val = json_object_get(o, "line");
    if (val && json_is_integer(val))
        s->line = (long)json_integer_value(val);

    v = json_string_value(json_object_get(o, "device_id"));
    if (!device_id_valid(v))
        return fail(code, "invalid_device_id", msg, ml,
                    "device_id must be 1-128 printable ASCII characters without spaces or / \\ % ? #");
    strcpy(s->device_id, v);

    v = json_string_value(json_object_get(o, "type"));
    if (!device_type_name_valid(v))
        return fail(code, "invalid_type", msg, ml, "type must name a device type (e.g. vehicle)");
    strcpy(s->type, v);

    val = json_object_get(o, "group");
    v = val && !json_is_null(val) ? json_string_value(val) : "default";
    if (!device_group_valid(v))
        return fail(code, "invalid_group", msg, ml,
                    "group must be 1-64 of letters, digits, '.', '_' or '-', starting with a letter or digit");
    strcpy(s->group, v);

    val = json_object_get(o, "parent");
    if (val && !json_is_null(val)) {
        v = json_string_value(val);
        if (!device_id_valid(v))
            return fail(code, "invalid_parent", msg, ml, "parent must be a device ID");
        if (!strcmp(v, s->device_id))
            return fail(code, "invalid_parent", msg, ml, "a device cannot be its own parent");
        strcpy(s->parent, v);
    }
    if (!strcmp(s->type, "subdevice") && !s->parent[0])
        return fail(code, "invalid_parent", msg, ml, "a subdevice needs a parent gateway");

    if (opt_int(o, "keys", 1, DEVICE_MAX_KEYS, &s->nkeys) != 0)
        return fail(code, "invalid_keys", msg, ml, "keys must be an integer from 1 to 16");
    if (opt_int(o, "key_bits", 128, 256, &s->key_bits) != 0 ||
        (s->key_bits != 128 && s->key_bits != 256))
        return fail(code, "invalid_key_bits", msg, ml, "key_bits must be 128 or 256");
    if (opt_int(o, "validity_days", 1, 3650, &s->validity_days) != 0)
        return fail(code, "invalid_validity", msg, ml, "validity_days must be an integer from 1 to 3650");
    val = json_object_get(o, "service_days");
    if (val && json_is_null(val))
        s->service_days = DEVICE_SERVICE_NONE;
    else if (opt_int(o, "service_days", 1, DEVICE_SERVICE_DAYS_MAX, &s->service_days) != 0)
        return fail(code, "invalid_service", msg, ml,
                    "service_days must be an integer from 1 to 36500, or null for no end");
    val = json_object_get(o, "attributes");
    if (val && !json_is_null(val)) {
        json_t *n = device_attrs_check(val, msg, ml);
        char *text = n ? json_dumps(n, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        json_decref(n);
        if (!text) {
            *code = "invalid_attributes";
            return -1;
        }
        snprintf(s->attributes, sizeof(s->attributes), "%s", text); /* checked: fits */
        free(text);
    }
    return 0;
}

int device_key_context(const char *device_id, int index, const char *algorithm, char *out,
                       size_t len)
{
    int n = snprintf(out, len, "qkms/device-key/v1\n%s\n%d\n%s", device_id, index, algorithm);
    return n > 0 && (size_t)n < len ? n : -1;
}

bool device_key_purpose_valid(const char *s)
{
    return s && (!strcmp(s, "access") || !strcmp(s, "local") || !strcmp(s, "generic"));
}

int device_template_parse(const char *lit, const char **out, int max)
{
    static const char *const names[] = {"access", "local", "generic"};
    int n = 0;
    if (!lit || *lit != '{')
        return 0;
    for (const char *p = lit + 1; *p && *p != '}' && n < max;) {
        size_t len = strcspn(p, ",}");
        /* A word the schema's check cannot let in: generic, in its place
         * (the positions are the key indices). */
        const char *hit = "generic";
        for (size_t j = 0; j < sizeof(names) / sizeof(names[0]); j++)
            if (strlen(names[j]) == len && !strncmp(p, names[j], len))
                hit = names[j];
        out[n++] = hit;
        p += len + (p[len] == ',');
    }
    return n;
}
