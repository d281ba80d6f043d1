/* help — program, command and action help from the tables. */
#include "help.h"

#include <string.h>

#include "command.h"
#include "config.h"
#include "version.h"

#define HELP_COL 27 /* column where option and command descriptions start */

static const char exit_status_text[] =
    "Exit status:\n"
    "  0  success\n"
    "  1  internal error (out of memory, cannot write output)\n"
    "  2  usage error: unknown command or option, missing argument, bad value,\n"
    "     no usable admin token (no request is sent)\n"
    "  3  cannot connect, timeout, or TLS failure\n"
    "  4  authentication or authorization refused (HTTP 401, 403)\n"
    "  5  server error (HTTP 5xx), or a success response that is not valid JSON\n"
    "  6  request refused for another reason (HTTP 400, 404, 409, 422, 429, ...);\n"
    "     also: a 'device import' row failed, or 'fill open' cannot open the package\n";

static void print_opts(FILE *f, const struct opt_spec *opts)
{
    for (size_t i = 0; opts && opts[i].name; i++) {
        const struct opt_spec *o = &opts[i];
        char left[64];
        /* "-v, --verbose" or "    --addr URL": long names stay aligned. */
        snprintf(left, sizeof(left), "%c%c%s--%s%s%s", o->short_name ? '-' : ' ',
                 o->short_name ? o->short_name : ' ', o->short_name ? ", " : "  ", o->name,
                 o->metavar ? " " : "", o->metavar ? o->metavar : "");
        if (strlen(left) + 4 > HELP_COL)
            fprintf(f, "  %s\n%*s%s\n", left, HELP_COL, "", o->help);
        else
            fprintf(f, "  %-*s%s\n", HELP_COL - 2, left, o->help);
    }
}

void help_print_version(FILE *f)
{
    fprintf(f, "kmsctl %s\n", QKMS_VERSION);
}

void help_print_words(FILE *f, const struct invocation *inv)
{
    fputs("kmsctl", f);
    if (inv->cmd)
        fprintf(f, " %s", inv->cmd->name);
    if (inv->act && inv->act->sub)
        fprintf(f, " %s", inv->act->sub);
}

static void print_program(FILE *f)
{
    fputs("Usage: kmsctl [OPTIONS] COMMAND [SUBCOMMAND] [ARGS] [OPTIONS]\n"
          "\n"
          "Admin CLI for the qkms key-management server.\n"
          "\n"
          "Commands:\n",
          f);
    for (size_t i = 0; kmsctl_commands[i]; i++)
        fprintf(f, "  %-*s%s\n", HELP_COL - 2, kmsctl_commands[i]->name, kmsctl_commands[i]->summary);
    fputs("\nGlobal options (before or after the command words):\n", f);
    print_opts(f, config_global_opts);
    fputs("\n"
          "The admin token is taken from the first of: --token, --token-file, KMS_TOKEN,\n"
          "KMS_TOKEN_FILE, $QKMS_STATE/admin.token (if QKMS_STATE is set and the file\n"
          "exists), ./var/admin.token. Trailing whitespace in token files is ignored.\n"
          "\n",
          f);
    fputs(exit_status_text, f);
    fputs("\nRun 'kmsctl COMMAND --help' for a command's subcommands and options.\n", f);
}

static void print_command(FILE *f, const struct command *cmd)
{
    fprintf(f, "Usage: kmsctl %s SUBCOMMAND [ARGS] [OPTIONS]\n\n%s.\n\nSubcommands:\n", cmd->name,
            cmd->summary);
    for (const struct action *a = cmd->actions; a->run; a++) {
        char left[128];
        snprintf(left, sizeof(left), "%s%s%s", a->sub, *a->usage ? " " : "", a->usage);
        fprintf(f, "  %s\n      %s\n", left, a->summary);
    }
    fprintf(f,
            "\nRun 'kmsctl %s SUBCOMMAND --help' for details, 'kmsctl --help' for global\n"
            "options and exit status.\n",
            cmd->name);
}

static void print_action(FILE *f, const struct command *cmd, const struct action *act)
{
    fprintf(f, "Usage: kmsctl %s%s%s%s%s\n\n%s.\n", cmd->name, act->sub ? " " : "",
            act->sub ? act->sub : "", *act->usage ? " " : "", act->usage, act->summary);
    if (act->description)
        fprintf(f, "\n%s", act->description);
    if (act->opts && act->opts[0].name) {
        fputs("\nOptions:\n", f);
        print_opts(f, act->opts);
    }
    fputs("\nSee 'kmsctl --help' for global options (--addr, --token-file, --json, ...)\n"
          "and exit status.\n",
          f);
}

void help_print(FILE *f, const struct invocation *inv)
{
    if (inv->act)
        print_action(f, inv->cmd, inv->act);
    else if (inv->cmd)
        print_command(f, inv->cmd);
    else
        print_program(f);
}
