/*
 * firmware_spec — a release's fields checked and its targets as JSON
 * (firmware_spec.h).
 */
#include "service/firmware_spec.h"

#include <stdlib.h>
#include <string.h>

#include "qkms_fw.h"
#include "qkms_proto.h"
#include "service/device_model.h"
#include "service/firmware_keys.h"

/* {"groups":[...],"devices":[...]}, in the order given. */
json_t *firmware_targets_json(const firmware_sign_spec *sp)
{
    json_t *g = json_array(), *d = json_array();
    for (size_t i = 0; g && i < sp->ngroups; i++)
        json_array_append_new(g, json_string(sp->groups[i]));
    for (size_t i = 0; d && i < sp->ndevices; i++)
        json_array_append_new(d, json_string(sp->devices[i]));
    if (!g || !d) {
        json_decref(g);
        json_decref(d);
        return NULL;
    }
    return json_pack("{s:o,s:o}", "groups", g, "devices", d);
}

static bool version_valid(const char *v)
{
    size_t n = v ? strlen(v) : 0;
    if (n < 1 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (v[i] < 0x20 || v[i] > 0x7e || v[i] == '"' || v[i] == '\\')
            return false;
    return true;
}

qk_kind firmware_spec_check(const firmware_sign_spec *sp, qk_err *e)
{
    qk_kind k = QK_OK;
    if (!firmware_product_valid(sp->product))
        k = qk_fail(e, QK_INVALID, "invalid_product",
                    "product must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit");
    else if (!version_valid(sp->version))
        k = qk_fail(e, QK_INVALID, "invalid_version",
                    "version must be 1-64 printable ASCII characters, no quote or backslash");
    else if (sp->counter > QKF_COUNTER_MAX)
        k = qk_fail(e, QK_INVALID, "invalid_counter", "counter must be from 1 to 2^53 - 1");
    else if (sp->ndevices + sp->ngroups < 1 || sp->ndevices + sp->ngroups > FIRMWARE_MAX_TARGETS)
        k = qk_fail(e, QK_INVALID, "invalid_targets", "from 1 to %d targets (devices and groups)",
                    FIRMWARE_MAX_TARGETS);
    for (size_t i = 0; k == QK_OK && i < sp->ndevices; i++) {
        if (!qkp_id_valid(sp->devices[i]))
            k = qk_fail(e, QK_INVALID, "invalid_targets", "a device ID no device can have");
        for (size_t j = 0; k == QK_OK && j < i; j++)
            if (!strcmp(sp->devices[i], sp->devices[j]))
                k = qk_fail(e, QK_INVALID, "invalid_targets", "device '%.128s' named twice",
                            sp->devices[i]);
    }
    for (size_t i = 0; k == QK_OK && i < sp->ngroups; i++) {
        if (!device_group_valid(sp->groups[i]))
            k = qk_fail(e, QK_INVALID, "invalid_targets", "a group name no group can have");
        for (size_t j = 0; k == QK_OK && j < i; j++)
            if (!strcmp(sp->groups[i], sp->groups[j]))
                k = qk_fail(e, QK_INVALID, "invalid_targets", "group '%s' named twice",
                            sp->groups[i]);
    }
    return k;
}

static int by_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

char *firmware_targets_canonical(const firmware_sign_spec *sp)
{
    const char **g = malloc((sp->ngroups + 1) * sizeof(*g)),
               **d = malloc((sp->ndevices + 1) * sizeof(*d));
    firmware_sign_spec c = *sp;
    json_t *j = NULL;
    char *text = NULL;

    if (g && d) {
        memcpy(g, sp->groups, sp->ngroups * sizeof(*g));
        memcpy(d, sp->devices, sp->ndevices * sizeof(*d));
        qsort(g, sp->ngroups, sizeof(*g), by_str);
        qsort(d, sp->ndevices, sizeof(*d), by_str);
        c.groups = g;
        c.devices = d;
        if ((j = firmware_targets_json(&c)))
            text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    }
    json_decref(j);
    free(g);
    free(d);
    return text;
}
