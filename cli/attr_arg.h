/*
 * attr_arg — a device attribute's value from its text, as kmsctl reads it
 * from `--attr NAME=VALUE` and from an import file's attr.NAME column: port
 * a number (1-65535), joined a boolean (true|false), every other value a
 * string. The server checks and normalizes them (docs/gateways.md,
 * "Attributes"); this only chooses the JSON type.
 *
 * Contract: a new reference, or NULL (out of memory, or text that is not
 * UTF-8). Pure: no I/O.
 */
#ifndef KMSCTL_ATTR_ARG_H
#define KMSCTL_ATTR_ARG_H

#include <jansson.h>

json_t *attr_arg_value(const char *name, const char *text);

#endif
