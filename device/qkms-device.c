/*
 * qkms-device — an example device client for protocol v1: asks qkms for the
 * key of a session, or ends a session, with a device key from the device's
 * fill document (the output of `kmsctl fill open --json`, or
 * `kmsctl device fill --plaintext`).
 *
 *   qkms-device key --url URL --fill FILE --session S --peer P [--index N]
 *                   [--delivered] [--json] [--cacert F] [--timeout S]
 *   qkms-device end --url URL --fill FILE --session S [--index N] [--json]
 *                   [--cacert F] [--timeout S]
 *
 * Exit status: 0 ok; 1 internal (out of memory, cannot write output);
 * 2 usage (bad arguments, unreadable or invalid fill file: nothing was
 * sent); 3 transport failure; 4 refused with 401/403; 5 server error (5xx,
 * unexpected status) or a response that does not verify; 6 other 4xx
 * (e.g. 409 session_ended).
 *
 * Key material (fill document, device keys, session key, the output that
 * shows it) lives in the secure heap where possible and is zeroized before
 * exit; jansson's allocations are zeroed on free too.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/resource.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "hexutil.h"
#include "manroff.h"
#include "qkd_http.h"
#include "qkms_device.h"
#include "qkms_device2.h"
#include "qkms_fw.h"
#include "version.h"

/* The values and meanings of kmsctl's exit statuses (cli/exitcodes.h). */
enum {
    EXIT_OK = 0,
    EXIT_INTERNAL = 1,
    EXIT_USAGE = 2,
    EXIT_CONNECT = 3,
    EXIT_AUTH = 4,
    EXIT_SERVER = 5,
    EXIT_REFUSED = 6,
};

#define PROG "qkms-device"
#define FILL_MAX (256 * 1024)         /* 256 keys pretty-printed fit easily */
#define SECURE_HEAP_BYTES (1u << 20)  /* holds FILL_MAX, rounded up, and the keys */
#define SECURE_HEAP_MIN 16
#define PEM_MAX (64 * 1024)           /* a certificate or key file */
#define OUT_MAX 2048                  /* our longest output line, with margin */

struct options {
    const char *cmd;
    const char *url, *fill, *session, *peer, *cacert, *index_s, *timeout_s;
    const char *cert, *key, *pin;
    const char *mode_s, *source_s, *server_cert; /* protocol v2 */
    const char *epoch_s, *direction;             /* one of the session's other keys */
    int epoch;                                   /* -1: none */
    int index; /* -1: the default key */
    long timeout;
    int delivered, json, v2, peer_platform;
    int all; /* end: every session of the device, instead of --session */
    const char *seq_s, *stream;                  /* stream: the key, the stream's ID */
    int stream_end;                              /* stream --end */
    long seq;
    int mode;    /* v2: 1, 2 or 3 */
    char source; /* v2: 'a', 'b' or 'c' */
    const char *seal_in, *open_in, *out; /* key: seal or open a frame (docs/sealing.md) */
    uint64_t seal_seq;
    /* firmware open (docs/firmware.md) */
    const char *fw_in, *product, *certs, *group_key, *counter_s, *now_s;
    int no_clock;
};

/* The help text: --help prints it, --man lays it out as qkms-device(1).
 * The synopsis is everything before the first blank line. */
static const char usage_text[] =
    "usage: " PROG " key --url URL --fill FILE --session S --peer P [--index N]\n"
    "                  [--delivered | --epoch N | --direction a2b|b2a] [--json]\n"
    "                  [--seal FILE --seq N --out FILE | --open FILE --out FILE]\n"
    "                  [TLS options] [--timeout S]\n"
    "       " PROG " end --url URL --fill FILE (--session S | --all) [--index N] [--json]\n"
    "                  [TLS options] [--timeout S]\n"
    "       " PROG " key --v2 --server-cert F (--cert F [--key F] | --fill FILE)\n"
    "                  [--mode 1|2|3] [--source a|b|c] --url URL --session S --peer P ...\n"
    "       " PROG " end --v2 --server-cert F (--cert F [--key F] | --fill FILE) ...\n"
    "       " PROG " stream --url URL --fill FILE --peer P --seq N [--stream ID] [--json]\n"
    "       " PROG " stream --end --url URL --fill FILE --stream ID [--json]\n"
    "       " PROG " data --fill FILE (--seal FILE --seq N | --open FILE) --out FILE\n"
    "                  [--index N] [--json]\n"
    "       " PROG " firmware open --in PKG --out IMAGE --product P --certs PEM[,PEM]\n"
    "                  [--fill FILE] [--group-key FILE] [--counter N]\n"
    "                  [--now T | --no-clock] [--json]\n"
    "  TLS options: [--cacert F] [--cert F [--key F]] [--pin-sha256 B64[;B64...]]\n"
    "\n"
    "  key   ask qkms for the key of session S shared with device P; prints the\n"
    "        key ID and the session key in hex; with --seal or --open, uses it\n"
    "        on a frame instead (docs/sealing.md) and prints what it did\n"
    "  end   end session S (its key is destroyed); with --all, every session of\n"
    "        the device at once (a power-down)\n"
    "  stream  key N of the key stream with device P (without --stream: the pair's\n"
    "        live stream, opened if there is none; prints its ID); with --end,\n"
    "        end the stream\n"
    "  data  data between this device and the platform under a device key, no\n"
    "        session (docs/sealing.md): seal FILE to the platform (--index: which\n"
    "        key, default the newest valid one), or open what the platform sealed\n"
    "  firmware open  open a firmware package (docs/firmware.md) as this device\n"
    "        would: unwrap its key (--fill, --group-key), check the signature\n"
    "        against the pinned certificates, product, target, counter and\n"
    "        not_before, and write the image to --out only when all passed\n"
    "        (streamed through a staging file; prints the manifest)\n"
    "\n"
    "  --v2           device protocol v2 (docs/protocol.md): the request is signed\n"
    "                 with the device's key (--cert/--key, modes 1 and 2) or sealed\n"
    "                 under a pre-filled key (--fill, mode 3); the answer is signed\n"
    "                 by the platform and checked against --server-cert\n"
    "  --server-cert F  the platform's signing and key-agreement certificates\n"
    "                 (PEM, both in one file), pinned at provisioning\n"
    "  --mode N       v2 authentication: 1 the certificate in the request (default\n"
    "                 with --cert), 2 the certificate on record, 3 a pre-filled key\n"
    "                 (default with --fill); with --cert the device ID is its CN\n"
    "  --source S     v2 key source: a (both sides' randoms, default), b (this\n"
    "                 device's random), c (the platform's key)\n"
    "  --peer-platform  v2: the platform itself is the peer (a device-platform\n"
    "                 channel key), instead of --peer\n"
    "\n"
    "  --seal FILE    key: seal FILE's bytes to P under the key, as sequence\n"
    "                 number --seq (never twice under one key), into --out\n"
    "  --open FILE    key: open the frame in FILE that P sealed under the key\n"
    "                 (no replay window: a one-off open), its plaintext into --out\n"
    "  --out FILE     where --seal and --open write (created mode 0600)\n"
    "  --seq N        stream: which key (0, 1, ...); --seal: the frame's sequence\n"
    "                 number (0 to 2^63 - 1)\n"
    "  --stream ID    stream: its ID, as the first answer gave it\n"
    "  --end          stream: end it (its keys are destroyed)\n"
    "\n"
    "  --in PKG       firmware: the package\n"
    "  --product P    firmware: this device's product line\n"
    "  --certs F[,F]  firmware: the pinned firmware certificates (PEM files)\n"
    "  --group-key F  firmware: the device's group firmware key (one), JSON\n"
    "                 {\"group\",\"key_id\" (32 hex),\"key\" (64 hex)} or a fill\n"
    "                 document with it; default: the one in --fill, if any\n"
    "  --counter N    firmware: the installed counter (default 0)\n"
    "  --now T        firmware: Unix seconds for not_before (default: the clock)\n"
    "  --no-clock     firmware: no not_before check\n"
    "  --url URL      qkms base URL, e.g. https://kms.example:8443\n"
    "  --fill FILE    the device's fill document (kmsctl fill open --json); - for stdin\n"
    "  --index N      device key index (default: the highest one valid now)\n"
    "  --delivered    ask for single-transfer delivery\n"
    "  --epoch N      the session's key of epoch N (N+1 past its current epoch\n"
    "                 re-keys it), protocol v1\n"
    "  --direction D  the key of direction a2b or b2a (a: the party whose device ID\n"
    "                 sorts first), of --epoch or epoch 0; protocol v1\n"
    "  --json         JSON output (errors too)\n"
    "  --cacert F     CA bundle for https (default: the system store)\n"
    "  --cert F       client certificate (PEM) for mutual TLS; --key F its key\n"
    "                 (PEM; default: in the --cert file)\n"
    "  --pin-sha256 P the server's public key must be this one: base64 of the\n"
    "                 SHA-256 of its SubjectPublicKeyInfo (';' separates several)\n"
    "  --timeout S    seconds for the whole request (default 30)\n"
    "  --man          print this manual (man(7) format; " PROG " --man | man -l -)\n"
    "\n"
    "Exit status: 0 ok, 1 internal error, 2 usage, 3 transport failure,\n"
    "4 refused (401/403), 5 server error or unverifiable response (or a frame\n"
    "that does not open), 6 other 4xx.\n";

