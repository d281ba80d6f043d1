/* args — argv to invocation; see args.h for the rules. */
#include "args.h"
#include "output.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"

static void set_msg(char *msg, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, size, fmt, ap);
    va_end(ap);
}

/* Index of the option named by a long name of length len, or by short_name. */
static int find_opt(const struct opt_spec *specs, const char *name, size_t len, char short_name)
{
    if (!specs)
        return -1;
    for (int i = 0; specs[i].name; i++) {
        if (short_name) {
            if (specs[i].short_name == short_name)
                return i;
        } else if (strlen(specs[i].name) == len && strncmp(specs[i].name, name, len) == 0) {
            return i;
        }
    }
    return -1;
}

static const struct command *find_command(const struct command *const *table, const char *word)
{
    for (size_t i = 0; table[i]; i++)
        if (strcmp(table[i]->name, word) == 0)
            return table[i];
    return NULL;
}

static const struct action *find_action(const struct command *cmd, const char *word)
{
    for (const struct action *a = cmd->actions; a->run; a++)
        if (a->sub && strcmp(a->sub, word) == 0)
            return a;
    return NULL;
}

static bool is_leaf(const struct command *cmd)
{
    return cmd->actions[0].run && !cmd->actions[0].sub;
}

/* True if -h/--help occurs among argv[from..] before any "--". */
static bool help_ahead(int argc, char **argv, int from)
{
    for (int i = from; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            return false;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
            return true;
    }
    return false;
}

/*
 * Parses the option at argv[*i], consuming its value if it has one.
 * Returns false with msg set on error. Only the option's name is ever
 * quoted: "--tokne=SECRET" must not leak SECRET into an error message.
 */
static bool parse_option(int argc, char **argv, int *i, struct invocation *inv, char *msg,
                         size_t msg_size)
{
    const char *arg = argv[*i];
    const char *name, *inline_val = NULL;
    size_t len;
    char short_name = 0;

    if (arg[1] == '-') {
        name = arg + 2;
        const char *eq = strchr(name, '=');
        len = eq ? (size_t)(eq - name) : strlen(name);
        if (eq)
            inline_val = eq + 1;
    } else {
        if (arg[2] != '\0') { /* no bundling of short flags */
            set_msg(msg, msg_size, "unknown option starting '-%c'; give short options one at a time", arg[1]);
            return false;
        }
        name = arg + 1;
        len = 1;
        short_name = arg[1];
    }

    struct opt_values *target = NULL;
    int idx = -1;
    if (inv->act && (idx = find_opt(inv->local.specs, name, len, short_name)) >= 0)
        target = &inv->local;
    else if ((idx = find_opt(inv->global.specs, name, len, short_name)) >= 0)
        target = &inv->global;
    if (!target) {
        set_msg(msg, msg_size, "unknown option '%s%.*s'", short_name ? "-" : "--", (int)len, name);
        return false;
    }

    const struct opt_spec *spec = &target->specs[idx];
    if (!spec->metavar) {
        if (inline_val) {
            set_msg(msg, msg_size, "option '--%s' takes no value", spec->name);
            return false;
        }
        target->val[idx] = "";
        return true;
    }
    if (!inline_val) {
        if (*i + 1 >= argc) {
            set_msg(msg, msg_size, "option '--%s' needs a value (%s)", spec->name, spec->metavar);
            return false;
        }
        inline_val = argv[++*i];
    }
    if (target->nseq == ARGS_MAX_VALUES) {
        set_msg(msg, msg_size, "too many option values (at most %d)", ARGS_MAX_VALUES);
        return false;
    }
    target->seq_val[target->nseq] = inline_val;
    target->seq_opt[target->nseq++] = (unsigned char)idx;
    target->val[idx] = inline_val; /* repeated: last one wins for opt_get */
    return true;
}

