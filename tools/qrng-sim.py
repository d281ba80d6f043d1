#!/usr/bin/python3
"""QRNG simulator: a stand-in for a network QRNG appliance / cloud service.

kmsd reads quantum random numbers over HTTP and must quarantine a source
whose output fails the NIST SP 800-90B health tests (repetition count,
adaptive proportion) or whose transport fails.  This server imitates such a
source and can be switched at run time into failure modes.

Usage:
    qrng-sim.py [--host 127.0.0.1] [--port 0] [--admin-host HOST]
                [--admin-port 0] [--mode ok] [--seed S] [--slow-seconds 5]
                [--token-file FILE] [--verbose]

Port 0 picks a free port.  The first two lines on stdout are always
    listening on HOST:PORT      (data endpoints)
    admin on HOST:PORT          (control endpoints)

Data endpoints (GET, or POST with the same query parameters or a JSON body
{"bytes": N, "encoding": "hex"}); N is 1..1048576, default 1024:
    /random?bytes=N                       raw, application/octet-stream
    /random/hex?bytes=N                   text/plain, lowercase hex
    /random/json?bytes=N&encoding=hex|base64
        {"data": "...", "length": N, "encoding": "hex"}
    /random/json-nested?bytes=N&encoding=hex|base64
        {"result": {"random": {"data": "...", "length": N, "encoding": "hex"}}}
With --token-file FILE every data endpoint requires
"Authorization: Bearer <contents of FILE, surrounding whitespace stripped>".

Admin endpoints (admin port, no authentication):
    GET  /mode         {"mode": "ok", "delay": 5.0, "stuck_value": 90}
    POST /mode         {"mode": "slow", "delay": 2.5}   (delay, value optional)
    GET  /stats        requests and random bytes served, per mode
    POST /stats/reset  zero the counters

Modes (apply to all data endpoints):
    ok         os.urandom, or random.Random(seed) with --seed
    stuck      every byte is the same value (0x5a; "value" in POST /mode)
    biased     0x00 with frequency ~0.3, other values uniform, and no byte
               ever equals its predecessor: an adaptive proportion test
               (H=7 claimed) fails, a repetition count test never does
    slow       correct data, sent only after "delay" seconds
    truncated  Content-Length of the full body, half the body, then close
    error500   HTTP 500 with a JSON error
    down       the data port is closed (connection refused); open
               connections are shut down; switching to any other mode
               reopens the same port

SIGTERM / SIGINT exit cleanly (status 0).  SIGUSR1 cycles ok -> stuck ->
biased -> ok (from any other mode it goes to ok).

Standard library only; no network access beyond the addresses given.
"""
import argparse
import base64
import binascii
import hmac
import http.server
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.parse

MODES = ("ok", "stuck", "biased", "slow", "truncated", "error500", "down")
MAX_BYTES = 1048576
DEFAULT_BYTES = 1024
MAX_BODY = 65536
DATA_PATHS = ("/random", "/random/hex", "/random/json", "/random/json-nested")
ENCODINGS = ("hex", "base64")
# biased mode: after a non-zero byte the next one is 0x00 with probability
# Q/256; after 0x00 it is never 0x00.  Stationary frequency of 0x00 is
# q/(1+q) with q = 110/256, i.e. 0.3005.
BIAS_Q = 110


def log(msg):
    sys.stderr.write("qrng-sim: %s\n" % msg)
    sys.stderr.flush()


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------
# random sources

class Sources:
    def __init__(self, seed):
        self.lock = threading.Lock()
        if seed is None:
            self.good_rng = None
            self.bias_rng = random.Random(os.urandom(32))
        else:
            self.good_rng = random.Random(seed)
            self.bias_rng = random.Random("biased:%s" % seed)

    def good(self, n):
        if self.good_rng is None:
            return os.urandom(n)
        with self.lock:
            return self.good_rng.randbytes(n)

    def biased(self, n):
        with self.lock:
            coins = self.bias_rng.randbytes(n)
            # plenty of candidate values; refilled if rejection sampling
            # ever runs out
            vals = self.bias_rng.randbytes(n + 64)
            refill = self.bias_rng.randbytes
        out = bytearray(n)
        prev = -1
        j = 0
        nvals = len(vals)
        for i in range(n):
            if prev != 0 and coins[i] < BIAS_Q:
                prev = 0
            else:
                # uniform over 1..255 without prev
                while True:
                    if j >= nvals:
                        with self.lock:
                            vals = refill(1024)
                        nvals = len(vals)
                        j = 0
                    v = vals[j]
                    j += 1
                    if v != 0 and v != prev:
                        break
                prev = v
            out[i] = prev
        return bytes(out)


