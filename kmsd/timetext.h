/*
 * timetext — the one syntax check for the times an operator writes in a
 * query or a body: RFC 3339 "YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)",
 * or a bare date "YYYY-MM-DD" where a day is enough. Pure. The calendar
 * ("2026-02-30") is PostgreSQL's to judge when it reads the text: callers
 * map its refusal (DB_INVALID) to the same error as a bad syntax.
 */
#ifndef QKMS_TIMETEXT_H
#define QKMS_TIMETEXT_H

#include <stdbool.h>

bool timetext_valid(const char *s, bool date_ok);

#endif