/* Handles a non-option word: command, subcommand, or positional argument. */
static bool take_word(const char *word, const struct command *const *table, struct invocation *inv,
                      char *msg, size_t msg_size)
{
    if (!inv->cmd) {
        inv->cmd = find_command(table, word);
        if (!inv->cmd) {
            set_msg(msg, msg_size, "unknown command '%s'", out_safe(word));
            return false;
        }
        if (is_leaf(inv->cmd)) {
            inv->act = &inv->cmd->actions[0];
            inv->local.specs = inv->act->opts;
        }
        return true;
    }
    if (!inv->act) {
        inv->act = find_action(inv->cmd, word);
        if (!inv->act) {
            set_msg(msg, msg_size, "unknown %s subcommand '%s'", inv->cmd->name, out_safe(word));
            return false;
        }
        inv->local.specs = inv->act->opts;
        return true;
    }
    if (inv->npos >= inv->act->max_args || inv->npos >= ARGS_MAX_POS) {
        set_msg(msg, msg_size, "too many arguments (at most %zu expected)", inv->act->max_args);
        return false;
    }
    inv->pos[inv->npos++] = word;
    return true;
}

enum args_result args_parse(int argc, char **argv, const struct opt_spec *globals,
                            const struct command *const *table, struct invocation *inv,
                            char *msg, size_t msg_size)
{
    memset(inv, 0, sizeof(*inv));
    inv->global.specs = globals;
    msg[0] = '\0';

    bool options_done = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!options_done && strcmp(arg, "--") == 0) {
            options_done = true;
            continue;
        }
        bool ok, is_option = !options_done && arg[0] == '-' && arg[1] != '\0';
        if (is_option)
            ok = parse_option(argc, argv, &i, inv, msg, msg_size);
        else
            ok = take_word(arg, table, inv, msg, msg_size);
        /* A later --help beats being told off about an option or an extra
         * argument, but not about an unknown command word: there is no help
         * for that, and silently showing other help would hide the typo. */
        if (!ok)
            return (is_option || inv->act) && !options_done && help_ahead(argc, argv, i + 1)
                       ? ARGS_HELP
                       : ARGS_USAGE;
    }

    if (opt_get(&inv->global, "help"))
        return ARGS_HELP;
    if (opt_get(&inv->global, "version"))
        return ARGS_VERSION;
    if (opt_get(&inv->global, "man"))
        return ARGS_MAN;
    if (!inv->cmd) {
        set_msg(msg, msg_size, "no command given");
        return ARGS_USAGE;
    }
    if (!inv->act) {
        set_msg(msg, msg_size, "'%s' needs a subcommand", inv->cmd->name);
        return ARGS_USAGE;
    }
    if (inv->npos < inv->act->min_args) {
        set_msg(msg, msg_size, "missing argument (usage: %s %s%s%s)", inv->cmd->name,
                inv->act->sub ? inv->act->sub : "", inv->act->sub ? " " : "", inv->act->usage);
        return ARGS_USAGE;
    }
    return ARGS_RUN;
}

const char *opt_get(const struct opt_values *v, const char *name)
{
    int idx = find_opt(v->specs, name, strlen(name), 0);
    return idx >= 0 ? v->val[idx] : NULL;
}

size_t opt_get_all(const struct opt_values *v, const char *name, const char **out, size_t max)
{
    int idx = find_opt(v->specs, name, strlen(name), 0);
    size_t n = 0;
    for (size_t i = 0; idx >= 0 && i < v->nseq; i++) {
        if (v->seq_opt[i] != idx)
            continue;
        if (n < max)
            out[n] = v->seq_val[i];
        n++;
    }
    return n;
}

bool arg_is_one_of(const char *s, const char *const *words)
{
    while (*words && strcmp(*words, s) != 0)
        words++;
    return *words != NULL;
}

bool arg_to_long(const char *s, long lo, long hi, long *out)
{
    if (!s || *s < '0' || *s > '9')
        return false;
    errno = 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}
