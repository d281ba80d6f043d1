/* manroff — see manroff.h. */
#include "manroff.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* One character of text, escaped for roff. at_line_start: it would begin
 * an output line, where '.' and '\'' start requests. in_arg: inside a
 * quoted macro argument, where '"' would end it. */
static void put_char(FILE *f, char c, bool at_line_start, bool in_arg)
{
    if (at_line_start && (c == '.' || c == '\''))
        fputs("\\&", f);
    if (c == '\\')
        fputs("\\e", f);
    else if (c == '-')
        fputs("\\-", f);
    else if (c == '"' && in_arg)
        fputs("\\(dq", f);
    else if (c == '\n' && in_arg)
        fputc(' ', f); /* a macro argument is one line */
    else
        fputc(c, f);
}

static void put_arg(FILE *f, const char *s, bool upper)
{
    fputc('"', f);
    for (; *s; s++)
        put_char(f, upper ? (char)toupper((unsigned char)*s) : *s, false, true);
    fputc('"', f);
}

/* Running text: `code` spans in bold, other characters escaped. In filled
 * text (fill) a line's leading blanks are dropped (they would force a
 * break) and a blank line starts a new paragraph; verbatim text keeps both. */
static void put_text(FILE *f, const char *s, bool fill)
{
    bool bol = true, code = false;
    for (; *s; s++) {
        if (fill && bol && (*s == ' ' || *s == '\t'))
            continue;
        if (fill && *s == '`' && (code || strchr(s + 1, '`'))) {
            if (bol)
                fputs("\\&", f);
            fputs(code ? "\\fR" : "\\fB", f);
            code = !code;
            bol = false;
            continue;
        }
        if (*s == '\n') {
            if (fill && bol) { /* an empty line: a paragraph break */
                if (code)
                    fputs("\\fR\n", f);
                code = false;
                fputs(".PP\n", f);
                while (s[1] == '\n')
                    s++;
                continue;
            }
            fputc('\n', f);
            bol = true;
            continue;
        }
        put_char(f, *s, bol, false);
        bol = false;
    }
    if (code)
        fputs("\\fR", f);
    if (!bol)
        fputc('\n', f);
}

void man_title(FILE *f, const char *name, int section, const char *source)
{
    /* Identifiers (option names, paths, variables) must copy as written:
     * no hyphenation. The man macros set it again at every paragraph from
     * the HY register, so the register, before .TH. */
    fputs(".nr HY 0\n.TH ", f);
    put_arg(f, name, true);
    /* No date: the page is made from the binary, whose version says when. */
    fprintf(f, " \"%d\" \"\" ", section);
    put_arg(f, source, false);
    fputs(" \"qkms manual\"\n", f);
    fputs(".nh\n", f);
}

void man_section(FILE *f, const char *title)
{
    fputs(".SH ", f);
    put_arg(f, title, false);
    fputc('\n', f);
}

void man_subsection(FILE *f, const char *title)
{
    fputs(".SS ", f);
    put_arg(f, title, false);
    fputc('\n', f);
}

void man_name(FILE *f, const char *name, const char *what)
{
    man_section(f, "NAME");
    for (const char *s = name; *s; s++)
        put_char(f, *s, s == name, false);
    fputs(" \\- ", f);
    put_text(f, what, false);
}

void man_text(FILE *f, const char *text)
{
    fputs(".PP\n", f);
    put_text(f, text, true);
}

void man_verbatim(FILE *f, const char *text)
{
    fputs(".PP\n.EX\n", f);
    put_text(f, text, false);
    fputs(".EE\n", f);
}

void man_item(FILE *f, const char *tag, const char *text)
{
    fputs(".TP\n\\fB", f); /* after \fB no character starts a request */
    for (const char *s = tag; *s; s++)
        put_char(f, *s == '\n' ? ' ' : *s, false, false); /* the tag is one line */
    fputs("\\fR\n", f);
    put_text(f, text, true);
}

void man_synopsis(FILE *f, const char *usage, size_t len)
{
    static const char prefix[] = "usage: ";
    const size_t indent = sizeof(prefix) - 1;
    char *syn = malloc(len + 1), *w = syn;
    const char *r = usage, *end = usage + len;

    if (!syn)
        return;
    if ((size_t)(end - r) >= indent && !strncmp(r, prefix, indent))
        r += indent;
    while (r < end) {
        const char *eol = memchr(r, '\n', (size_t)(end - r));
        size_t n = eol ? (size_t)(eol - r) + 1 : (size_t)(end - r);
        memcpy(w, r, n);
        w += n;
        r += n;
        for (size_t k = 0; k < indent && r < end && *r == ' '; k++)
            r++;
    }
    *w = 0;
    man_verbatim(f, syn);
    free(syn);
}