static void usage(FILE *f) { fputs(usage_text, f); }

static void print_man(FILE *f)
{
    const char *rest = strstr(usage_text, "\n\n");
    man_title(f, PROG, 1, "qkms " QKMS_VERSION);
    man_name(f, PROG, "a device's side of the qkms device protocol, from the command line");
    man_section(f, "SYNOPSIS");
    man_synopsis(f, usage_text, (size_t)(rest - usage_text) + 1);
    man_section(f, "DESCRIPTION");
    man_text(f, "What a device's secure processing unit does with libqkms-device: it asks "
                "qkms for the key of a session shared with a peer device, or ends the "
                "session, authenticating with the device keys of its fill document (protocol "
                "v1) or its certificate (v2). For provisioning stations, integration tests and "
                "scripts; the protocol is in docs/protocol.md.");
    /* The options up to "Exit status:", which has a section of its own. */
    {
        const char *ex = strstr(rest, "\nExit status: ");
        char *opts = ex ? strndup(rest + 2, (size_t)(ex - rest) - 1) : NULL;
        man_section(f, "OPTIONS");
        man_verbatim(f, opts ? opts : rest + 2);
        free(opts);
        if (ex && opts) {
            man_section(f, "EXIT STATUS");
            man_text(f, ex + 1 + strlen("Exit status: "));
        }
    }
    man_section(f, "SEE ALSO");
    man_text(f, "kmsctl(1), kmsd(8); docs/protocol.md and docs/devices.md in the qkms "
                "documentation.");
}

static void errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void errorf(const char *fmt, ...)
{
    va_list ap;
    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Server text onto a terminal: no control characters (escape sequences). */
static void put_safe(FILE *f, const char *s)
{
    for (; *s; s++)
        fputc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, f);
}

/* ---- jansson allocations zeroed on free ---------------------------------- */

/* The fill document's key hex passes through jansson's lexer buffers, which
 * qkd_device_load cannot reach; a size header lets free zero every block. */
#define ZHDR 16 /* keeps malloc's alignment */

static void *zmalloc(size_t n)
{
    unsigned char *p = n <= SIZE_MAX - ZHDR ? malloc(n + ZHDR) : NULL;
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof(n));
    return p + ZHDR;
}

static void zfree(void *ptr)
{
    size_t n;
    if (!ptr)
        return;
    unsigned char *p = (unsigned char *)ptr - ZHDR;
    memcpy(&n, p, sizeof(n));
    OPENSSL_cleanse(ptr, n);
    free(p);
}

/* ---- arguments ----------------------------------------------------------- */

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = s && *s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* "B64[;B64...]", each the 44-character base64 of a SHA-256 digest,
 * optionally prefixed "sha256//" as libcurl writes them. */
static int pins_valid(const char *s)
{
    while (*s) {
        size_t l = strcspn(s, ";");
        if (l >= 8 && !strncmp(s, "sha256//", 8)) {
            s += 8;
            l -= 8;
        }
        if (l != 44 || s[43] != '=')
            return 0;
        for (size_t i = 0; i < 43; i++)
            if (!isalnum((unsigned char)s[i]) && s[i] != '+' && s[i] != '/')
                return 0;
        s += l;
        if (*s == ';' && !*++s)
            return 0;
    }
    return 1;
}

static int common_checks(struct options *o, int is_key);
static int parse_v2(struct options *o, int is_key);
static int parse_stream(struct options *o);

