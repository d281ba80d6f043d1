/*
 * progress — a one-line progress display on stderr for long commands
 * (kmsctl device import, master rotate --wait), drawn only when stderr is a terminal and the
 * output is not --json, so pipes, logs and scripts never see it.
 *
 * Contract: progress_start returns NULL when nothing is to be drawn (and
 * every other function accepts NULL). progress_update redraws at most every
 * 200 ms; progress_end clears the line, so what follows (the summary)
 * starts on a clean line. A message printed meanwhile (output.h's
 * out_error, out_note, out_api_error) clears the line first
 * (progress_interrupt); the next update draws it again below.
 */
#ifndef KMSCTL_PROGRESS_H
#define KMSCTL_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

struct progress;

/* what: the command's name ("import"); unit: what is counted ("rows");
 * json: --json given. */
struct progress *progress_start(const char *what, const char *unit, bool json);
/* done items and the fraction done (of the items, or measured otherwise:
 * bytes read of a file): 0..1, or < 0 if unknown. done < 0: nothing is
 * known but that it runs (the elapsed time is drawn). */
void progress_update(struct progress *p, int64_t done, double fraction);
void progress_end(struct progress *p);
/* Clear a progress line that is drawn, if any (from any thread). */
void progress_interrupt(void);

#endif
