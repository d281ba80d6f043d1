/*
 * command — the shape of kmsctl's command table.
 *
 * A command is a word (`status`, `token`). Either it is a leaf whose single
 * action has sub == NULL (`kmsctl status`), or its actions are subcommands
 * (`kmsctl token create`). To add a command: write cmd_NAME.c defining
 * `const struct command cmd_NAME`, declare it below and list it in
 * command_table.c. Parsing, help and dispatch need no other change.
 */
#ifndef KMSCTL_COMMAND_H
#define KMSCTL_COMMAND_H
#include <stddef.h>
#include "args.h"
#include "context.h"

/*
 * Runs an action whose words, option names and positional count were
 * already checked. Validates values itself (before any request) and returns
 * an exit code from exitcodes.h, having printed whatever the user must see.
 */
typedef int (*action_fn)(const struct kmsctl_ctx *ctx, const struct invocation *inv);

struct action {
    const char *sub;             /* subcommand word; NULL for a leaf command */
    const char *usage;           /* what follows the words, e.g. "NAME --role ROLE" */
    const char *summary;         /* one line for listings */
    const char *description;     /* extra --help text, lines end in '\n'; may be NULL */
    const struct opt_spec *opts; /* zero-terminated; NULL if none */
    size_t min_args, max_args;   /* positional argument bounds */
    action_fn run;               /* NULL ends an action table */
};

struct command {
    const char *name;
    const char *summary;
    const struct action *actions;
};

extern const struct command *const kmsctl_commands[]; /* NULL-terminated */

/* For the description of an action taking an ID, which may start with '-'. */
#define DASH_NOTE "Put '--' before an ID that starts with '-'.\n"

extern const struct command cmd_status;
extern const struct command cmd_token;
extern const struct command cmd_device;
extern const struct command cmd_device_type;
extern const struct command cmd_app;
extern const struct command cmd_events;
extern const struct command cmd_fill;
extern const struct command cmd_session;
extern const struct command cmd_stream;
extern const struct command cmd_policy;
extern const struct command cmd_entropy;
extern const struct command cmd_audit;
extern const struct command cmd_master;
extern const struct command cmd_ca;
extern const struct command cmd_platform;
extern const struct command cmd_firmware;
extern const struct command cmd_signing;
extern const struct command cmd_qkd;
extern const struct command cmd_completion;

#endif
