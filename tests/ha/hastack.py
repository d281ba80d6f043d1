"""hastack — the high-availability topology of docs/ha.md on one machine,
with real processes on loopback: etcd, three PostgreSQL 15 nodes managed
by Patroni (synchronous replication in strict mode: a commit waits for one
standby), HAProxy in front of the
kmsd instances (health: /readyz) and of the PostgreSQL primary (health:
Patroni's REST check), and two kmsd instances over the same SoftHSM token.

Each kmsd reaches PostgreSQL with a multi-host conninfo and
target_session_attrs=read-write (it finds the primary itself). kmsd<i>
reaches the nodes at 127.0.0.<i> (every node listens on 127.0.0.1 and
127.0.0.2), so that a drill can cut one kmsd off the database with an
nftables rule on that address: a black hole (packets dropped on input,
connections left open, nothing refused), as a partitioned network is,
without touching the other kmsd.

Used by tests/ha/test_drills.py (make ha-test). Everything runs under one
state directory in /tmp; PostgreSQL and Patroni run as the postgres user
(PostgreSQL refuses root), the rest as the caller.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KMSD = os.environ.get("QKMS_KMSD", os.path.join(ROOT, "build/asan/bin/kmsd"))
KMSCTL = os.environ.get("QKMS_KMSCTL", os.path.join(ROOT, "build/asan/bin/kmsctl"))
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
# The settings every kmsd of the topology shares (timeouts for a moving
# primary, no per-address limits behind HAProxy): the compose profile's
# kmsd reads the same file (docker/compose.ha.yaml).
with open(os.path.join(ROOT, "docker", "kmsd-ha.conf")) as _f:
    HA_SETTINGS = _f.read().strip()
PG_BIN = "/usr/lib/postgresql/15/bin"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return True
        except (requests.RequestException, OSError):
            pass
        time.sleep(interval)
    return False


class HAStack:
    """etcd + Patroni x2 + HAProxy + kmsd x2 under one state directory."""

    def __init__(self, kmsd_count=2, pg_nodes=3):
        self.state = tempfile.mkdtemp(prefix="qkms-ha-", dir="/tmp")
        os.chmod(self.state, 0o711)
        self.procs = {}
        self.logs = {}
        self.pg_nodes = [f"pg{i + 1}" for i in range(pg_nodes)]
        self.pg_port = {n: free_port() for n in self.pg_nodes}
        self.rest_port = {n: free_port() for n in self.pg_nodes}
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self.haproxy_kmsd, self.haproxy_pg, self.haproxy_stats = free_port(), free_port(), free_port()
        self.kmsd_names = [f"kmsd{i + 1}" for i in range(kmsd_count)]
        self.kmsd_port = {k: free_port() for k in self.kmsd_names}
        self.nft_table = "qkms_ha_" + secrets.token_hex(3)
        self.partitioned = False
        self.scope = "qkms-" + secrets.token_hex(3)
        self.superuser_pw = secrets.token_hex(16)
        self.repl_pw = secrets.token_hex(16)
        self.db_pw = secrets.token_hex(16)
        self.admin_token = None

    # -- processes ---------------------------------------------------------
    def _start(self, name, argv, as_postgres=False, env=None):
        if name in self.logs:
            self.logs[name].close()
        log = open(os.path.join(self.state, f"{name}.log"), "ab")
        # The process itself is the one signalled (Patroni stops its
        # PostgreSQL on SIGTERM); its own group, so that kill9 takes every
        # child too, as a container's end would.
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log, env=env,
                                            start_new_session=True,
                                            user="postgres" if as_postgres else None)
        self.logs[name] = log

    def stop(self, name, sig=signal.SIGTERM, timeout=60):
        """Stops a process; its exit status, or None when it had already
        ended or had to be killed (with its group)."""
        p = self.procs.get(name)
        if not p or p.poll() is not None:
            return None
        p.send_signal(sig)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
            return None

    def kill9(self, name):
        """SIGKILL to the process and every child (a container killed)."""
        p = self.procs[name]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)

    def kill9_node(self, node):
        """A PostgreSQL host lost at once: Patroni and every PostgreSQL
        process of the node killed with SIGKILL, nothing shut down."""
        self.kill9(node)
        subprocess.run(["pkill", "-KILL", "-f", f"postgres -D {self.state}/{node}/data"], check=False)

    def alive(self, name):
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    # -- etcd --------------------------------------------------------------
    def start_etcd(self):
        d = os.path.join(self.state, "etcd")
        self._start("etcd", [
            "etcd", "--name", "e1", "--data-dir", d,
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
            "--initial-cluster", f"e1=http://127.0.0.1:{self.etcd_peer}"])
        if not wait_for(lambda: requests.get(f"http://127.0.0.1:{self.etcd_port}/health",
                                             timeout=1).json().get("health") == "true", 30):
            raise RuntimeError("etcd did not start")

    # -- Patroni -----------------------------------------------------------
    def patroni_config(self, node):
        from patroni_conf import render
        return render(scope=self.scope, node=node, pg_port=self.pg_port[node],
                      rest_port=self.rest_port[node], etcd=f"127.0.0.1:{self.etcd_port}",
                      data_dir=os.path.join(self.state, node, "data"),
                      socket_dir=os.path.join(self.state, node),
                      superuser_pw=self.superuser_pw, repl_pw=self.repl_pw)

    def start_patroni(self, node):
        d = os.path.join(self.state, node)
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "postgres")
        os.chmod(d, 0o700)
        cfg = os.path.join(d, "patroni.yml")
        if not os.path.exists(cfg):
            with open(cfg, "w") as f:
                f.write(self.patroni_config(node))
            shutil.chown(cfg, "postgres")
            os.chmod(cfg, 0o600)
        self._start(node, ["patroni", cfg], as_postgres=True)

    def role(self, node):
        """'primary', 'replica' or None (Patroni's REST view of the node)."""
        try:
            r = requests.get(f"http://127.0.0.1:{self.rest_port[node]}/patroni", timeout=1)
            j = r.json()
        except (requests.RequestException, ValueError):
            return None
        if j.get("state") != "running":
            return None
        return "primary" if j.get("role") in ("master", "primary") else "replica"

    def _node_answering(self, check):
        """The first node whose Patroni answers 200 to GET /<check>."""
        for n in self.pg_nodes:
            try:
                if requests.get(f"http://127.0.0.1:{self.rest_port[n]}/{check}",
                                timeout=1).status_code == 200:
                    return n
            except requests.RequestException:
                pass
        return None

    def primary(self):
        return self._node_answering("primary")

    def sync_standby(self):
        return self._node_answering("sync")

    def freeze(self, node, sig=signal.SIGSTOP):
        """SIGSTOP (or SIGCONT) the node's postmaster and its processes: a
        node that stops answering without closing anything."""
        with open(os.path.join(self.state, node, "data", "postmaster.pid")) as f:
            pm = int(f.readline())
        kids = subprocess.run(["pgrep", "-P", str(pm)], capture_output=True, text=True).stdout.split()
        for pid in [pm] + [int(k) for k in kids]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def psql(self, sql, node=None, db="qkms"):
        node = node or self.primary()
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{PG_BIN}/psql", "-X", "-q", "-At",
             "-h", os.path.join(self.state, node), "-p", str(self.pg_port[node]), "-U", "postgres",
             "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, check=True).stdout

    def bootstrap_db(self):
        node = self.primary()
        # The password goes through psql's variables on stdin, never argv.
        subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{PG_BIN}/psql", "-X", "-q",
             "-h", os.path.join(self.state, node), "-p", str(self.pg_port[node]), "-U", "postgres",
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-v", f"pw={self.db_pw}"],
            input="CREATE ROLE qkms LOGIN PASSWORD :'pw';\nCREATE DATABASE qkms OWNER qkms;\n",
            text=True, check=True, capture_output=True)

    # -- HAProxy -----------------------------------------------------------
    def start_haproxy(self):
        from haproxy_conf import render
        cfg = os.path.join(self.state, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(render(
                kmsd_bind=f"127.0.0.1:{self.haproxy_kmsd}",
                pg_bind=f"127.0.0.1:{self.haproxy_pg}",
                stats_bind=f"127.0.0.1:{self.haproxy_stats}",
                kmsd=[(k, f"127.0.0.1:{self.kmsd_port[k]}") for k in self.kmsd_names],
                pg=[(n, f"127.0.0.1:{self.pg_port[n]}", self.rest_port[n]) for n in self.pg_nodes]))
        subprocess.run(["haproxy", "-c", "-q", "-f", cfg], check=True)
        self._start("haproxy", ["haproxy", "-db", "-f", cfg])

    # -- kmsd --------------------------------------------------------------
    def init_token(self):
        d = os.path.join(self.state, "softhsm")
        os.makedirs(os.path.join(d, "tokens"))
        self.softhsm_conf = os.path.join(d, "softhsm2.conf")
        with open(self.softhsm_conf, "w") as f:
            f.write(f"directories.tokendir = {d}/tokens\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
        self.pin_file = os.path.join(self.state, "token.pin")
        pin = secrets.token_hex(12)
        with open(self.pin_file, "w") as f:
            f.write(pin)
        os.chmod(self.pin_file, 0o600)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "qkms",
                        "--so-pin", secrets.token_hex(12), "--pin", pin],
                       env=dict(os.environ, SOFTHSM2_CONF=self.softhsm_conf),
                       check=True, capture_output=True)
        self.pgpass = os.path.join(self.state, "pgpass")
        with open(self.pgpass, "w") as f:
            f.write(f"*:*:qkms:qkms:{self.db_pw}\n")
        os.chmod(self.pgpass, 0o600)

    def db_addr(self, k):
        return f"127.0.0.{self.kmsd_names.index(k) + 1}"

    def partition(self, k, nodes=None):
        """Cut kmsd k off the PostgreSQL nodes (all, or those named): packets
        to and from the nodes' ports on its address are dropped on input."""
        self.heal()  # one rule set at a time
        ports = ", ".join(str(self.pg_port[n]) for n in (nodes or self.pg_nodes))
        a = self.db_addr(k)
        rules = (f"table ip {self.nft_table} {{\n chain input {{\n"
                 f"  type filter hook input priority -10; policy accept;\n"
                 f"  ip daddr {a} tcp dport {{ {ports} }} drop\n"
                 f"  ip saddr {a} tcp sport {{ {ports} }} drop\n }}\n}}\n")
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
        self.partitioned = True

    def heal(self):
        if self.partitioned:
            subprocess.run(["nft", "delete", "table", "ip", self.nft_table], check=True)
            self.partitioned = False

    def kmsd_conf(self, k):
        hosts = ",".join(self.db_addr(k) for _ in self.pg_nodes)
        ports = ",".join(str(self.pg_port[n]) for n in self.pg_nodes)
        conf = os.path.join(self.state, f"{k}.conf")
        with open(conf, "w") as f:
            f.write(f"""listen_addr = 127.0.0.1
listen_port = {self.kmsd_port[k]}
db_conninfo = "host={hosts} port={ports} dbname=qkms user=qkms passfile={self.pgpass} target_session_attrs=read-write connect_timeout=2"
{HA_SETTINGS}
pkcs11_module = {SOFTHSM}
pkcs11_token_label = qkms
pkcs11_pin_file = {self.pin_file}
bootstrap_token_file = {self.state}/admin.token
instance_name = {k}
log_level = info
""")
        return conf

    def start_kmsd(self, k, wait=True):
        env = dict(os.environ, SOFTHSM2_CONF=self.softhsm_conf)
        self._start(k, [KMSD, "-c", self.kmsd_conf(k)], env=env)
        if wait and not wait_for(lambda: requests.get(
                f"http://127.0.0.1:{self.kmsd_port[k]}/readyz", timeout=2).status_code == 200, 60):
            raise RuntimeError(f"{k} not ready; log: {self.state}/{k}.log")

    def kmsd_ready(self, k):
        try:
            return requests.get(f"http://127.0.0.1:{self.kmsd_port[k]}/readyz",
                                timeout=2).status_code == 200
        except requests.RequestException:
            return False

    @property
    def url(self):
        """The devices' address: HAProxy in front of every kmsd."""
        return f"http://127.0.0.1:{self.haproxy_kmsd}"

    def admin(self, method, path, k=None, **kw):
        base = f"http://127.0.0.1:{self.kmsd_port[k or self.kmsd_names[0]]}"
        return requests.request(method, base + path, timeout=30,
                                headers={"Authorization": f"Bearer {self.admin_token}"}, **kw)

    # -- the whole topology ------------------------------------------------
    def up(self):
        # A harness killed before its teardown may have left its rules.
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        for line in tables.splitlines():
            name = line.split()[-1] if line.startswith("table ip qkms_ha_") else None
            if name:
                subprocess.run(["nft", "delete", "table", "ip", name], check=False)
        self.start_etcd()
        for i, n in enumerate(self.pg_nodes):
            self.start_patroni(n)
            if i == 0 and not wait_for(lambda: self.primary() == n, 90):
                raise RuntimeError(f"{n} did not become primary; see {self.state}/{n}.log")
        if not wait_for(lambda: self.sync_standby() is not None and all(
                self.role(n) for n in self.pg_nodes), 120):
            raise RuntimeError("the nodes did not all come up with a synchronous standby")
        self.bootstrap_db()
        self.init_token()
        # The first kmsd creates the schema and the master key; then the others.
        for k in self.kmsd_names:
            self.start_kmsd(k)
        with open(os.path.join(self.state, "admin.token")) as f:
            self.admin_token = f.read().strip()
        self.start_haproxy()
        if not wait_for(lambda: requests.get(self.url + "/readyz", timeout=2).status_code == 200, 30):
            raise RuntimeError("HAProxy does not reach kmsd")

    def down(self):
        self.heal()
        for k in self.kmsd_names:
            self.stop(k)
        self.stop("haproxy")
        for n in self.pg_nodes:
            self.stop(n)
        self.stop("etcd")
        self.heal()
        for f in self.logs.values():
            f.close()

    def destroy(self):
        self.down()
        # Nothing may outlive the harness: a postmaster whose Patroni was
        # killed keeps running on its own.
        subprocess.run(["pkill", "-KILL", "-f", f"postgres -D {self.state}/"], check=False)
        if os.environ.get("QKMS_HA_KEEP") != "1":
            shutil.rmtree(self.state, ignore_errors=True)

    def haproxy_servers(self):
        """HAProxy's view: {(backend, server): status} from its stats CSV."""
        r = requests.get(f"http://127.0.0.1:{self.haproxy_stats}/stats;csv", timeout=2)
        out = {}
        for line in r.text.splitlines()[1:]:
            f = line.split(",")
            if len(f) > 17 and f[1] not in ("FRONTEND", "BACKEND"):
                out[(f[0], f[1])] = f[17]
        return out

    def write_json(self, name, obj):
        with open(os.path.join(self.state, name), "w") as f:
            json.dump(obj, f, indent=1)
