#!/usr/bin/python3
"""Writes the Patroni configuration of one PostgreSQL node of the compose
profile "ha" (docker/compose.ha.yaml) to stdout, through the renderer the
loopback drills use (tests/ha/patroni_conf.py, beside this file in the
image), with the container's names and the init service's secrets.

Run by docker/patroni-entrypoint.sh as root (the password files are root's,
mode 0400); the entrypoint writes the result where only the postgres user
reads it. The passwords never appear in an argument or the environment.

Environment: PATRONI_NODE (this node's service name: its name in the
cluster), PATRONI_ADDRESS (the address the other nodes, HAProxy and the
replicas reach it at; default: found, see own_address), PATRONI_SCOPE,
PATRONI_ETCD (host:port), PATRONI_SECRETS (the directory of
superuser.password and replication.password), PATRONI_DATA (the data
directory), PATRONI_RUN (the node's private run directory: the pgpass
Patroni writes and the post-bootstrap script's password file).
"""
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from patroni_conf import render  # noqa: E402


def secret(path):
    with open(path) as f:
        s = f.read().strip()
    # The init service writes hex; anything else would need YAML quoting.
    if not re.fullmatch(r"[0-9a-f]{32,}", s):
        sys.exit(f"patroni-render: {path}: want 32+ hex digits")
    return s


def own_address(peer, wait_s=60):
    """This container's address on the network where peer (host:port, the
    DCS) is: the source address of a route to it. Patroni publishes it in
    the DCS as the node's connect addresses, so the other nodes reach this
    one by address, not by name. By name they would not find it again after
    a restart: Patroni (with etcd) caches every name it resolves for ten
    minutes, and a restarted container gets a new address. The primary, its
    DCS away, would then fail to reach that node's REST API and demote
    itself although failsafe_mode should keep it (seen in the etcd restart
    drill after a failover)."""
    host, _, port = peer.rpartition(":")
    deadline = time.time() + wait_s
    while True:
        try:
            ip = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((ip, int(port)))  # no packet: only picks the route
                return s.getsockname()[0]
        except OSError as e:
            if time.time() >= deadline:
                sys.exit(f"patroni-render: no route to the DCS {peer} in {wait_s} s: {e}")
            time.sleep(0.5)


def main():
    node = os.environ["PATRONI_NODE"]
    etcd = os.environ.get("PATRONI_ETCD", "etcd:2379")
    addr = os.environ.get("PATRONI_ADDRESS") or own_address(etcd)
    secrets = os.environ.get("PATRONI_SECRETS", "/run/qkms/patroni")
    run = os.environ.get("PATRONI_RUN", "/run/patroni")
    sys.stdout.write(render(
        scope=os.environ.get("PATRONI_SCOPE", "qkms"), node=node,
        pg_port=5432, rest_port=8008, etcd=etcd,
        data_dir=os.environ.get("PATRONI_DATA", "/var/lib/postgresql/patroni/data"),
        socket_dir="/run/postgresql",
        superuser_pw=secret(os.path.join(secrets, "superuser.password")),
        repl_pw=secret(os.path.join(secrets, "replication.password")),
        # Every address of the container; the others reach it at addr
        # (published in the DCS afresh at each start).
        pg_listen="0.0.0.0", pg_connect=addr, rest_listen="0.0.0.0", rest_connect=addr,
        # The nodes are on the backend network alone: samenet is that
        # network's subnet, whatever address range the engine gave it.
        replication_from="samenet", clients_from="samenet",
        listen_comment="Every address: the container is on the backend network only.",
        post_bootstrap="/usr/local/lib/qkms/patroni-post-bootstrap.sh",
        pgpass=os.path.join(run, "pgpass")))


if __name__ == "__main__":
    main()
