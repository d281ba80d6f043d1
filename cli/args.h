/*
 * args — turns argv into an invocation: the command and action named by
 * the leading words, option values, and positional arguments.
 *
 * Global options may appear anywhere; an action's own options only after
 * its words. "--opt VALUE" and "--opt=VALUE" are both accepted, and "--"
 * ends option parsing. Pure: no I/O, no environment, no allocation.
 * Everything returned points into argv or the static command table.
 */
#ifndef KMSCTL_ARGS_H
#define KMSCTL_ARGS_H
#include <stdbool.h>
#include <stddef.h>

#define ARGS_MAX_OPTS 16 /* per option table */
#define ARGS_MAX_POS 8
#define ARGS_MAX_VALUES 64 /* option values kept in order per table, see opt_get_all */

struct command;
struct action;

/* One option. Tables end with an all-zero entry. */
struct opt_spec {
    const char *name;    /* long name without "--" */
    char short_name;     /* 0 if none */
    const char *metavar; /* NULL for a flag, else the value's placeholder */
    const char *help;
};

/* Values parallel to a spec table: NULL = absent, "" = flag given. */
struct opt_values {
    const struct opt_spec *specs;
    const char *val[ARGS_MAX_OPTS]; /* the last value given */
    /* Every value of a value-taking option, in command-line order, for
     * options an action allows more than once (`--index 0 --index 2`). */
    const char *seq_val[ARGS_MAX_VALUES];
    unsigned char seq_opt[ARGS_MAX_VALUES]; /* index into specs */
    size_t nseq;
};

struct invocation {
    const struct command *cmd; /* NULL if no command word was given */
    const struct action *act;  /* NULL until the action is known */
    struct opt_values global;
    struct opt_values local;
    const char *pos[ARGS_MAX_POS];
    size_t npos;
};

enum args_result {
    ARGS_RUN,     /* cmd and act set, positional count within bounds */
    ARGS_HELP,    /* -h/--help given: show help for cmd/act as far as known */
    ARGS_VERSION, /* --version given */
    ARGS_MAN,     /* --man given: the manual page */
    ARGS_USAGE,   /* msg says what is wrong; cmd/act as far as resolved */
};

/*
 * globals must contain "help", "version" and "man" entries. The message written on
 * ARGS_USAGE names command words and option names but never echoes option
 * values or positional arguments, which may be secrets typed by mistake.
 */
enum args_result args_parse(int argc, char **argv, const struct opt_spec *globals,
                            const struct command *const *table, struct invocation *inv,
                            char *msg, size_t msg_size);

/* Value of option `name` (which must exist in v's table), NULL if absent.
 * Given more than once, the last value wins. */
const char *opt_get(const struct opt_values *v, const char *name);

/*
 * Every value given for option `name`, in order: stores up to max of them
 * in out and returns how many were given. For options that may repeat;
 * their help text says so.
 */
size_t opt_get_all(const struct opt_values *v, const char *name, const char **out, size_t max);

/* Strict decimal in [lo, hi]: digits only, no sign, spaces or suffix. */
bool arg_to_long(const char *s, long lo, long hi, long *out);

/* Whether s is one of words (NULL-terminated), exactly. */
bool arg_is_one_of(const char *s, const char *const *words);

#endif
