/* progress — see progress.h. */
#include "progress.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define REDRAW_NS 200000000LL

/* A progress line is on the terminal now (so a message must start on a
 * fresh line); shared with output.c through progress_interrupt. */
static _Atomic bool drawn;

struct progress {
    const char *what, *unit;
    int64_t t0, last;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct progress *progress_start(const char *what, const char *unit, bool json)
{
    struct progress *p;
    if (json || !isatty(STDERR_FILENO) || !(p = calloc(1, sizeof(*p))))
        return NULL;
    p->what = what;
    p->unit = unit;
    p->t0 = now_ns();
    return p;
}

void progress_update(struct progress *p, int64_t done, double fraction)
{
    int64_t t;
    double secs, rate;
    if (!p)
        return;
    t = now_ns();
    if (p->last && t - p->last < REDRAW_NS)
        return;
    p->last = t;
    secs = (double)(t - p->t0) / 1e9;
    if (done < 0) { /* nothing counted (yet): the time it has taken */
        flockfile(stderr);
        fprintf(stderr, "\r\033[K%s: running, %lld:%02lld", p->what, (long long)secs / 60,
                (long long)secs % 60);
        fflush(stderr);
        atomic_store(&drawn, true);
        funlockfile(stderr);
        return;
    }
    rate = secs > 0 ? (double)done / secs : 0;
    /* \r and "erase to the end of the line": one line, redrawn in place;
     * under the stream's lock, so a message from another thread never
     * lands inside it. */
    flockfile(stderr);
    fprintf(stderr, "\r\033[K%s: %lld %s, %.0f %s/s", p->what, (long long)done, p->unit, rate,
            p->unit);
    if (fraction > 0 && fraction <= 1) {
        double left = secs / fraction - secs;
        fprintf(stderr, ", %.0f%%", fraction * 100);
        if (fraction < 1 && secs >= 1)
            fprintf(stderr, ", ETA %lld:%02lld", (long long)left / 60, (long long)left % 60);
    }
    fflush(stderr);
    atomic_store(&drawn, true);
    funlockfile(stderr);
}

void progress_interrupt(void)
{
    flockfile(stderr);
    if (atomic_exchange(&drawn, false)) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    funlockfile(stderr);
}

void progress_end(struct progress *p)
{
    if (!p)
        return;
    flockfile(stderr);
    fputs("\r\033[K", stderr);
    fflush(stderr);
    atomic_store(&drawn, false);
    funlockfile(stderr);
    free(p);
}
