/* help — program, command and action help from the tables. */
#include "help.h"

#include <string.h>

#include "command.h"
#include "config.h"
#include "manroff.h"
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

static const char tagline[] = "Admin CLI for the qkms key-management server.";

static const char token_text[] =
    "The admin token is taken from the first of: --token, --token-file, KMS_TOKEN,\n"
    "KMS_TOKEN_FILE, $QKMS_STATE/admin.token (if QKMS_STATE is set and the file\n"
    "exists), ./var/admin.token. Trailing whitespace in token files is ignored.\n";

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
    fprintf(f, "Usage: kmsctl [OPTIONS] COMMAND [SUBCOMMAND] [ARGS] [OPTIONS]\n\n%s\n\n"
               "Commands:\n",
            tagline);
    for (size_t i = 0; kmsctl_commands[i]; i++)
        fprintf(f, "  %-*s%s\n", HELP_COL - 2, kmsctl_commands[i]->name, kmsctl_commands[i]->summary);
    fputs("\nGlobal options (before or after the command words):\n", f);
    print_opts(f, config_global_opts);
    fprintf(f, "\n%s\n", token_text);
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

/* ---- the manual page: the same texts and tables, as man(7) -------------------- */

/* An option's tag as --help shows it: "-v, --verbose", "--addr URL". */
static void opt_tag(const struct opt_spec *o, char *buf, size_t n)
{
    const char *sp = o->metavar ? " " : "", *mv = o->metavar ? o->metavar : "";
    if (o->short_name)
        snprintf(buf, n, "-%c, --%s%s%s", o->short_name, o->name, sp, mv);
    else
        snprintf(buf, n, "--%s%s%s", o->name, sp, mv);
}

static void man_opts(FILE *f, const struct opt_spec *opts)
{
    for (size_t i = 0; opts && opts[i].name; i++) {
        char tag[96];
        opt_tag(&opts[i], tag, sizeof(tag));
        man_item(f, tag, opts[i].help);
    }
}

void help_print_man(FILE *f)
{
    char line[1024];

    man_title(f, "kmsctl", 1, "qkms " QKMS_VERSION);
    man_name(f, "kmsctl", "admin CLI for the qkms key-management server");
    man_section(f, "SYNOPSIS");
    man_verbatim(f, "kmsctl [OPTIONS] COMMAND [SUBCOMMAND] [ARGS] [OPTIONS]");
    man_section(f, "DESCRIPTION");
    man_text(f, tagline);
    man_text(f, "It talks to kmsd's admin API (docs/api.md) over HTTP, HTTPS or a unix socket. "
                "Every command takes `--json`, which prints the server's JSON answer on stdout "
                "instead of the human form. `kmsctl COMMAND --help` shows what this page says "
                "of one command.");
    man_section(f, "GLOBAL OPTIONS");
    man_text(f, "Before or after the command words.");
    man_opts(f, config_global_opts);
    man_section(f, "ADMIN TOKEN");
    man_text(f, token_text);
    man_section(f, "COMMANDS");
    for (size_t i = 0; kmsctl_commands[i]; i++) {
        const struct command *cmd = kmsctl_commands[i];
        for (const struct action *a = cmd->actions; a->run; a++) {
            snprintf(line, sizeof(line), "kmsctl %s%s%s%s%s", cmd->name, a->sub ? " " : "",
                     a->sub ? a->sub : "", *a->usage ? " " : "", a->usage);
            man_subsection(f, line);
            snprintf(line, sizeof(line), "%s.", a->summary);
            man_text(f, line);
            if (a->description)
                man_verbatim(f, a->description);
            man_opts(f, a->opts);
        }
    }
    man_section(f, "EXIT STATUS");
    man_verbatim(f, exit_status_text + strlen("Exit status:\n"));
    man_section(f, "SEE ALSO");
    man_text(f, "kmsd(8), qkms-device(1); the shell completion: `kmsctl completion bash|zsh`. "
                "The qkms documentation (docs/ in the source: api.md, operations.md, "
                "devices.md).");
}
