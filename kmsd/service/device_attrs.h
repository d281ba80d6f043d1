/*
 * device_attrs — a device's attributes (docs/gateways.md, "Attributes"):
 * what an app or an operator knows of a device beside its ID, e.g. a
 * gateway's MAC, serial number, uuid, IP address and port (seed 004).
 * Pure logic: checks and normal forms, no database.
 *
 * Contract:
 *  - Attributes are one flat JSON object of at most DEVICE_ATTRS_MAX
 *    members, names [a-z][a-z0-9_]{0,31}, DEVICE_ATTRS_TEXT_MAX bytes as
 *    compact JSON at most.
 *  - The known ones have a type and a normal form, so that equal values
 *    compare equal (uniqueness, search): "mac" (EUI-48, written
 *    aa:bb:cc:dd:ee:ff; also accepted with '-' or without separators, in
 *    either case), "sn" (1-64 printable ASCII, no space), "uuid" (written
 *    lowercase), "ip" (IPv4 or IPv6, as inet_ntop writes it), "port"
 *    (1-65535), "joined" (boolean: the device joined its network). Any other
 *    name takes a string of at most 256 bytes, a number or a boolean.
 *  - Failures return NULL (or -1) with a message naming the attribute; the
 *    caller answers 422 invalid_attributes.
 */
#ifndef QKMS_DEVICE_ATTRS_H
#define QKMS_DEVICE_ATTRS_H

#include <stddef.h>

#include <jansson.h>

#define DEVICE_ATTRS_MAX 32
#define DEVICE_ATTRS_TEXT_MAX 4096
#define DEVICE_ATTR_NAME_MAX 32

/* The normal form of attribute name = v (a new reference), or NULL. */
json_t *device_attr_value(const char *name, const json_t *v, char *msg, size_t ml);
/* A whole attributes object, each member in its normal form (a new
 * object), or NULL. */
json_t *device_attrs_check(const json_t *o, char *msg, size_t ml);
/* A search term "name=value" (the device list's attr query): the name and
 * the value in the normal form the attribute's type gives it (a string for
 * unknown names). 0, or -1. */
int device_attr_term(const char *term, char name[DEVICE_ATTR_NAME_MAX + 1], json_t **value,
                     char *msg, size_t ml);

#endif