static int parse_args(int argc, char **argv, struct options *o)
{
    enum { K = 1, E = 2, S = 4, F = 8, D = 16 }; /* the commands an option is for */
    struct {
        const char *name;
        const char **value; /* NULL: a flag */
        int *flag;
        int cmds;
    } specs[] = {
        {"url", &o->url, NULL, K | E | S},    {"fill", &o->fill, NULL, K | E | S | F | D},
        {"session", &o->session, NULL, K | E}, {"peer", &o->peer, NULL, K | S},
        {"index", &o->index_s, NULL, K | E | S | D}, {"cacert", &o->cacert, NULL, K | E | S},
        {"timeout", &o->timeout_s, NULL, K | E | S}, {"delivered", NULL, &o->delivered, K},
        {"json", NULL, &o->json, K | E | S | F | D}, {"cert", &o->cert, NULL, K | E | S},
        {"key", &o->key, NULL, K | E | S},    {"pin-sha256", &o->pin, NULL, K | E | S},
        {"v2", NULL, &o->v2, K | E},          {"mode", &o->mode_s, NULL, K | E},
        {"source", &o->source_s, NULL, K},    {"server-cert", &o->server_cert, NULL, K | E},
        {"peer-platform", NULL, &o->peer_platform, K},
        {"all", NULL, &o->all, E},
        {"epoch", &o->epoch_s, NULL, K},      {"direction", &o->direction, NULL, K},
        {"seq", &o->seq_s, NULL, K | S | D},  {"stream", &o->stream, NULL, S},
        {"seal", &o->seal_in, NULL, K | D},   {"open", &o->open_in, NULL, K | D},
        {"out", &o->out, NULL, K | F | D},    {"in", &o->fw_in, NULL, F},
        {"product", &o->product, NULL, F},    {"certs", &o->certs, NULL, F},
        {"group-key", &o->group_key, NULL, F}, {"counter", &o->counter_s, NULL, F},
        {"now", &o->now_s, NULL, F},          {"no-clock", NULL, &o->no_clock, F},
        {"end", NULL, &o->stream_end, S},
    };
    const size_t nspecs = sizeof(specs) / sizeof(specs[0]);
    int cmd_bit;

    o->cmd = argv[1];
    cmd_bit = !strcmp(o->cmd, "key") ? K : !strcmp(o->cmd, "end") ? E
              : !strcmp(o->cmd, "stream")                      ? S
              : !strcmp(o->cmd, "firmware")                    ? F
              : !strcmp(o->cmd, "data")                        ? D
                                                               : 0;
    if (!cmd_bit) {
        errorf("unknown command '%s' (key, end, stream, firmware or data)", o->cmd);
        return -1;
    }
    if (cmd_bit == F && (argc < 3 || strcmp(argv[2], "open") != 0)) {
        errorf("firmware: the only action is 'open'");
        return -1;
    }
    int is_key = cmd_bit == K;
    for (int i = cmd_bit == F ? 3 : 2; i < argc; i++) {
        const char *a = argv[i], *eq;
        size_t j, nl;
        if (strncmp(a, "--", 2) != 0) {
            errorf("unexpected argument '%s'", a);
            return -1;
        }
        a += 2;
        eq = strchr(a, '=');
        nl = eq ? (size_t)(eq - a) : strlen(a);
        for (j = 0; j < nspecs; j++) {
            if (strlen(specs[j].name) == nl && strncmp(specs[j].name, a, nl) == 0)
                break;
        }
        if (j == nspecs || !(specs[j].cmds & cmd_bit)) {
            errorf("unknown option '--%.*s' for %s", (int)nl, a, o->cmd);
            return -1;
        }
        if (!specs[j].value) {
            if (eq) {
                errorf("--%s takes no value", specs[j].name);
                return -1;
            }
            *specs[j].flag = 1;
            continue;
        }
        if (*specs[j].value) {
            errorf("--%s given twice", specs[j].name);
            return -1;
        }
        if (eq) {
            *specs[j].value = eq + 1;
        } else if (i + 1 < argc) {
            *specs[j].value = argv[++i];
        } else {
            errorf("--%s needs a value", specs[j].name);
            return -1;
        }
    }
    if (cmd_bit == S)
        return parse_stream(o);
    if (cmd_bit == D) {
        char *end = NULL;
        if (!o->fill || !o->out || !o->seal_in == !o->open_in || !o->seal_in != !o->seq_s) {
            errorf("data needs --fill, --out, and --seal FILE --seq N or --open FILE");
            return -1;
        }
        if (o->seq_s) {
            errno = 0;
            o->seal_seq = strtoull(o->seq_s, &end, 10);
            if (errno || !*o->seq_s || *end || !isdigit((unsigned char)o->seq_s[0]) ||
                o->seal_seq > QKS_PARTY_MAX_SEQ) {
                errorf("--seq must be an integer from 0 to 2^63 - 1 (the rest is the "
                       "platform's)");
                return -1;
            }
        }
        o->index = -1;
        if (o->index_s && parse_long(o->index_s, 0, 255, &(long){0}) != 0) {
            errorf("--index must be an integer from 0 to 255");
            return -1;
        }
        if (o->index_s)
            o->index = atoi(o->index_s);
        return 0;
    }
    if (cmd_bit == F) {
        if (!o->fw_in || !o->out || !o->product || !o->certs || (!o->fill && !o->group_key) ||
            (o->now_s && o->no_clock)) {
            errorf("firmware open needs --in, --out, --product, --certs and --fill or "
                   "--group-key (--now or --no-clock, not both)");
            return -1;
        }
        return 0;
    }
    o->epoch = -1;
    if (o->epoch_s) {
        long ep;
        if (parse_long(o->epoch_s, 0, QKP_MAX_EPOCH, &ep) != 0) {
            errorf("--epoch must be an integer from 0 to %d", QKP_MAX_EPOCH);
            return -1;
        }
        o->epoch = (int)ep;
    }
    if (o->direction && strcmp(o->direction, "a2b") && strcmp(o->direction, "b2a")) {
        errorf("--direction must be a2b or b2a");
        return -1;
    }
    if ((o->epoch_s || o->direction) && (o->delivered || o->v2)) {
        errorf("--epoch and --direction are for protocol v1 in session mode (not --delivered, "
               "not --v2)");
        return -1;
    }
    if (o->seal_in || o->open_in || o->out || o->seq_s) {
        char *end = NULL;
        if ((o->seal_in && o->open_in) || !o->out || !o->seal_in != !o->seq_s || o->v2) {
            errorf("--seal FILE --seq N --out FILE, or --open FILE --out FILE (protocol v1)");
            return -1;
        }
        if (o->seq_s) {
            errno = 0;
            o->seal_seq = strtoull(o->seq_s, &end, 10);
            if (errno || !*o->seq_s || *end || !isdigit((unsigned char)o->seq_s[0]) ||
                o->seal_seq > QKS_PARTY_MAX_SEQ) {
                errorf("--seq must be an integer from 0 to 2^63 - 1 (the rest is the "
                       "platform's)");
                return -1;
            }
        }
    }
    if (o->v2)
        return parse_v2(o, is_key);
    if (o->mode_s || o->source_s || o->server_cert || o->peer_platform) {
        errorf("--mode, --source, --server-cert and --peer-platform go with --v2");
        return -1;
    }
    if (!o->url || !*o->url || !o->fill || !o->session == !o->all || (is_key && !o->peer)) {
        errorf(is_key ? "key needs --url, --fill, --session and --peer"
                      : "end needs --url, --fill and one of --session and --all");
        return -1;
    }
    return common_checks(o, is_key);
}

/* stream: --peer and --seq (with --stream or not), or --end with --stream. */
static int parse_stream(struct options *o)
{
    o->epoch = -1;
    if (!o->url || !*o->url || !o->fill ||
        (o->stream_end ? !o->stream || o->peer || o->seq_s : !o->peer || !o->seq_s)) {
        errorf("stream needs --url, --fill, and --peer with --seq (and --stream once known), "
               "or --end with --stream");
        return -1;
    }
    if (o->stream && !qkp_id_valid(o->stream)) {
        errorf("--stream: the stream ID the platform gave (a UUID)");
        return -1;
    }
    if (o->seq_s && parse_long(o->seq_s, 0, LONG_MAX / 2, &o->seq) != 0) {
        errorf("--seq must be an integer from 0");
        return -1;
    }
    if (o->peer && !qkp_id_valid(o->peer)) {
        errorf("--peer: 1-128 printable ASCII characters except / \\ %% ? #");
        return -1;
    }
    return common_checks(o, 0);
}

/* The checks v1 and v2 share: URL, TLS options, IDs, index, timeout. */
static int common_checks(struct options *o, int is_key)
{
    long v;

    /* libcurl would refuse other schemes too, but only after we built and
     * tried to send the request: say so as a usage error. */
    if (strncasecmp(o->url, "http://", 7) != 0 && strncasecmp(o->url, "https://", 8) != 0) {
        errorf("--url must be an http:// or https:// URL");
        return -1;
    }
    if (o->key && !o->cert) {
        errorf("--key goes with --cert");
        return -1;
    }
    /* (With --v2, --cert is the device's identity first: over http it is
     * only that.) */
    if (((o->cert && !o->v2) || o->pin || o->cacert) && strncasecmp(o->url, "https://", 8) != 0) {
        errorf("--cacert, --cert and --pin-sha256 need an https:// URL");
        return -1;
    }
    if (o->pin && !pins_valid(o->pin)) {
        errorf("--pin-sha256: base64 SHA-256 digests (44 characters each), ';' between them");
        return -1;
    }
    if (!o->all && o->session && !qkp_id_valid(o->session)) {
        errorf("--session: 1-128 printable ASCII characters except / \\ %% ? #");
        return -1;
    }
    if (is_key && o->peer && !qkp_id_valid(o->peer)) {
        errorf("--peer: 1-128 printable ASCII characters except / \\ %% ? #");
        return -1;
    }
    o->index = -1;
    if (o->index_s) {
        if (parse_long(o->index_s, 0, 255, &v) != 0) {
            errorf("--index must be an integer from 0 to 255");
            return -1;
        }
        o->index = (int)v;
    }
    o->timeout = QKD_HTTP_DEFAULT_TIMEOUT;
    if (o->timeout_s && parse_long(o->timeout_s, 1, 3600, &o->timeout) != 0) {
        errorf("--timeout must be a number of seconds from 1 to 3600");
        return -1;
    }
    return 0;
}

static int parse_v2(struct options *o, int is_key)
{
    long m;
    if (!o->url || !*o->url || !o->session == !o->all ||
        (is_key && !o->peer == !o->peer_platform) || !o->server_cert) {
        errorf("--v2 %s needs --url, --server-cert and %s", o->cmd,
               is_key ? "--session and one of --peer and --peer-platform"
                      : "one of --session and --all");
        return -1;
    }
    if (o->peer_platform && o->delivered) {
        errorf("--peer-platform has no --delivered mode (the platform keeps the key)");
        return -1;
    }
    if (!!o->cert == !!o->fill) {
        errorf("--v2 needs the device's --cert (modes 1 and 2) or its --fill (mode 3), one of them");
        return -1;
    }
    o->mode = o->cert ? 1 : 3;
    if (o->mode_s) {
        if (parse_long(o->mode_s, 1, 3, &m) != 0) {
            errorf("--mode must be 1, 2 or 3");
            return -1;
        }
        o->mode = (int)m;
    }
    if ((o->mode == 3) != (o->fill != NULL)) {
        errorf("--mode 3 goes with --fill, modes 1 and 2 with --cert");
        return -1;
    }
    if (o->index_s && o->mode != 3) {
        errorf("--index is for mode 3 (a pre-filled key)");
        return -1;
    }
    o->source = 'a';
    if (o->source_s) {
        if (strlen(o->source_s) != 1 || !strchr("abc", o->source_s[0])) {
            errorf("--source must be a, b or c");
            return -1;
        }
        o->source = o->source_s[0];
    }
    return common_checks(o, is_key);
}

