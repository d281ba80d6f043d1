/*
 * kmsctl — admin CLI for the qkms key-management server.
 *
 * main parses the command line against the command table, answers --help
 * and --version locally, resolves the global settings, and runs the chosen
 * action. Every failure maps to one of the exit codes in exitcodes.h.
 */
#include <stdio.h>

#include "args.h"
#include "client.h"
#include "command.h"
#include "config.h"
#include "exitcodes.h"
#include "help.h"
#include "output.h"

/* A result nobody can read is a failure (e.g. `kmsctl token create ... > full-disk`). */
static int finish(int rc)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        out_error("cannot write output");
        if (rc == EXIT_OK)
            rc = EXIT_INTERNAL;
    }
    return rc;
}

int main(int argc, char **argv)
{
    struct invocation inv;
    struct kmsctl_ctx ctx = {0};
    char msg[256];
    int rc;

    switch (args_parse(argc, argv, config_global_opts, kmsctl_commands, &inv, msg, sizeof(msg))) {
    case ARGS_HELP:
        help_print(stdout, &inv);
        return finish(EXIT_OK);
    case ARGS_VERSION:
        help_print_version(stdout);
        return finish(EXIT_OK);
    case ARGS_MAN:
        help_print_man(stdout);
        return finish(EXIT_OK);
    case ARGS_USAGE:
        out_error("%s", msg);
        fputs("Try '", stderr);
        help_print_words(stderr, &inv);
        fputs(" --help'.\n", stderr);
        return EXIT_USAGE;
    case ARGS_RUN:
        break;
    }

    rc = config_resolve(&inv.global, &ctx);
    if (rc)
        goto cleanup;
    rc = client_global_init();
    if (rc)
        goto cleanup;
    rc = inv.act->run(&ctx, &inv);
    client_global_cleanup();

cleanup:
    config_release(&ctx);
    return finish(rc);
}
