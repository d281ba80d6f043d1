/* attr_arg — see attr_arg.h. */
#include "attr_arg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

json_t *attr_arg_value(const char *name, const char *text)
{
    if (!strcmp(name, "port") && text[0] >= '1' && text[0] <= '9') {
        char *end;
        long v;
        errno = 0;
        v = strtol(text, &end, 10);
        if (!errno && !*end && v >= 1 && v <= 65535)
            return json_integer(v);
    }
    if (!strcmp(name, "joined") && (!strcmp(text, "true") || !strcmp(text, "false")))
        return json_boolean(!strcmp(text, "true"));
    return json_string(text);
}
