# HAProxy (Debian's package) for the compose profile "ha"
# (docker/compose.ha.yaml): the devices' address in front of kmsd1 and
# kmsd2 (TCP, so TLS and the client certificate check end at kmsd; health:
# /readyz over TLS), and the PostgreSQL primary's port for tools that take
# one host (health: Patroni's REST API, OPTIONS /primary).
#
# The configuration is rendered here, at build time, by
# tests/ha/haproxy_conf.py: the renderer of the loopback drills (make
# ha-test), with the container's names, TLS health checks and the engine's
# DNS (servers follow their containers' addresses). It is checked at build
# time: a broken file fails the build, not the first start. The PostgreSQL
# port binds only the address facing the backend network, which
# docker/haproxy-entrypoint.sh finds at each start (the devices' network
# must not reach PostgreSQL through HAProxy).
#
# Build context: the repository root.
#   docker build -f docker/haproxy.Dockerfile -t localhost/qkms/haproxy .
ARG BASE=localhost/qkms-debian:bookworm

FROM ${BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# curl: the health check (HAProxy's stats page); iproute2: the entrypoint
# finds the backend network's address.
RUN set -eu; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends haproxy curl iproute2 >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /etc/haproxy/haproxy.cfg; \
    install -d -o root -g root -m 0755 /usr/local/lib/qkms

FROM runtime AS conf
RUN set -eu; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends python3 >/dev/null
COPY tests/ha/haproxy_conf.py /tmp/haproxy_conf.py
# Names are the compose services'; ports are the containers' own.
RUN set -eu; \
    cd /tmp; \
    python3 -B -c 'import haproxy_conf; print(haproxy_conf.render( \
        kmsd_bind="0.0.0.0:8470", \
        pg_bind="\"${QKMS_HAPROXY_PG_ADDR}:5432\"", \
        stats_bind="127.0.0.1:8404", \
        kmsd=[("kmsd1", "kmsd1:8470"), ("kmsd2", "kmsd2:8470")], \
        pg=[(n, n + ":5432", 8008) for n in ("pg1", "pg2", "pg3")], \
        kmsd_tls=True, resolvers=True), end="")' > /tmp/haproxy.cfg; \
    QKMS_HAPROXY_PG_ADDR=127.0.0.1 haproxy -c -q -f /tmp/haproxy.cfg

FROM runtime
COPY --from=conf /tmp/haproxy.cfg /etc/haproxy/haproxy.cfg
COPY docker/haproxy-entrypoint.sh /usr/local/lib/qkms/
USER haproxy
EXPOSE 8470 5432
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS --max-time 2 'http://127.0.0.1:8404/stats;csv' | grep -Eq '^kmsd,kmsd[0-9]+,.*,UP,' || exit 1
ENTRYPOINT ["/usr/local/lib/qkms/haproxy-entrypoint.sh"]
