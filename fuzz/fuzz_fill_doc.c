/*
 * fuzz_fill_doc — the device library's fill document reader
 * (device/qkms_device.c qkd_device_load; docs/devices.md): the JSON a
 * device is provisioned from, with hex keys, key check values (AES-CMAC)
 * and RFC 3339 validity times. A document that loads must hold 1-256 keys
 * sorted by distinct index, each 16 or 32 bytes, and answer lookups and the
 * default-key choice consistently. The same text through the firmware
 * group key reader (qkd_firmware_group_key_load): a key found has a group
 * name that fits and nothing is reported found on a failure.
 */
#include "fuzz_common.h"

#include "qkms_device.h"
#include "qkms_fw.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qkd_device *d = NULL;
    qkd_firmware_group_key g;
    char err[256];
    int def, found = -1, rc;

    rc = qkd_firmware_group_key_load((const char *)data, size, &g, &found, err, sizeof(err));
    FUZZ_CHECK(rc == QKD_OK || rc == QKD_ERR_INPUT || rc == QKD_ERR_INTERNAL);
    FUZZ_CHECK(found == 0 || found == 1);
    FUZZ_CHECK(rc == QKD_OK || found == 0);
    if (found)
        FUZZ_CHECK(strlen(g.group) >= 1 && strlen(g.group) < sizeof(g.group));

    if (qkd_device_load(&d, (const char *)data, size, err, sizeof(err)) != QKD_OK) {
        FUZZ_CHECK(d == NULL);
        return 0;
    }
    FUZZ_CHECK(d && d->nkeys >= 1 && d->nkeys <= QKD_MAX_KEYS && qkp_id_valid(d->device_id));
    for (size_t i = 0; i < d->nkeys; i++) {
        const qkd_key *k = &d->keys[i];
        FUZZ_CHECK(k->index >= 0 && k->index <= 255 && (k->len == 16 || k->len == 32) && k->key);
        FUZZ_CHECK(i == 0 || d->keys[i - 1].index < k->index);
        FUZZ_CHECK(qkd_device_key(d, k->index) == k);
    }
    def = qkd_device_default_index(d, 1795430000);
    if (def >= 0) {
        const qkd_key *k = qkd_device_key(d, def);
        FUZZ_CHECK(k && !k->local && k->not_before <= 1795430000 && 1795430000 < k->not_after);
    }
    qkd_device_free(d);
    return 0;
}
