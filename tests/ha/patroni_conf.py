"""The Patroni configuration of one PostgreSQL node of the HA topology
(docs/ha.md explains every setting that matters to qkms)."""


def render(scope, node, pg_port, rest_port, etcd, data_dir, socket_dir, superuser_pw, repl_pw):
    return f"""scope: {scope}
name: {node}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
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
    - data-checksums
  pg_hba:
    - local all postgres peer
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.0/8 scram-sha-256
postgresql:
  # Two addresses: the harness cuts one kmsd off by its address (hastack.py).
  listen: 127.0.0.1,127.0.0.2:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data_dir}
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: {socket_dir}/pgpass.patroni
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
