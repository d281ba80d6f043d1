"""The Patroni configuration of one PostgreSQL node of the HA topology
(docs/ha.md explains every setting that matters to qkms).

One renderer for both places the topology runs, so that they cannot drift:
tests/ha/hastack.py (processes on loopback: the defaults below) and the
compose profile docker/compose.ha.yaml (docker/patroni-entrypoint.sh runs
this module in the container at each start, with the container's names
and the secrets of the init service)."""

# The host drills: every node on loopback, two addresses so that the
# harness can cut one kmsd off by its address (hastack.py).
LOOPBACK = {
    "pg_listen": "127.0.0.1,127.0.0.2",
    "pg_connect": "127.0.0.1",
    "rest_listen": "127.0.0.1",
    "rest_connect": "127.0.0.1",
    "replication_from": "127.0.0.1/32",
    "clients_from": "127.0.0.0/8",
    "listen_comment": "Two addresses: the harness cuts one kmsd off by its address (hastack.py).",
    "post_bootstrap": None,
    "pgpass": None,
}


def render(scope, node, pg_port, rest_port, etcd, data_dir, socket_dir, superuser_pw, repl_pw,
           **where):
    """where: LOOPBACK's keys, to place the node elsewhere (a container: its
    service name as connect address, `samenet` for the clients, a
    post_bootstrap script that creates the qkms role and database)."""
    w = dict(LOOPBACK, **where)
    unknown = set(w) - set(LOOPBACK)
    if unknown:
        raise TypeError(f"render: unknown settings {sorted(unknown)}")
    post_bootstrap = (f"\n  # Run once, on the node that initialised the cluster.\n"
                      f"  post_bootstrap: {w['post_bootstrap']}" if w["post_bootstrap"] else "")
    pgpass = w["pgpass"] or f"{socket_dir}/pgpass.patroni"
    return f"""scope: {scope}
name: {node}
log:
  level: INFO
restapi:
  listen: {w['rest_listen']}:{rest_port}
  connect_address: {w['rest_connect']}:{rest_port}
etcd3:
  hosts: {etcd}
bootstrap:
  dcs:
    # A primary that cannot renew its leader key for ttl seconds is
    # replaced; loop_wait + 2 * retry_timeout must stay below ttl.
    # loop_wait 1: a released leader key is taken, and a new primary's
    # synchronous standby named, within about a second.
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    # Commits wait for one synchronous standby (synchronous_commit = on with
    # Patroni's synchronous_standby_names), and only a synchronous standby is
    # promoted: a key answered to a device is on two nodes. Strict: with no
    # standby left, commits wait rather than go on with the primary alone
    # (three nodes keep one standby to spare).
    synchronous_mode: true
    synchronous_mode_strict: true
    synchronous_node_count: 1
    # Keep the primary up while the DCS (etcd) is away, as long as every
    # member answers it over the REST API.
    failsafe_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        max_connections: 200
        synchronous_commit: "on"
        password_encryption: scram-sha-256
        # A standby whose first try to stream from a new primary failed
        # (its slot not made yet) tries again after this, not after 5 s:
        # in strict mode commits wait until a standby streams.
        wal_retrieve_retry_interval: 500ms
        # A client that vanished without closing (a partitioned or dead kmsd)
        # is found by the server in about 20 s, and a transaction left open
        # ends after a minute: their row and advisory locks (a reaper's
        # FOR UPDATE rows, a rotation's lock) do not outlive the instance.
        tcp_keepalives_idle: 10
        tcp_keepalives_interval: 3
        tcp_keepalives_count: 3
        idle_in_transaction_session_timeout: 60s
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
    - data-checksums{post_bootstrap}
  pg_hba:
    - local all postgres peer
    - host replication replicator {w['replication_from']} scram-sha-256
    - host all all {w['clients_from']} scram-sha-256
postgresql:
  # {w['listen_comment']}
  listen: {w['pg_listen']}:{pg_port}
  connect_address: {w['pg_connect']}:{pg_port}
  data_dir: {data_dir}
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: {pgpass}
  # A new standby clones the primary at once: pg_basebackup's default
  # spread checkpoint made a clone of a freshly initialised primary wait
  # about 90 s, and in strict mode every commit with it.
  basebackup:
    - checkpoint: fast
  authentication:
    superuser:
      username: postgres
      password: {superuser_pw}
    replication:
      username: replicator
      password: {repl_pw}
    rewind:
      username: postgres
      password: {superuser_pw}
  parameters:
    unix_socket_directories: {socket_dir}
"""
