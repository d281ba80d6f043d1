/*
 * manroff — writing man(7) pages from the programs' own help tables
 * (`kmsctl --man`, `kmsd --print-man`, `qkms-device --man`), so that the
 * installed manual and --help cannot drift apart.
 *
 * Contract: every function writes to f and escapes what it is given, so
 * any help text prints as written: a backslash stays a backslash, a quote
 * a quote, a line never starts a roff request, '-' is a real minus and no
 * word is hyphenated (options, paths and variables copy and paste right).
 * In running text (man_text, man_item) `code` spans, as the help tables
 * and docs write them, become bold; lines are filled, and an empty line
 * starts a paragraph. man_verbatim keeps the lines and their indentation
 * exactly (for usage texts laid out by hand).
 */
#ifndef QKMS_MANROFF_H
#define QKMS_MANROFF_H
#include <stddef.h>
#include <stdio.h>

/* .TH: name (upper-cased here), section, and the footer's source. */
void man_title(FILE *f, const char *name, int section, const char *source);
/* The NAME section: "name \- what", both escaped. */
void man_name(FILE *f, const char *name, const char *what);
/* .SH / .SS headings. */
void man_section(FILE *f, const char *title);
void man_subsection(FILE *f, const char *title);
/* A filled paragraph (.PP first). */
void man_text(FILE *f, const char *text);
/* Lines exactly as given (.EX ... .EE). */
void man_verbatim(FILE *f, const char *text);
/* The SYNOPSIS lines of a usage text: its first len bytes, without the
 * leading "usage: " and with the lines under the first moved left as far,
 * verbatim. */
void man_synopsis(FILE *f, const char *usage, size_t len);
/* A tagged paragraph (.TP): tag in bold (an option, a command), then text. */
void man_item(FILE *f, const char *tag, const char *text);

#endif