# ---------------------------------------------------------------------------
# state shared by data and admin servers

class Sim:
    def __init__(self, args):
        self.lock = threading.RLock()
        self.mode = "ok"
        self.delay = float(args.slow_seconds)
        self.stuck_value = 0x5A
        self.sources = Sources(parse_seed(args.seed))
        self.token = None
        if args.token_file:
            with open(args.token_file, "rb") as f:
                self.token = f.read().strip()
            if not self.token:
                raise SystemExit("qrng-sim: token file %s is empty" % args.token_file)
        self.verbose = args.verbose
        self.host = args.host
        self.port = args.port
        self.data_server = None
        self.data_thread = None
        self.stats = {}
        self.reset_stats()
        self.open_data()
        if args.mode != "ok":
            self.set_mode(args.mode)

    # -- stats ----------------------------------------------------------
    def reset_stats(self):
        with self.lock:
            self.stats = {m: {"requests": 0, "bytes": 0} for m in MODES}
            self.rejected = 0

    def count(self, mode, nbytes):
        with self.lock:
            s = self.stats[mode]
            s["requests"] += 1
            s["bytes"] += nbytes

    def count_rejected(self):
        with self.lock:
            self.rejected += 1

    def stats_doc(self):
        with self.lock:
            per = {m: dict(v) for m, v in self.stats.items()}
            return {
                "mode": self.mode,
                "modes": per,
                "total": {
                    "requests": sum(v["requests"] for v in per.values()),
                    "bytes": sum(v["bytes"] for v in per.values()),
                },
                "rejected": self.rejected,
            }

    def snapshot(self):
        with self.lock:
            return self.mode, self.delay, self.stuck_value

    def mode_doc(self):
        with self.lock:
            return {"mode": self.mode, "delay": self.delay,
                    "stuck_value": self.stuck_value}

    # -- data listener --------------------------------------------------
    def open_data(self):
        """Bind the data port (the same one after the first time)."""
        deadline = time.monotonic() + 5.0
        while True:
            try:
                srv = DataServer((self.host, self.port), DataHandler, self)
                break
            except OSError as e:
                if self.data_server is None or time.monotonic() > deadline:
                    raise
                log("rebinding %s:%d: %s (retrying)" % (self.host, self.port, e))
                time.sleep(0.1)
        self.port = srv.server_address[1]
        self.data_server = srv
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                             name="qrng-data", daemon=True)
        t.start()
        self.data_thread = t

    def close_data(self):
        srv = self.data_server
        if srv is None:
            return
        self.data_server = None
        srv.shutdown()
        srv.server_close()
        srv.drop_connections()
        if self.data_thread is not None:
            self.data_thread.join(5)
            self.data_thread = None

    def set_mode(self, mode, delay=None, value=None):
        with self.lock:
            if mode not in MODES:
                raise ValueError("unknown mode %r" % (mode,))
            old = self.mode
            if delay is not None:
                self.delay = float(delay)
            if value is not None:
                self.stuck_value = int(value)
            if mode == "down" and old != "down":
                self.mode = mode
                self.close_data()
            elif mode != "down" and old == "down":
                self.open_data()
                self.mode = mode
            else:
                self.mode = mode
            if old != mode:
                log("mode %s -> %s" % (old, mode))

    def shutdown(self):
        with self.lock:
            self.close_data()


def parse_seed(s):
    if s is None:
        return None
    try:
        return int(s, 0)
    except ValueError:
        return s


# ---------------------------------------------------------------------------
# HTTP plumbing

class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, sim):
        self.sim = sim
        self.conns = set()
        self.conns_lock = threading.Lock()
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, handler)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            return
        super().handle_error(request, client_address)

    def track(self, conn):
        with self.conns_lock:
            self.conns.add(conn)

    def untrack(self, conn):
        with self.conns_lock:
            self.conns.discard(conn)

    def drop_connections(self):
        with self.conns_lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DataServer(QuietServer):
    pass


class AdminServer(QuietServer):
    pass


class BaseHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "qrng-sim/1.0"
    sys_version = ""
    timeout = 60

    def setup(self):
        super().setup()
        self.server.track(self.connection)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def log_message(self, fmt, *args):
        if self.server.sim.verbose:
            log("%s %s" % (self.address_string(), fmt % args))

    def read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            body = bytearray()
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.close_connection = True
                    raise BadRequest(400, "bad chunked encoding")
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                if len(body) + size > MAX_BODY:
                    self.close_connection = True
                    raise BadRequest(413, "request body too large")
                body += self.rfile.read(size)
                self.rfile.readline(1024)
            return bytes(body)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise BadRequest(400, "bad Content-Length")
        if n > MAX_BODY:
            self.close_connection = True
            raise BadRequest(413, "request body too large")
        return self.rfile.read(n)

    def send_body(self, status, ctype, body, extra=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, doc, extra=None):
        body = (json.dumps(doc) + "\n").encode()
        self.send_body(status, "application/json", body, extra)

    def send_error_json(self, status, message, extra=None):
        self.send_json(status, {"error": message, "status": status}, extra)


class DataHandler(BaseHandler):
    def do_GET(self):
        self.serve(b"")

    def do_POST(self):
        try:
            body = self.read_body()
        except BadRequest as e:
            self.server.sim.count_rejected()
            self.send_error_json(e.status, e.message)
            return
        self.serve(body)

    def params(self, body):
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        p = {k: v[-1] for k, v in q.items()}
        if body.strip():
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise BadRequest(400, "request body is not valid JSON")
            if not isinstance(doc, dict):
                raise BadRequest(400, "request body must be a JSON object")
            for k in ("bytes", "encoding"):
                if k in doc:
                    p[k] = doc[k]
        n = p.get("bytes", DEFAULT_BYTES)
        if isinstance(n, str):
            s = n.strip()
            if not s.isdigit() or not s.isascii():
                raise BadRequest(400, "bytes must be an integer 1..%d" % MAX_BYTES)
            n = int(s)
        elif isinstance(n, bool) or not isinstance(n, int):
            raise BadRequest(400, "bytes must be an integer 1..%d" % MAX_BYTES)
        if not 1 <= n <= MAX_BYTES:
            raise BadRequest(400, "bytes must be an integer 1..%d" % MAX_BYTES)
        enc = p.get("encoding", "hex")
        if enc not in ENCODINGS:
            raise BadRequest(400, "encoding must be hex or base64")
        return url.path, n, enc

    def authorized(self):
        token = self.server.sim.token
        if token is None:
            return True
        h = self.headers.get("Authorization", "")
        scheme, _, cred = h.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(cred.strip().encode("latin-1", "replace"), token)

    def serve(self, body):
        sim = self.server.sim
        mode, delay, stuck_value = sim.snapshot()
        if mode == "down":
            # a kept-alive connection that survived the switch: drop it
            self.close_connection = True
            sim.count("down", 0)
            return
        path = urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"
        if path not in DATA_PATHS:
            sim.count_rejected()
            self.send_error_json(404, "no such endpoint: %s" % path)
            return
        if not self.authorized():
            sim.count_rejected()
            self.send_error_json(401, "missing or invalid bearer token",
                                 {"WWW-Authenticate": 'Bearer realm="qrng-sim"'})
            return
        try:
            _, n, enc = self.params(body)
        except BadRequest as e:
            sim.count_rejected()
            self.send_error_json(e.status, e.message)
            return

        if mode == "error500":
            sim.count(mode, 0)
            self.send_error_json(500, "simulated internal error (mode error500)")
            return
        if mode == "stuck":
            data = bytes([stuck_value & 0xFF]) * n
        elif mode == "biased":
            data = sim.sources.biased(n)
        else:
            data = sim.sources.good(n)
        if mode == "slow":
            time.sleep(delay)

        if path == "/random":
            ctype, out = "application/octet-stream", data
        elif path == "/random/hex":
            ctype, out = "text/plain; charset=us-ascii", binascii.hexlify(data)
        else:
            s = (data.hex() if enc == "hex" else base64.b64encode(data).decode())
            inner = {"data": s, "length": n, "encoding": enc}
            doc = inner if path == "/random/json" else {"result": {"random": inner}}
            ctype, out = "application/json", json.dumps(doc).encode()

        if mode == "truncated":
            self.close_connection = True
            half = len(out) // 2
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(out)))
            self.send_header("Connection", "close")
            self.end_headers()
            sim.count(mode, n // 2)
            try:
                self.wfile.write(out[:half])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        sim.count(mode, n)
        self.send_body(200, ctype, out)


class AdminHandler(BaseHandler):
    def do_GET(self):
        sim = self.server.sim
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path == "/mode":
            self.send_json(200, sim.mode_doc())
        elif path == "/stats":
            self.send_json(200, sim.stats_doc())
        elif path in ("", "/health"):
            self.send_json(200, {"status": "ok", "data_port": sim.port,
                                 "mode": sim.mode_doc()["mode"]})
        else:
            self.send_error_json(404, "no such endpoint: %s" % path)

    def do_POST(self):
        sim = self.server.sim
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        try:
            body = self.read_body()
        except BadRequest as e:
            self.send_error_json(e.status, e.message)
            return
        if path == "/stats/reset":
            sim.reset_stats()
            self.send_json(200, sim.stats_doc())
            return
        if path != "/mode":
            self.send_error_json(404, "no such endpoint: %s" % path)
            return
        try:
            doc = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError):
            self.send_error_json(400, "body is not valid JSON")
            return
        if not isinstance(doc, dict):
            self.send_error_json(400, 'body must be a JSON object {"mode": ...}')
            return
        mode = doc.get("mode")
        if mode not in MODES:
            self.send_error_json(400, "mode must be one of %s" % ", ".join(MODES))
            return
        delay = doc.get("delay")
        if delay is not None and (isinstance(delay, bool)
                                  or not isinstance(delay, (int, float))
                                  or not 0 <= delay <= 3600):
            self.send_error_json(400, "delay must be a number of seconds 0..3600")
            return
        value = doc.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= 255):
            self.send_error_json(400, "value must be an integer 0..255")
            return
        try:
            sim.set_mode(mode, delay, value)
        except OSError as e:
            self.send_error_json(500, "cannot reopen data port: %s" % e)
            return
        self.send_json(200, sim.mode_doc())


