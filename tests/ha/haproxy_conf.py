"""The HAProxy configuration of the HA topology: devices reach every kmsd
whose /readyz answers 200; PostgreSQL clients reach the node whose Patroni
says it is the primary (docs/ha.md)."""


def render(kmsd_bind, pg_bind, stats_bind, kmsd, pg):
    kmsd_servers = "\n".join(f"    server {name} {addr} check" for name, addr in kmsd)
    pg_servers = "\n".join(f"    server {name} {addr} check port {rest}" for name, addr, rest in pg)
    return f"""global
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    timeout check 2s
    # A connection refused by one kmsd is tried on the next one.
    retries 2
    option redispatch

# Devices: TCP, so that TLS (and mutual TLS) ends at kmsd.
listen kmsd
    bind {kmsd_bind}
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    # A kmsd that is down is asked every 250 ms, so it is back within half
    # a second of being ready (kmsd answers /readyz from its last round:
    # frequent checks cost it at most one small commit per 20 ms).
    default-server inter 1s downinter 250ms fall 2 rise 2 on-marked-down shutdown-sessions
{kmsd_servers}

# PostgreSQL: the primary only (Patroni's REST API answers 200 on /primary).
listen postgres
    bind {pg_bind}
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 1s downinter 250ms fall 2 rise 2 on-marked-down shutdown-sessions
{pg_servers}

listen stats
    mode http
    bind {stats_bind}
    stats enable
    stats uri /stats
"""
