/*
 * qkd_json — the device library's own helpers for jansson trees that held
 * secrets (not installed: internal to libqkms-device).
 */
#ifndef QKD_JSON_H
#define QKD_JSON_H

#include <jansson.h>

/* Overwrites every string in v with zeros before it is freed: a fill
 * document's tree holds key hex (device keys, a group's firmware key, a
 * TLS private key). jansson gives each string its own buffer, owned by
 * the tree, so writing through the const pointer is sound for a tree we
 * parsed and are about to release. */
void qkd_json_wipe(json_t *v);

#endif