/* ---- the fill file ------------------------------------------------------- */

/* Reads path ("-": stdin) into a secure-heap buffer of FILL_MAX + 1 bytes
 * with read(2), so no stdio buffer keeps a copy of the keys. */
static int read_file(const char *path, size_t max, bool secure, const char *what, char **buf,
                     size_t *len);

static int read_fill(const char *path, char **buf, size_t *len)
{
    return read_file(path, FILL_MAX, true, "a fill document", buf, len);
}

/* A certificate file (public: the plain heap) or a private key file (the
 * secure heap), at most PEM_MAX bytes; free with free_file. */
static void free_file(char *buf, bool secure)
{
    if (buf && secure)
        OPENSSL_secure_clear_free(buf, PEM_MAX + 1);
    else
        free(buf);
}

static int read_file(const char *path, size_t max, bool secure, const char *what, char **buf,
                     size_t *len)
{
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    int rc = EXIT_USAGE;

    *len = 0;
    *buf = NULL;
    if (fd < 0) {
        errorf("%s: %s", path, strerror(errno));
        return EXIT_USAGE;
    }
    if (!(*buf = secure ? OPENSSL_secure_malloc(max + 1) : malloc(max + 1))) {
        errorf("out of %smemory", secure ? "secure " : "");
        rc = EXIT_INTERNAL;
        goto cleanup;
    }
    for (;;) {
        ssize_t n = read(fd, *buf + *len, max + 1 - *len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            errorf("%s: %s", path, strerror(errno));
            goto cleanup;
        }
        if (n == 0)
            break;
        *len += (size_t)n;
        if (*len > max) {
            errorf("%s: larger than %zu bytes: not %s", path, max, what);
            goto cleanup;
        }
    }
    rc = EXIT_OK;

cleanup:
    if (fd != STDIN_FILENO)
        close(fd);
    if (rc != EXIT_OK && *buf) {
        if (secure)
            OPENSSL_secure_clear_free(*buf, max + 1);
        else
            free(*buf);
        *buf = NULL;
        *len = 0;
    }
    return rc;
}

/* ---- output -------------------------------------------------------------- */

static int write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDOUT_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void hex(const uint8_t *in, size_t len, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = d[in[i] >> 4];
        out[2 * i + 1] = d[in[i] & 15];
    }
    out[2 * len] = 0;
}

/*
 * The result, formatted in the secure heap and written with write(2): the
 * session key must not linger in stdio's buffer. All strings were checked
 * by the library (IDs, delivery), so only IDs need JSON quoting.
 */
/* ---- firmware open --------------------------------------------------------- */

static int write_fd(int fd, const uint8_t *d, size_t n)
{
    while (n) {
        ssize_t w = write(fd, d, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        d += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fw_sink(void *arg, const uint8_t *d, size_t n) { return write_fd(*(int *)arg, d, n); }

/* A PEM certificate file as DER (malloc'd). */
static int read_cert_der(const char *path, uint8_t **der, size_t *len)
{
    char *pem = NULL;
    size_t pl;
    BIO *b = NULL;
    X509 *x = NULL;
    unsigned char *p = NULL;
    int n, rc;

    if ((rc = read_file(path, PEM_MAX, false, "a certificate", &pem, &pl)) != EXIT_OK)
        return rc;
    rc = EXIT_USAGE;
    if (!(b = BIO_new_mem_buf(pem, (int)pl)) || !(x = PEM_read_bio_X509(b, NULL, NULL, NULL)) ||
        (n = i2d_X509(x, &p)) <= 0) {
        errorf("%s: not a PEM certificate", path);
        goto out;
    }
    *der = p;
    *len = (size_t)n;
    rc = EXIT_OK;
out:
    X509_free(x);
    BIO_free(b);
    free(pem);
    return rc;
}

/* A group key file: a fill document with "firmware_group_key", or the key
 * alone (qkd_firmware_group_key_load). */
static int read_group_key(const char *path, qkd_firmware_group_key *g)
{
    char *text = NULL, err[200];
    size_t tl;
    int rc, found = 0;

    if ((rc = read_file(path, FILL_MAX, true, "a group key", &text, &tl)) != EXIT_OK)
        return rc;
    rc = qkd_firmware_group_key_load(text, tl, g, &found, err, sizeof(err));
    OPENSSL_secure_clear_free(text, FILL_MAX + 1);
    if (rc != QKD_OK || !found) {
        errorf("%s: %s", path, rc != QKD_OK ? err : "no firmware_group_key in it");
        return rc == QKD_ERR_INTERNAL ? EXIT_INTERNAL : EXIT_USAGE;
    }
    return EXIT_OK;
}

/* fill_gk: the group key of the --fill document, or NULL. */
static int run_firmware(const struct options *o, const qkd_device *dev,
                        const qkd_firmware_group_key *fill_gk, int64_t now)
{
    qkd_firmware_policy p = {0};
    qkd_firmware_group_key *g = NULL;
    qkd_firmware_manifest m;
    qkd_firmware_stream *s = NULL;
    uint8_t *certs[8] = {0}, *buf = NULL;
    size_t cert_lens[8], ncerts = 0;
    char tmp[4096], err[256], sha[65], signer[65];
    int in = -1, out = -1, rc = EXIT_USAGE, q = QKD_OK;
    bool made_tmp = false;
    char *list = NULL, *tok, *save = NULL;

    if (snprintf(tmp, sizeof(tmp), "%s.part", o->out) >= (int)sizeof(tmp)) {
        errorf("--out: path too long");
        return EXIT_USAGE;
    }
    if (!(list = strdup(o->certs))) {
        errorf("out of memory");
        return EXIT_INTERNAL;
    }
    for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (ncerts == 8) {
            errorf("--certs: at most 8");
            goto out;
        }
        if ((rc = read_cert_der(tok, &certs[ncerts], &cert_lens[ncerts])) != EXIT_OK)
            goto out;
        ncerts++;
    }
    rc = EXIT_USAGE;
    if (o->group_key) {
        if (!(g = OPENSSL_secure_zalloc(sizeof(*g)))) {
            errorf("out of secure memory");
            rc = EXIT_INTERNAL;
            goto out;
        }
        if ((rc = read_group_key(o->group_key, g)) != EXIT_OK)
            goto out;
        rc = EXIT_USAGE;
    }
    p.device = dev;
    p.groups = g ? g : fill_gk;
    p.ngroups = p.groups ? 1 : 0;
    p.product = o->product;
    p.certs = (const uint8_t *const *)certs;
    p.cert_lens = cert_lens;
    p.ncerts = ncerts;
    p.now = o->no_clock ? -1 : now;
    if (o->counter_s || o->now_s) {
        long long v;
        char *end;
        if (o->counter_s) {
            errno = 0;
            v = strtoll(o->counter_s, &end, 10);
            if (errno || *end || !*o->counter_s || v < 0) {
                errorf("--counter must be an integer from 0");
                goto out;
            }
            p.counter = (uint64_t)v;
        }
        if (o->now_s) {
            errno = 0;
            v = strtoll(o->now_s, &end, 10);
            if (errno || *end || !*o->now_s || v < 0) {
                errorf("--now must be Unix seconds");
                goto out;
            }
            p.now = v;
        }
    }
    if ((in = open(o->fw_in, O_RDONLY | O_CLOEXEC)) < 0) {
        errorf("%s: %s", o->fw_in, strerror(errno));
        goto out;
    }
    /* The image goes to a staging file, renamed to --out only once every
     * check passed (docs/firmware.md: the hash is known at the end). Made
     * here and now (O_EXCL, no symlink followed): one left behind by
     * someone else is not ours to write through or to delete. */
    if ((out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600)) < 0) {
        errorf("%s: %s%s", tmp, strerror(errno),
               errno == EEXIST ? " (another open's staging file, or one left over: remove it)"
                               : "");
        goto out;
    }
    made_tmp = true;
    rc = EXIT_INTERNAL;
    if (!(buf = malloc(65536)) ||
        (q = qkd_firmware_stream_new(&s, &p, fw_sink, &out, err, sizeof(err))) != QKD_OK) {
        errorf("%s", buf ? err : "out of memory");
        goto out;
    }
    for (;;) {
        ssize_t n = read(in, buf, 65536);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            errorf("%s: %s", o->fw_in, strerror(errno));
            rc = EXIT_USAGE;
            goto out;
        }
        if (n == 0)
            break;
        if ((q = qkd_firmware_stream_update(s, buf, (size_t)n, err, sizeof(err))) != QKD_OK)
            break;
    }
    if (q == QKD_OK)
        q = qkd_firmware_stream_final(s, &m, err, sizeof(err));
    if (q != QKD_OK) {
        errorf("%s", err);
        /* a staging file that cannot be written is ours, not the package's */
        rc = q == QKD_ERR_INTERNAL || !strncmp(err, "sink:", 5) ? EXIT_INTERNAL : EXIT_SERVER;
        goto out;
    }
    if (fsync(out) != 0 || close(out) != 0) {
        out = -1;
        errorf("%s: %s", tmp, strerror(errno));
        goto out;
    }
    out = -1;
    if (rename(tmp, o->out) != 0) {
        errorf("%s: %s", o->out, strerror(errno));
        goto out;
    }
    qkms_hex_encode(m.image_sha256, 32, sha);
    qkms_hex_encode(m.signer, 32, signer);
    {
        json_t *j = json_pack("{s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:s?,s:I,s:s}", "product", m.product,
                              "version", m.version, "counter", (json_int_t)m.counter,
                              "image_size", (json_int_t)m.image_size, "image_sha256", sha,
                              "package_id", m.package_id, "target",
                              m.kind == QKF_KIND_GROUP ? "group" : "device", "group",
                              m.kind == QKF_KIND_GROUP ? m.group : NULL, "not_before",
                              (json_int_t)m.not_before, "signer", signer);
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        if (!text) {
            json_decref(j);
            errorf("out of memory");
            goto out;
        }
        if (o->json)
            printf("%s\n", text);
        else
            printf("opened %s %s (counter %llu, %llu bytes) into %s; store the counter before "
                   "booting it\n",
                   m.product, m.version, (unsigned long long)m.counter,
                   (unsigned long long)m.image_size, o->out);
        zfree(text);
        json_decref(j);
    }
    rc = EXIT_OK;
out:
    if (out >= 0)
        close(out);
    if (rc != EXIT_OK && made_tmp)
        unlink(tmp); /* nothing of a refused package stays */
    if (in >= 0)
        close(in);
    qkd_firmware_stream_free(s);
    free(buf);
    free(list);
    for (size_t i = 0; i < ncerts; i++)
        OPENSSL_free(certs[i]);
    if (g)
        OPENSSL_secure_clear_free(g, sizeof(*g));
    return rc;
}