# ---------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="QRNG simulator for qkms tests and demos")
    ap.add_argument("--host", default="127.0.0.1", help="data listen address (127.0.0.1)")
    ap.add_argument("--port", type=int, default=0, help="data port, 0 = free port (0)")
    ap.add_argument("--admin-host", default=None, help="admin listen address (same as --host)")
    ap.add_argument("--admin-port", type=int, default=0, help="admin port, 0 = free port (0)")
    ap.add_argument("--mode", default="ok", choices=MODES, help="initial mode (ok)")
    ap.add_argument("--seed", default=None,
                    help="seed a deterministic PRNG instead of os.urandom (reproducible output)")
    ap.add_argument("--slow-seconds", type=float, default=5.0,
                    help="delay in mode slow (5)")
    ap.add_argument("--token-file", default=None,
                    help="require 'Authorization: Bearer <file contents>' on data endpoints")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)
    if args.slow_seconds < 0:
        ap.error("--slow-seconds must be >= 0")

    stop = threading.Event()
    cycle = [0]

    def on_stop(signum, frame):
        stop.set()

    def on_usr1(signum, frame):
        cycle[0] += 1

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_usr1)

    sim = Sim(args)
    admin = AdminServer((args.admin_host or args.host, args.admin_port), AdminHandler, sim)
    at = threading.Thread(target=admin.serve_forever, kwargs={"poll_interval": 0.05},
                          name="qrng-admin", daemon=True)
    at.start()

    def fmt(host, port):
        return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)

    sys.stdout.write("listening on %s\n" % fmt(args.host, sim.port))
    sys.stdout.write("admin on %s\n" % fmt(args.admin_host or args.host,
                                           admin.server_address[1]))
    sys.stdout.flush()

    nxt = {"ok": "stuck", "stuck": "biased", "biased": "ok"}
    while not stop.is_set():
        stop.wait(0.2)
        while cycle[0] > 0:
            cycle[0] -= 1
            cur = sim.mode_doc()["mode"]
            try:
                sim.set_mode(nxt.get(cur, "ok"))
            except OSError as e:
                log("SIGUSR1: %s" % e)

    admin.shutdown()
    admin.server_close()
    sim.shutdown()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
