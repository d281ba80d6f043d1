/* timearg — see timearg.h. */
#include "timearg.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "exitcodes.h"
#include "output.h"

int time_arg(const char *opt, const char *s, char **out)
{
    size_t n = strlen(s);
    long v;
    *out = NULL;
    if (n >= 2 && strchr("smhd", s[n - 1]) && strspn(s, "0123456789") == n - 1) {
        char num[24];
        if (n - 1 >= sizeof(num)) {
            out_error("%s: duration too long", opt);
            return EXIT_USAGE;
        }
        memcpy(num, s, n - 1);
        num[n - 1] = 0;
        if (!arg_to_long(num, 0, 100L * 365 * 86400, &v)) {
            out_error("%s: duration out of range", opt);
            return EXIT_USAGE;
        }
        long mult = s[n - 1] == 's' ? 1 : s[n - 1] == 'm' ? 60 : s[n - 1] == 'h' ? 3600 : 86400;
        if (v > 100L * 365 * 86400 / mult) {
            out_error("%s: duration out of range", opt);
            return EXIT_USAGE;
        }
        time_t t = time(NULL) - (time_t)(v * mult);
        struct tm tm;
        char buf[64];
        if (!gmtime_r(&t, &tm) || strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
            out_error("%s: cannot compute the time", opt);
            return EXIT_INTERNAL;
        }
        *out = strdup(buf);
    } else {
        if (n < 10 || n > 40 || strspn(s, "0123456789-:.TtZz+") != n) {
            out_error("%s must be a time (2026-11-23T08:00:00Z), a date (2026-11-23) or a"
                      " duration back from now (30m, 12h, 7d)", opt);
            return EXIT_USAGE;
        }
        *out = strdup(s);
    }
    if (!*out) {
        out_error("out of memory");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}
