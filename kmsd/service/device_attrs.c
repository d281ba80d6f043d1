/* device_attrs — a device's attributes: checks and normal forms (device_attrs.h). */
#include "service/device_attrs.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > DEVICE_ATTR_NAME_MAX || s[0] < 'a' || s[0] > 'z')
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

static json_t *refuse(char *msg, size_t ml, const char *name, const char *why)
{
    snprintf(msg, ml, "attribute '%.32s' %s", name, why);
    return NULL;
}

/* EUI-48 in any of the usual spellings, as aa:bb:cc:dd:ee:ff. */
static json_t *mac(const char *s, char *msg, size_t ml)
{
    char out[18];
    size_t n = 0, len = s ? strlen(s) : 0;
    char sep = len == 17 ? s[2] : 0;
    if (!(len == 12 || (len == 17 && (sep == ':' || sep == '-'))))
        return refuse(msg, ml, "mac", "must be an EUI-48 address, e.g. 02:1a:2b:3c:4d:5e");
    for (size_t i = 0; i < len; i++) {
        if (len == 17 && i % 3 == 2) {
            if (s[i] != sep)
                return refuse(msg, ml, "mac", "must be an EUI-48 address, e.g. 02:1a:2b:3c:4d:5e");
            continue;
        }
        if (!isxdigit((unsigned char)s[i]))
            return refuse(msg, ml, "mac", "must be an EUI-48 address, e.g. 02:1a:2b:3c:4d:5e");
        if (n && n % 3 == 2)
            out[n++] = ':';
        out[n++] = (char)tolower((unsigned char)s[i]);
    }
    out[n] = 0;
    return json_string(out);
}

static json_t *uuid(const char *s, char *msg, size_t ml)
{
    char out[37];
    if (!s || strlen(s) != 36)
        return refuse(msg, ml, "uuid", "must be a UUID (8-4-4-4-12 hex digits)");
    for (size_t i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return refuse(msg, ml, "uuid", "must be a UUID (8-4-4-4-12 hex digits)");
        out[i] = (char)tolower((unsigned char)s[i]);
    }
    out[36] = 0;
    return json_string(out);
}

static json_t *ip(const char *s, char *msg, size_t ml)
{
    unsigned char buf[16];
    char out[INET6_ADDRSTRLEN];
    if (s && inet_pton(AF_INET, s, buf) == 1 && inet_ntop(AF_INET, buf, out, sizeof(out)))
        return json_string(out);
    if (s && inet_pton(AF_INET6, s, buf) == 1 && inet_ntop(AF_INET6, buf, out, sizeof(out)))
        return json_string(out);
    return refuse(msg, ml, "ip", "must be an IPv4 or IPv6 address");
}

static json_t *sn(const char *s, char *msg, size_t ml)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return refuse(msg, ml, "sn", "must be 1-64 printable ASCII characters without spaces");
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return refuse(msg, ml, "sn", "must be 1-64 printable ASCII characters without spaces");
    return json_string(s);
}

json_t *device_attr_value(const char *name, const json_t *v, char *msg, size_t ml)
{
    if (!name_ok(name)) {
        snprintf(msg, ml, "attribute names are 1-32 of a-z, 0-9 and _, starting with a letter");
        return NULL;
    }
    if (!strcmp(name, "mac"))
        return json_is_string(v) ? mac(json_string_value(v), msg, ml)
                                 : refuse(msg, ml, name, "must be a string");
    if (!strcmp(name, "sn"))
        return json_is_string(v) ? sn(json_string_value(v), msg, ml)
                                 : refuse(msg, ml, name, "must be a string");
    if (!strcmp(name, "uuid"))
        return json_is_string(v) ? uuid(json_string_value(v), msg, ml)
                                 : refuse(msg, ml, name, "must be a string");
    if (!strcmp(name, "ip"))
        return json_is_string(v) ? ip(json_string_value(v), msg, ml)
                                 : refuse(msg, ml, name, "must be a string");
    if (!strcmp(name, "port")) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65535)
            return refuse(msg, ml, name, "must be an integer from 1 to 65535");
        return json_integer(json_integer_value(v));
    }
    if (!strcmp(name, "joined")) {
        if (!json_is_boolean(v))
            return refuse(msg, ml, name, "must be true or false");
        return json_boolean(json_is_true(v));
    }
    if (json_is_string(v)) {
        if (strlen(json_string_value(v)) > 256)
            return refuse(msg, ml, name, "must be at most 256 bytes");
        return json_string(json_string_value(v));
    }
    if (json_is_number(v) || json_is_boolean(v))
        return json_deep_copy(v);
    return refuse(msg, ml, name, "must be a string, a number or a boolean");
}

json_t *device_attrs_check(const json_t *o, char *msg, size_t ml)
{
    const char *name;
    json_t *v, *out;
    char *text;
    size_t len;

    if (!json_is_object(o)) {
        snprintf(msg, ml, "attributes must be a JSON object");
        return NULL;
    }
    if (json_object_size(o) > DEVICE_ATTRS_MAX) {
        snprintf(msg, ml, "at most %d attributes", DEVICE_ATTRS_MAX);
        return NULL;
    }
    if (!(out = json_object()))
        return NULL;
    json_object_foreach((json_t *)o, name, v) {
        json_t *n = device_attr_value(name, v, msg, ml);
        if (!n || json_object_set_new(out, name, n) != 0) {
            json_decref(out);
            return NULL;
        }
    }
    text = json_dumps(out, JSON_COMPACT);
    len = text ? strlen(text) : 0;
    free(text);
    if (len == 0 || len > DEVICE_ATTRS_TEXT_MAX) {
        snprintf(msg, ml, "attributes are at most %d bytes of JSON", DEVICE_ATTRS_TEXT_MAX);
        json_decref(out);
        return NULL;
    }
    return out;
}

int device_attr_term(const char *term, char name[DEVICE_ATTR_NAME_MAX + 1], json_t **value,
                     char *msg, size_t ml)
{
    const char *eq = term ? strchr(term, '=') : NULL;
    size_t nl = eq ? (size_t)(eq - term) : 0;
    json_t *raw = NULL;

    *value = NULL;
    if (!eq || nl == 0 || nl > DEVICE_ATTR_NAME_MAX) {
        snprintf(msg, ml, "attr must be name=value");
        return -1;
    }
    memcpy(name, term, nl);
    name[nl] = 0;
    eq++;
    /* The query is text: the known typed attributes read theirs from it. */
    if (!strcmp(name, "port")) {
        char *end;
        long p = strtol(eq, &end, 10);
        raw = *eq && !*end ? json_integer(p) : json_string(eq);
    } else if (!strcmp(name, "joined")) {
        raw = !strcmp(eq, "true") ? json_true() : !strcmp(eq, "false") ? json_false()
                                                                       : json_string(eq);
    } else {
        raw = json_string(eq);
    }
    *value = raw ? device_attr_value(name, raw, msg, ml) : NULL;
    json_decref(raw);
    return *value ? 0 : -1;
}
