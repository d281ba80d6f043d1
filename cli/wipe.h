/*
 * wipe — best-effort erasure of device keys that passed through kmsctl's
 * memory (fill documents parsed by jansson). Not a guarantee: libcurl,
 * jansson's parser and stdio keep transient copies we cannot reach; this
 * only shortens how long the clear keys sit in the heap.
 */
#ifndef KMSCTL_WIPE_H
#define KMSCTL_WIPE_H
#include <jansson.h>

/* Overwrites every string value inside v (recursively) with zero bytes.
 * The value must be freed, not used, afterwards. NULL is fine. */
void wipe_json(json_t *v);

#endif
