/*
 * help — help and usage text, generated from the command table and the
 * global option table so that a new command documents itself.
 */
#ifndef KMSCTL_HELP_H
#define KMSCTL_HELP_H
#include <stdio.h>
#include "args.h"

/* Help for the deepest level the invocation names: program, command or action. */
void help_print(FILE *f, const struct invocation *inv);

/* "kmsctl token create" (as far as resolved) for "Try '... --help'" hints. */
void help_print_words(FILE *f, const struct invocation *inv);

void help_print_version(FILE *f);

/* kmsctl(1) in man(7) format (`kmsctl --man`), from the same tables and
 * texts as the help. */
void help_print_man(FILE *f);

#endif
