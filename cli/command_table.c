/* command_table — the list of commands, in the order help shows them. */
#include "command.h"

const struct command *const kmsctl_commands[] = {
    &cmd_status,
    &cmd_token,
    &cmd_device,
    &cmd_device_type,
    &cmd_app,
    &cmd_events,
    &cmd_fill,
    &cmd_session,
    &cmd_stream,
    &cmd_policy,
    &cmd_entropy,
    &cmd_audit,
    &cmd_master,
    &cmd_ca,
    &cmd_platform,
    &cmd_firmware,
    &cmd_signing,
    &cmd_qkd,
    &cmd_completion,
    NULL,
};
