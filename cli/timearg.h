/*
 * timearg — a time an operator gives an option (`audit list --since`,
 * `device list --seen-since`): an RFC 3339 time or a date, passed on as
 * written (the server judges it), or a duration back from now, N followed
 * by s, m, h or d, made into an RFC 3339 time here.
 */
#ifndef KMSCTL_TIMEARG_H
#define KMSCTL_TIMEARG_H

/* opt names the option in errors ("--since"). EXIT_OK with a heap string
 * in *out (caller frees), or EXIT_USAGE / EXIT_INTERNAL after reporting. */
int time_arg(const char *opt, const char *s, char **out);

#endif
