/*
 * exitcodes — kmsctl's process exit statuses. Scripts depend on these, so
 * values never change; the help text in help.c documents them.
 */
#ifndef KMSCTL_EXITCODES_H
#define KMSCTL_EXITCODES_H

enum kmsctl_exit {
    EXIT_OK = 0,
    EXIT_INTERNAL = 1, /* out of memory, cannot write our own output */
    EXIT_USAGE = 2,    /* bad command line or no usable admin token; no request was sent */
    EXIT_CONNECT = 3,  /* connect, DNS, timeout, TLS or other transport failure */
    EXIT_AUTH = 4,     /* HTTP 401 or 403 */
    EXIT_SERVER = 5,   /* HTTP 5xx, or a success response that is not valid JSON */
    EXIT_REFUSED = 6,  /* any other 4xx; an import row failed; a fill package does not open */
};

#endif
