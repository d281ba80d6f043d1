/*
 * names — the one rule for names an operator chooses (admin token and
 * pairing policy names, device groups): 1 to max characters of [A-Za-z0-9._-],
 * the first a letter or a digit, so that a name is safe in URL paths, log
 * lines and CSV files without quoting. Pure.
 */
#ifndef QKMS_NAMES_H
#define QKMS_NAMES_H

#include <stdbool.h>
#include <stddef.h>

bool name_valid(const char *s, size_t max);

#endif