/* One frame operation between files (data, and key --seal/--open): the
 * input read (a plaintext or a frame), op run into a buffer, the output
 * written whole, then report prints what was done (never a key). */
typedef struct {
    bool seal;
    size_t in_len, out_len;
    uint64_t seq;  /* seal: the one given; open: the frame's */
    int index;     /* data: the device key's index */
} frame_io;
typedef int (*frame_op)(void *arg, frame_io *io, const uint8_t *in, uint8_t *out, size_t cap,
                        char *err, size_t errlen);
typedef void (*frame_report)(void *arg, const struct options *o, const frame_io *io);

static int frame_file(const struct options *o, frame_op op, frame_report report, void *arg)
{
    frame_io io = {.seal = o->seal_in != NULL, .seq = o->seal_seq, .index = o->index};
    const char *in_path = io.seal ? o->seal_in : o->open_in;
    size_t max = io.seal ? QKS_MAX_PLAINTEXT : QKS_MAX_PLAINTEXT + QKS_OVERHEAD, cap = 0;
    char *in = NULL, err[256];
    uint8_t *out = NULL;
    int fd = -1, q, rc;

    if ((rc = read_file(in_path, max, false, io.seal ? "a plaintext" : "a frame", &in,
                        &io.in_len)) != EXIT_OK)
        return rc;
    rc = EXIT_INTERNAL;
    cap = io.seal ? io.in_len + QKS_OVERHEAD : io.in_len;
    if (!(out = malloc(cap ? cap : 1))) {
        errorf("out of memory");
        goto cleanup;
    }
    if ((q = op(arg, &io, (const uint8_t *)in, out, cap, err, sizeof(err))) != QKD_OK) {
        errorf("%s", err);
        rc = q == QKD_ERR_INTERNAL ? EXIT_INTERNAL : io.seal ? EXIT_USAGE : EXIT_SERVER;
        goto cleanup;
    }
    if ((fd = open(o->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0 ||
        write_fd(fd, out, io.out_len) != 0) {
        errorf("%s: %s", o->out, strerror(errno));
        rc = EXIT_USAGE;
        goto cleanup;
    }
    if (close(fd) != 0) {
        fd = -1;
        errorf("%s: %s", o->out, strerror(errno));
        goto cleanup;
    }
    fd = -1;
    report(arg, o, &io);
    rc = EXIT_OK;
cleanup:
    if (fd >= 0)
        close(fd);
    if (out) {
        OPENSSL_cleanse(out, cap ? cap : 1);
        free(out);
    }
    if (in) {
        OPENSSL_cleanse(in, io.in_len);
        free(in);
    }
    return rc;
}

/* data --seal / --open: under one of the device's keys, with the platform. */
struct data_arg {
    const qkd_device *dev;
    int64_t now;
};

static int data_op(void *arg, frame_io *io, const uint8_t *in, uint8_t *out, size_t cap,
                   char *err, size_t errlen)
{
    const struct data_arg *a = arg;
    int q = io->seal ? qkd_device_seal(a->dev, io->index, a->now, io->seq, in, io->in_len, out,
                                       cap, &io->out_len, err, errlen)
                     : qkd_device_open(a->dev, NULL, in, io->in_len, out, cap, &io->out_len,
                                       &io->seq, &io->index, err, errlen);
    if (q == QKD_OK && io->seal && io->index < 0)
        io->index = qkd_device_default_index(a->dev, a->now);
    return q;
}

static void data_report(void *arg, const struct options *o, const frame_io *io)
{
    const struct data_arg *a = arg;
    size_t bytes = io->seal ? io->in_len : io->out_len;
    if (o->json)
        printf("{\"op\":\"%s\",\"device_id\":\"%s\",\"key_index\":%d,\"seq\":\"%llu\","
               "\"bytes\":%zu}\n",
               io->seal ? "seal" : "open", a->dev->device_id, io->index,
               (unsigned long long)io->seq, bytes);
    else
        printf("%s %zu bytes, seq %llu, device key %d\n", io->seal ? "sealed" : "opened", bytes,
               (unsigned long long)io->seq, io->index);
}

static int run_data(const struct options *o, const qkd_device *dev, int64_t now)
{
    struct data_arg a = {dev, now};
    return frame_file(o, data_op, data_report, &a);
}

/* key --seal / --open: under the session key just received, with the peer. */
struct seal_arg {
    const char *device_id, *peer;
    const qkd_session_key *sk;
};

static int seal_op(void *arg, frame_io *io, const uint8_t *in, uint8_t *out, size_t cap,
                   char *err, size_t errlen)
{
    const struct seal_arg *a = arg;
    return io->seal ? qkd_seal(a->sk, a->device_id, a->peer, io->seq, in, io->in_len, out, cap,
                               &io->out_len, err, errlen)
                    : qkd_open(a->sk, a->device_id, a->peer, NULL, in, io->in_len, out, cap,
                               &io->out_len, &io->seq, err, errlen);
}

static void seal_report(void *arg, const struct options *o, const frame_io *io)
{
    const struct seal_arg *a = arg;
    int d = qks_direction_of(io->seal ? a->device_id : a->peer,
                             io->seal ? a->peer : a->device_id);
    const char *dn = d == QKS_A2B ? "a2b" : "b2a";
    size_t bytes = io->seal ? io->in_len : io->out_len;
    if (o->json)
        printf("{\"op\":\"%s\",\"key_id\":\"%s\",\"seq\":\"%llu\",\"direction\":\"%s\","
               "\"bytes\":%zu}\n",
               io->seal ? "seal" : "open", a->sk->key_id, (unsigned long long)io->seq, dn, bytes);
    else
        printf("%s %zu bytes, seq %llu, key %s, direction %s\n", io->seal ? "sealed" : "opened",
               bytes, (unsigned long long)io->seq, a->sk->key_id, dn);
}

static int run_seal(const struct options *o, const char *device_id, const qkd_session_key *sk)
{
    struct seal_arg a = {device_id, o->peer, sk};
    return frame_file(o, seal_op, seal_report, &a);
}

static int print_key(const struct options *o, const char *device_id, int key_index,
                     const qkd_session_key *sk, char source)
{
    char *out = OPENSSL_secure_malloc(OUT_MAX);
    char khex[2 * QKD_MAX_KEY_LEN + 1], sid[2 * QKP_MAX_ID + 3], kid[2 * QKP_MAX_ID + 3],
        did[2 * QKP_MAX_ID + 3], when[32];
    struct tm tm;
    time_t t = (time_t)sk->expires_at;
    int n, rc = EXIT_INTERNAL;

    if (!out) {
        errorf("out of secure memory");
        return EXIT_INTERNAL;
    }
    hex(sk->key, sk->key_len, khex);
    if (o->json) {
        char tail[192] = "";
        if (qkd_json_id(sk->session_id, sid, sizeof(sid)) < 0 ||
            qkd_json_id(sk->key_id, kid, sizeof(kid)) < 0 ||
            qkd_json_id(device_id, did, sizeof(did)) < 0)
            goto cleanup;
        /* v2: how the key came, and the mode (no key index in modes 1, 2). */
        if (o->v2)
            snprintf(tail, sizeof(tail), ",\"protocol\":2,\"mode\":%d,\"key_source\":\"%c\"",
                     o->mode, source);
        if (key_index >= 0)
            snprintf(tail + strlen(tail), sizeof(tail) - strlen(tail), ",\"key_index\":%d",
                     key_index);
        if (o->epoch >= 0 || o->direction)
            snprintf(tail + strlen(tail), sizeof(tail) - strlen(tail),
                     ",\"epoch\":%d,\"direction\":\"%s\",\"current_epoch\":%d", sk->epoch,
                     sk->direction, sk->current_epoch);
        n = snprintf(out, OUT_MAX,
                     "{\"session_id\":%s,\"key_id\":%s,\"key\":\"%s\",\"key_bits\":%d,"
                     "\"expires_at\":%lld,\"delivery\":\"%s\",\"device_id\":%s%s}\n",
                     sid, kid, khex, sk->key_bits, (long long)sk->expires_at, sk->delivery, did,
                     tail);
    } else {
        if (!gmtime_r(&t, &tm) || !strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm))
            snprintf(when, sizeof(when), "%lld", (long long)sk->expires_at);
        n = snprintf(out, OUT_MAX, "key_id: %s\nkey: %s\nexpires_at: %s\ndelivery: %s\n",
                     sk->key_id, khex, when, sk->delivery);
        if (n > 0 && n < OUT_MAX && (o->epoch >= 0 || o->direction))
            n += snprintf(out + n, OUT_MAX - (size_t)n,
                          "epoch: %d\ndirection: %s\ncurrent_epoch: %d\n", sk->epoch,
                          sk->direction[0] ? sk->direction : "-", sk->current_epoch);
    }
    if (n < 0 || n >= OUT_MAX || write_all(out, (size_t)n) != 0) {
        errorf("cannot write output");
        goto cleanup;
    }
    rc = EXIT_OK;

cleanup:
    OPENSSL_cleanse(khex, sizeof(khex));
    OPENSSL_secure_clear_free(out, OUT_MAX);
    return rc;
}

static int print_end(const struct options *o, const char *device_id, const char *session_id,
                     int key_index)
{
    char sid[2 * QKP_MAX_ID + 3], did[2 * QKP_MAX_ID + 3];
    if (o->json) {
        if (qkd_json_id(session_id, sid, sizeof(sid)) < 0 ||
            qkd_json_id(device_id, did, sizeof(did)) < 0)
            return EXIT_INTERNAL;
        printf("{\"session_id\":%s,\"ended\":true,\"device_id\":%s", sid, did);
        if (key_index >= 0)
            printf(",\"key_index\":%d", key_index);
        printf("%s}\n", o->v2 ? ",\"protocol\":2" : "");
    } else {
        printf("session_id: %s\nended: true\n", session_id);
    }
    if (fflush(stdout) != 0) {
        errorf("cannot write output");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}

static int print_end_all(const struct options *o, const char *device_id, int key_index,
                         int ended, int streams_ended)
{
    char did[2 * QKP_MAX_ID + 3];
    if (o->json) {
        if (qkd_json_id(device_id, did, sizeof(did)) < 0)
            return EXIT_INTERNAL;
        printf("{\"all\":true,\"ended\":true,\"sessions_ended\":%d,\"streams_ended\":%d,"
               "\"device_id\":%s",
               ended, streams_ended, did);
        if (key_index >= 0)
            printf(",\"key_index\":%d", key_index);
        printf("%s}\n", o->v2 ? ",\"protocol\":2" : "");
    } else {
        printf("all: true\nended: true\nsessions_ended: %d\nstreams_ended: %d\n", ended,
               streams_ended);
    }
    if (fflush(stdout) != 0) {
        errorf("cannot write output");
        return EXIT_INTERNAL;
    }
    return EXIT_OK;
}

/* A non-200 answer: report it, and with --json put the error object on
 * stdout (the server's, or one of ours when the body is not one). */
static int report_status(const struct options *o, const qkd_http_response *resp)
{
    qkd_error e;
    int have = qkd_response_error(&e, resp->body, resp->len) == QKD_OK;
    long st = resp->status;
    int rc = st == 401 || st == 403 ? EXIT_AUTH
             : st >= 400 && st < 500 ? EXIT_REFUSED
                                     : EXIT_SERVER; /* 5xx; 1xx/2xx/3xx are not answers */
    const char *fallback = st == 401   ? "authentication refused"
                           : st == 403 ? "permission denied"
                           : st >= 400 && st < 500 ? "request refused"
                           : st >= 500 && st < 600 ? "server error"
                                                   : "unexpected response status";

    fputs(PROG ": ", stderr);
    put_safe(stderr, have && e.message[0] ? e.message : fallback);
    fputs(" (", stderr);
    if (have) {
        put_safe(stderr, e.code);
        fputs(", ", stderr);
    }
    fprintf(stderr, "HTTP %ld)\n", st);

    if (o->json) {
        json_error_t jerr;
        json_t *body = resp->body ? json_loadb(resp->body, resp->len, 0, &jerr) : NULL;
        json_t *err = have ? json_object_get(body, "error") : NULL;
        json_t *doc = err ? json_pack("{s:O}", "error", err)
                          : json_pack("{s:{s:s,s:s}}", "error", "code", "http_error", "message",
                                      fallback);
        char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
        if (!text || printf("%s\n", text) < 0 || fflush(stdout) != 0)
            errorf("cannot write output");
        zfree(text); /* json_dumps allocates with our allocator */
        json_decref(doc);
        json_decref(body);
    }
    return rc;
}

/* The device key to use: --index, else the default one. */
static int pick_index(const struct options *o, const qkd_device *dev, int64_t now, int *index)
{
    if (o->index >= 0) {
        const qkd_key *k = qkd_device_key(dev, o->index);
        if (!k) {
            errorf("%s: device %s has no key with index %d", o->fill, dev->device_id, o->index);
            return EXIT_USAGE;
        }
        /* The server's clock decides; say why it will probably refuse. */
        if (now >= k->not_after || now < k->not_before)
            errorf("warning: key %d is not valid now (expired or not yet valid)", o->index);
        *index = o->index;
    } else if ((*index = qkd_device_default_index(dev, now)) < 0) {
        errorf("%s: no key of device %s is valid now; choose one with --index", o->fill,
               dev->device_id);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

/* The library's result as an exit status. */
static int lib_rc(int q)
{
    return q == QKD_ERR_INTERNAL ? EXIT_INTERNAL : EXIT_USAGE;
}

/* POST body to path; 200 with *resp filled is EXIT_OK, else the exit status
 * (the failure reported). http_ready tells the caller to clean libcurl up. */
static int post(const struct options *o, const char *path, const char *body, size_t len,
                bool send_cert, qkd_http_response *resp, int *http_ready)
{
    qkd_http_opts hopts = {0};
    char err[256];
    int q;

    if (qkd_http_global_init() != QKD_HTTP_OK) {
        errorf("cannot initialise libcurl");
        return EXIT_INTERNAL;
    }
    *http_ready = 1;
    hopts.cacert = o->cacert;
    hopts.cert = send_cert ? o->cert : NULL;
    hopts.key = send_cert ? o->key : NULL;
    hopts.pin_sha256 = o->pin;
    hopts.timeout_s = o->timeout;
    q = qkd_http_post(o->url, path, body, len, &hopts, resp, err, sizeof(err));
    if (q != QKD_HTTP_OK) {
        fputs(PROG ": ", stderr);
        put_safe(stderr, o->url);
        fputs(": ", stderr);
        put_safe(stderr, err);
        fputc('\n', stderr);
        return q == QKD_HTTP_TRANSPORT   ? EXIT_CONNECT
               : q == QKD_HTTP_TOO_LARGE ? EXIT_SERVER
                                         : EXIT_INTERNAL;
    }
    return resp->status == 200 ? EXIT_OK : report_status(o, resp);
}

/* Protocol v2 (docs/protocol.md): the identity from --cert/--key or
 * --fill, the platform's pinned certificates from --server-cert. */
static int run_v2(const struct options *o, int64_t now)
{
    char *pem = NULL, *cbuf = NULL, *kbuf = NULL, *fill = NULL, err[256], src = 0;
    size_t pl = 0, cl = 0, kl = 0, fl = 0;
    qkd2_platform *plat = NULL;
    qkd2_identity *id = NULL;
    qkd_device *dev = NULL;
    qkd2_request *req = calloc(1, sizeof(*req));
    qkd_session_key sk;
    qkd_http_response resp = {0};
    int rc, q, http_ready = 0, index = -1, ended = 0, streams_ended = 0;
    bool https = strncasecmp(o->url, "https://", 8) == 0;

    memset(&sk, 0, sizeof(sk));
    if (!req) {
        errorf("out of memory");
        return EXIT_INTERNAL;
    }
    if ((rc = read_file(o->server_cert, PEM_MAX, false, "a certificate file", &pem, &pl)) !=
        EXIT_OK)
        goto out;
    if ((q = qkd2_platform_load(&plat, pem, pl, err, sizeof(err))) != QKD_OK) {
        errorf("%s: %s", o->server_cert, err);
        rc = lib_rc(q);
        goto out;
    }
    if (o->mode != 3) {
        if ((rc = read_file(o->cert, PEM_MAX, false, "a certificate file", &cbuf, &cl)) !=
                EXIT_OK ||
            (rc = read_file(o->key ? o->key : o->cert, PEM_MAX, true, "a key file", &kbuf, &kl)) !=
                EXIT_OK)
            goto out;
        q = qkd2_identity_cert(&id, NULL, o->mode, cbuf, cl, kbuf, kl, err, sizeof(err));
    } else {
        if ((rc = read_fill(o->fill, &fill, &fl)) != EXIT_OK)
            goto out;
        if ((q = qkd_device_load(&dev, fill, fl, err, sizeof(err))) == QKD_OK) {
            if ((rc = pick_index(o, dev, now, &index)) != EXIT_OK)
                goto out;
            q = qkd2_identity_keys(&id, dev, index, err, sizeof(err));
        }
    }
    if (q != QKD_OK) {
        errorf("%s: %s", o->mode != 3 ? o->cert : o->fill, err);
        rc = lib_rc(q);
        goto out;
    }
    q = strcmp(o->cmd, "key") == 0
            ? qkd2_request_key(req, id, plat, o->session, o->peer, o->source, o->delivered, now,
                               NULL, err, sizeof(err))
        : o->all ? qkd2_request_end_all(req, id, plat, now, NULL, err, sizeof(err))
                 : qkd2_request_end(req, id, plat, o->session, now, NULL, err, sizeof(err));
    if (q != QKD_OK) {
        errorf("%s", err);
        rc = lib_rc(q);
        goto out;
    }
    /* Over https the device certificate is the TLS client's too. */
    if ((rc = post(o, req->path, req->body, req->body_len, https && o->cert, &resp,
                   &http_ready)) != EXIT_OK)
        goto out;
    q = req->op == QKD_OP_KEY
            ? qkd2_response_key(&sk, &src, req, id, plat, resp.body, resp.len, err, sizeof(err))
        : o->all ? qkd2_response_end_all(req, plat, resp.body, resp.len, &ended, &streams_ended, err,
                                         sizeof(err))
                 : qkd2_response_end(req, plat, resp.body, resp.len, err, sizeof(err));
    if (q != QKD_OK) {
        errorf("unverifiable response (HTTP 200): %s", err);
        rc = q == QKD_ERR_INTERNAL ? EXIT_INTERNAL : EXIT_SERVER;
        goto out;
    }
    rc = req->op == QKD_OP_KEY ? print_key(o, req->device_id, index, &sk, src)
         : o->all              ? print_end_all(o, req->device_id, index, ended, streams_ended)
                               : print_end(o, req->device_id, req->session_id, index);
out:
    qkd_session_key_clear(&sk);
    qkd2_request_clear(req);
    free(req);
    qkd_http_response_clear(&resp);
    qkd2_identity_free(id);
    qkd2_platform_free(plat);
    qkd_device_free(dev);
    free_file(pem, false);
    free_file(cbuf, false);
    free_file(kbuf, true);
    if (fill)
        OPENSSL_secure_clear_free(fill, FILL_MAX + 1);
    if (http_ready)
        qkd_http_global_cleanup();
    return rc;
}

/* ---- key streams ----------------------------------------------------------- */

static int print_stream_key(const struct options *o, const char *device_id, int key_index,
                            const qkd_stream_key *sk)
{
    char *out = OPENSSL_secure_malloc(OUT_MAX);
    char khex[2 * QKD_MAX_KEY_LEN + 1], did[2 * QKP_MAX_ID + 3], sid[2 * QKP_MAX_ID + 3],
        kid[2 * QKP_MAX_ID + 3];
    int n, rc = EXIT_INTERNAL;

    if (!out) {
        errorf("out of secure memory");
        return EXIT_INTERNAL;
    }
    hex(sk->key, sk->key_len, khex);
    if (o->json) {
        if (qkd_json_id(device_id, did, sizeof(did)) < 0 ||
            qkd_json_id(sk->stream_id, sid, sizeof(sid)) < 0 ||
            qkd_json_id(sk->key_id, kid, sizeof(kid)) < 0)
            goto cleanup;
        n = snprintf(out, OUT_MAX,
                     "{\"stream_id\":%s,\"seq\":%lld,\"key_id\":%s,\"key\":\"%s\","
                     "\"key_bits\":%d,\"expires_at\":%lld,\"low\":%lld,\"window\":%d,"
                     "\"device_id\":%s,\"key_index\":%d}\n",
                     sid, (long long)sk->seq, kid, khex, sk->key_bits,
                     (long long)sk->expires_at, (long long)sk->low, sk->window, did, key_index);
    } else {
        n = snprintf(out, OUT_MAX, "stream_id: %s\nseq: %lld\nkey_id: %s\nkey: %s\nlow: %lld\n",
                     sk->stream_id, (long long)sk->seq, sk->key_id, khex, (long long)sk->low);
    }
    if (n < 0 || n >= OUT_MAX || write_all(out, (size_t)n) != 0) {
        errorf("cannot write output");
        goto cleanup;
    }
    rc = EXIT_OK;
cleanup:
    OPENSSL_cleanse(khex, sizeof(khex));
    OPENSSL_secure_clear_free(out, OUT_MAX);
    return rc;
}

/* stream: key --seq of the stream with --peer (--stream named or not), or
 * --end of --stream. */
static int run_stream(const struct options *o, const qkd_device *dev, int index, int64_t now,
                      int *http_ready)
{
    qkd_request req;
    qkd_stream_key sk;
    qkd_http_response resp = {0};
    char err[256];
    int q, rc;

    memset(&sk, 0, sizeof(sk));
    q = o->stream_end
            ? qkd_request_stream_end(&req, dev, index, o->stream, now, NULL, err, sizeof(err))
            : qkd_request_stream(&req, dev, index, o->stream, o->peer, o->seq, now, NULL, err,
                                 sizeof(err));
    if (q != QKD_OK) {
        errorf("%s", err);
        rc = q == QKD_ERR_INTERNAL ? EXIT_INTERNAL : EXIT_USAGE;
        goto out;
    }
    if ((rc = post(o, req.path, req.body, req.body_len, o->cert != NULL, &resp, http_ready)) !=
        EXIT_OK)
        goto out;
    q = o->stream_end ? qkd_response_stream_end(&req, resp.body, resp.len, err, sizeof(err))
                      : qkd_response_stream(&sk, dev, &req, resp.body, resp.len, err,
                                            sizeof(err));
    if (q != QKD_OK) {
        errorf("unverifiable response (HTTP 200): %s", err);
        rc = q == QKD_ERR_INTERNAL ? EXIT_INTERNAL : EXIT_SERVER;
        goto out;
    }
    if (!o->stream_end) {
        rc = print_stream_key(o, req.device_id, req.key_index, &sk);
    } else {
        char sid[2 * QKP_MAX_ID + 3];
        if (o->json && qkd_json_id(req.session_id, sid, sizeof(sid)) < 0) {
            rc = EXIT_INTERNAL;
            goto out;
        }
        if (o->json)
            printf("{\"stream_id\":%s,\"ended\":true,\"key_index\":%d}\n", sid, req.key_index);
        else
            printf("stream_id: %s\nended: true\n", req.session_id);
        rc = fflush(stdout) == 0 ? EXIT_OK : EXIT_INTERNAL;
    }
out:
    qkd_stream_key_clear(&sk);
    qkd_request_clear(&req);
    qkd_http_response_clear(&resp);
    return rc;
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv)
{
    struct options o = {0};
    struct rlimit no_core = {0, 0};
    qkd_device *dev = NULL;
    qkd_firmware_group_key *fill_gk = NULL;
    qkd_request req;
    qkd_session_key sk;
    qkd_http_response resp = {0};
    char *fill = NULL, err[256];
    size_t fill_len = 0;
    int rc = EXIT_USAGE, index, http_ready = 0, q, ended = 0, streams_ended = 0;
    int64_t now = (int64_t)time(NULL);

    memset(&req, 0, sizeof(req));
    memset(&sk, 0, sizeof(sk));
    /* Key bytes in a core file would outlive every zeroization below. */
    setrlimit(RLIMIT_CORE, &no_core);
    json_set_alloc_funcs(zmalloc, zfree);
    /* Locked (unswappable) memory when RLIMIT_MEMLOCK allows; otherwise
     * OPENSSL_secure_malloc is plain malloc, still zeroized on free. */
    int secure_heap = CRYPTO_secure_malloc_init(SECURE_HEAP_BYTES, SECURE_HEAP_MIN) != 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            rc = EXIT_OK;
            goto cleanup;
        }
        if (strcmp(argv[i], "--man") == 0) {
            print_man(stdout);
            rc = EXIT_OK;
            goto cleanup;
        }
    }
    if (argc < 2) {
        usage(stderr);
        goto cleanup;
    }
    if (parse_args(argc, argv, &o) != 0) {
        fputs("Try '" PROG " --help'.\n", stderr);
        goto cleanup;
    }

    if (o.v2) {
        rc = run_v2(&o, now);
        goto cleanup;
    }
    if (strcmp(o.cmd, "firmware") == 0 && !o.fill) {
        rc = run_firmware(&o, NULL, NULL, now);
        goto cleanup;
    }
    if ((rc = read_fill(o.fill, &fill, &fill_len)) != EXIT_OK)
        goto cleanup;
    /* firmware: the group's key the fill carries, unless --group-key names one */
    if (strcmp(o.cmd, "firmware") == 0 && !o.group_key) {
        int found = 0;
        if (!(fill_gk = OPENSSL_secure_zalloc(sizeof(*fill_gk)))) {
            OPENSSL_secure_clear_free(fill, FILL_MAX + 1);
            fill = NULL;
            errorf("out of secure memory");
            rc = EXIT_INTERNAL;
            goto cleanup;
        }
        q = qkd_firmware_group_key_load(fill, fill_len, fill_gk, &found, err, sizeof(err));
        if (q == QKD_OK && !found) {
            OPENSSL_secure_clear_free(fill_gk, sizeof(*fill_gk));
            fill_gk = NULL;
        }
        if (q != QKD_OK) {
            OPENSSL_secure_clear_free(fill, FILL_MAX + 1);
            fill = NULL;
            errorf("%s: %s", o.fill, err);
            rc = q == QKD_ERR_INTERNAL ? EXIT_INTERNAL : EXIT_USAGE;
            goto cleanup;
        }
    }
    q = qkd_device_load(&dev, fill, fill_len, err, sizeof(err));
    OPENSSL_secure_clear_free(fill, FILL_MAX + 1);
    fill = NULL;
    if (q != QKD_OK) {
        errorf("%s: %s", o.fill, err);
        rc = q == QKD_ERR_INTERNAL ? EXIT_INTERNAL : EXIT_USAGE;
        goto cleanup;
    }
    if (strcmp(o.cmd, "firmware") == 0) {
        rc = run_firmware(&o, dev, fill_gk, now);
        goto cleanup;
    }
    if (strcmp(o.cmd, "data") == 0) {
        rc = run_data(&o, dev, now);
        goto cleanup;
    }
    if ((rc = pick_index(&o, dev, now, &index)) != EXIT_OK)
        goto cleanup;

    if (strcmp(o.cmd, "stream") == 0) {
        rc = run_stream(&o, dev, index, now, &http_ready);
        goto cleanup;
    }
    if (strcmp(o.cmd, "key") == 0 && (o.epoch >= 0 || o.direction))
        q = qkd_request_key_ext(&req, dev, index, o.session, o.peer, o.epoch, o.direction, now,
                                NULL, err, sizeof(err));
    else if (strcmp(o.cmd, "key") == 0)
        q = qkd_request_key(&req, dev, index, o.session, o.peer, o.delivered, now, NULL, err,
                            sizeof(err));
    else if (o.all)
        q = qkd_request_end_all(&req, dev, index, now, NULL, err, sizeof(err));
    else
        q = qkd_request_end(&req, dev, index, o.session, now, NULL, err, sizeof(err));
    if (q != QKD_OK) {
        errorf("%s", err);
        rc = q == QKD_ERR_INTERNAL ? EXIT_INTERNAL : EXIT_USAGE;
        goto cleanup;
    }

    if ((rc = post(&o, req.path, req.body, req.body_len, o.cert != NULL, &resp, &http_ready)) !=
        EXIT_OK)
        goto cleanup;

    if (req.op == QKD_OP_KEY)
        q = qkd_response_key(&sk, dev, &req, resp.body, resp.len, err, sizeof(err));
    else if (o.all)
        q = qkd_response_end_all(&req, resp.body, resp.len, &ended, &streams_ended, err,
                                 sizeof(err));
    else
        q = qkd_response_end(&req, resp.body, resp.len, err, sizeof(err));
    if (q != QKD_OK) {
        errorf("unverifiable response (HTTP 200): %s", err);
        rc = q == QKD_ERR_INTERNAL ? EXIT_INTERNAL : EXIT_SERVER;
        goto cleanup;
    }
    rc = req.op == QKD_OP_KEY && (o.seal_in || o.open_in) ? run_seal(&o, req.device_id, &sk)
         : req.op == QKD_OP_KEY ? print_key(&o, req.device_id, req.key_index, &sk, 'c')
         : o.all              ? print_end_all(&o, req.device_id, req.key_index, ended, streams_ended)
                              : print_end(&o, req.device_id, req.session_id, req.key_index);

cleanup:
    qkd_session_key_clear(&sk);
    qkd_request_clear(&req);
    qkd_http_response_clear(&resp);
    qkd_device_free(dev);
    if (fill_gk)
        OPENSSL_secure_clear_free(fill_gk, sizeof(*fill_gk));
    if (fill)
        OPENSSL_secure_clear_free(fill, FILL_MAX + 1);
    if (http_ready)
        qkd_http_global_cleanup();
    if (secure_heap)
        CRYPTO_secure_malloc_done();
    return rc;
}
