"""The HAProxy configuration of the HA topology: devices reach every kmsd
whose /readyz answers 200; PostgreSQL clients reach the node whose Patroni
says it is the primary (docs/ha.md).

One renderer for tests/ha/hastack.py (loopback, plain HTTP: the defaults)
and the compose profile (docker/haproxy.Dockerfile renders it at build
time with kmsd_tls and resolvers)."""


def render(kmsd_bind, pg_bind, stats_bind, kmsd, pg, kmsd_tls=False, resolvers=False):
    """kmsd_tls: kmsd's device listener speaks TLS, so the health check
    does too (`check-ssl`; it needs no client certificate, and verifies
    nothing: it carries no secret, and what it learns is only whether
    /readyz answers 200). resolvers: the servers are names that a container
    engine's DNS answers and whose addresses change when a container
    restarts or is reconnected; HAProxy then starts without them resolved
    and follows their addresses at run time."""
    check = " check check-ssl verify none" if kmsd_tls else " check"
    kmsd_servers = "\n".join(f"    server {name} {addr}{check}" for name, addr in kmsd)
    pg_servers = "\n".join(f"    server {name} {addr} check port {rest}" for name, addr, rest in pg)
    dns, dns_opts = "", ""
    if resolvers:
        # The engine's DNS servers from /etc/resolv.conf; a name asked again
        # every second; an address kept while the DNS is away (hold valid),
        # dropped soon after its container is gone (hold nx: the server is
        # then in maintenance, not checked at a stale address).
        dns = """
resolvers engine
    parse-resolv-conf
    resolve_retries 3
    timeout resolve 1s
    timeout retry 1s
    hold valid 10s
    hold nx 2s
    hold obsolete 2s
"""
        dns_opts = " resolvers engine resolve-prefer ipv4 init-addr last,libc,none"
    return f"""global
    maxconn 4096
{dns}
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
    default-server inter 1s downinter 250ms fall 2 rise 2 on-marked-down shutdown-sessions{dns_opts}
{kmsd_servers}

# PostgreSQL: the primary only (Patroni's REST API answers 200 on /primary).
listen postgres
    bind {pg_bind}
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 1s downinter 250ms fall 2 rise 2 on-marked-down shutdown-sessions{dns_opts}
{pg_servers}

listen stats
    mode http
    bind {stats_bind}
    stats enable
    stats uri /stats
"""
