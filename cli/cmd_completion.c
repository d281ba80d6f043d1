/* cmd_completion — `kmsctl completion bash|zsh`: a shell completion script
 * made from the command table (command.h) and the option tables, so that it
 * completes exactly what the parser accepts and cannot drift from it. */
#include "command.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "exitcodes.h"
#include "output.h"

/* Words of every option table that takes a value, "--a|--b|...": the
 * script skips their values when it looks for the command words. */
static void print_value_opts(FILE *f, const struct opt_spec *o, bool *first)
{
    for (; o && o->name; o++)
        if (o->metavar) {
            fprintf(f, "%s--%s", *first ? "" : "|", o->name);
            *first = false;
            if (o->short_name)
                fprintf(f, "|-%c", o->short_name);
        }
}

/* Options whose value is a path: the script completes file names there. */
static void print_file_opts(FILE *f, const struct opt_spec *o, bool *first)
{
    for (; o && o->name; o++)
        if (o->metavar && (strstr(o->metavar, "FILE") || strstr(o->metavar, "DIR") ||
                           strstr(o->metavar, "PATH"))) {
            fprintf(f, "%s--%s", *first ? "" : "|", o->name);
            *first = false;
        }
}

/* Every table's options through print (print_value_opts or
 * print_file_opts), as one "|"-separated case pattern. */
static void print_all(FILE *f, void (*print)(FILE *, const struct opt_spec *, bool *))
{
    bool first = true;
    print(f, config_global_opts, &first);
    for (const struct command *const *c = kmsctl_commands; *c; c++)
        for (const struct action *a = (*c)->actions; a->run; a++)
            print(f, a->opts, &first);
}

static void print_opts(FILE *f, const struct opt_spec *o)
{
    for (; o && o->name; o++)
        fprintf(f, " --%s", o->name);
}

static void print_bash(FILE *f)
{
    const struct command *const *c;

    fputs("# kmsctl completion for bash, made by `kmsctl completion bash` from kmsctl's own\n"
          "# command table. Load it with\n"
          "#   source <(kmsctl completion bash)\n"
          "# or install it as /usr/share/bash-completion/completions/kmsctl.\n"
          "_kmsctl() {\n"
          "    local cur=\"${COMP_WORDS[COMP_CWORD]}\" prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n"
          "    local cmd= sub= i w opts= globals=\"",
          f);
    print_opts(f, config_global_opts);
    fputs("\"\n    case \"$prev\" in\n        ", f);
    print_all(f, print_file_opts);
    fputs(")\n            COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n        ", f);
    print_all(f, print_value_opts);
    fputs(")\n            COMPREPLY=(); return ;;\n    esac\n"
          "    for ((i = 1; i < COMP_CWORD; i++)); do\n"
          "        w=\"${COMP_WORDS[i]}\"\n"
          "        case \"$w\" in\n            ",
          f);
    print_all(f, print_value_opts);
    fputs(") ((i++)); continue ;;\n"
          "            -*) continue ;;\n"
          "        esac\n"
          "        if [[ -z $cmd ]]; then cmd=$w; elif [[ -z $sub ]]; then sub=$w; fi\n"
          "    done\n"
          "    if [[ -z $cmd ]]; then\n"
          "        COMPREPLY=($(compgen -W \"",
          f);
    for (c = kmsctl_commands; *c; c++)
        fprintf(f, "%s%s", c == kmsctl_commands ? "" : " ", (*c)->name);
    fputs(" $globals\" -- \"$cur\")); return\n    fi\n    case \"$cmd\" in\n", f);
    for (c = kmsctl_commands; *c; c++) {
        const struct action *a = (*c)->actions;
        fprintf(f, "        %s)\n", (*c)->name);
        if (!a->sub) { /* a leaf: its own options */
            fputs("            opts=\"", f);
            print_opts(f, a->opts);
            fputs("\" ;;\n", f);
            continue;
        }
        fputs("            if [[ -z $sub ]]; then\n                COMPREPLY=($(compgen -W \"", f);
        for (; a->run; a++)
            fprintf(f, "%s%s", a == (*c)->actions ? "" : " ", a->sub);
        fputs("\" -- \"$cur\")); return\n            fi\n            case \"$sub\" in\n", f);
        for (a = (*c)->actions; a->run; a++) {
            fprintf(f, "                %s) opts=\"", a->sub);
            print_opts(f, a->opts);
            fputs("\" ;;\n", f);
        }
        fputs("            esac ;;\n", f);
    }
    fputs("    esac\n"
          "    if [[ $cur == -* ]]; then\n"
          "        COMPREPLY=($(compgen -W \"$opts $globals\" -- \"$cur\"))\n"
          "    else\n"
          "        COMPREPLY=($(compgen -f -- \"$cur\"))\n"
          "    fi\n"
          "}\n"
          "complete -F _kmsctl kmsctl\n",
          f);
}

static int completion_run(const struct kmsctl_ctx *ctx, const struct invocation *inv)
{
    const char *shell = inv->pos[0];
    (void)ctx;
    if (!strcmp(shell, "bash")) {
        print_bash(stdout);
    } else if (!strcmp(shell, "zsh")) {
        /* zsh runs bash completion functions through bashcompinit. */
        fputs("#compdef kmsctl\n"
              "# kmsctl completion for zsh: source <(kmsctl completion zsh)\n"
              "autoload -U +X compinit && compinit\n"
              "autoload -U +X bashcompinit && bashcompinit\n",
              stdout);
        print_bash(stdout);
    } else {
        out_error("completion: the shell is bash or zsh, not '%s'", out_safe(shell));
        return EXIT_USAGE;
    }
    return fflush(stdout) == 0 ? EXIT_OK : EXIT_INTERNAL;
}

static const struct action completion_actions[] = {
    {
        .sub = NULL,
        .usage = "bash|zsh",
        .summary = "Print a shell completion script (made from kmsctl's command table)",
        .description = "bash: source <(kmsctl completion bash), or install the output as\n"
                       "/usr/share/bash-completion/completions/kmsctl (make install does).\n"
                       "zsh: source <(kmsctl completion zsh). No server is contacted.\n",
        .min_args = 1,
        .max_args = 1,
        .run = completion_run,
    },
    {0},
};

const struct command cmd_completion = {
    .name = "completion",
    .summary = "Print a shell completion script",
    .actions = completion_actions,
};
