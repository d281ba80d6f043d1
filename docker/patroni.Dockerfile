# The PostgreSQL nodes and the DCS of the compose profile "ha"
# (docker/compose.ha.yaml), from Debian's packages: PostgreSQL 15 managed by
# Patroni (services pg1, pg2, pg3; docker/patroni-entrypoint.sh) and etcd
# (service etcd; docker/etcd-entrypoint.sh). One image for both: etcd is a
# single binary, and one image is one build and one set of layers.
#
# Patroni's configuration is rendered at each start, in the container, by
# tests/ha/patroni_conf.py: the very renderer of the loopback drills (make
# ha-test), so that both run the same settings (synchronous_mode_strict,
# ttl, loop_wait, keepalives: docs/ha.md). Nothing secret is in the image:
# the passwords come from the init service's volumes.
#
# Build context: the repository root.
#   docker build -f docker/patroni.Dockerfile -t localhost/qkms/patroni .
ARG BASE=localhost/qkms-debian:bookworm
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
# postgresql-common first, so that installing the server creates no cluster
# (Patroni makes its own). python3-etcd: Patroni's etcd3 support imports it
# (the package only recommends it). curl: the health checks.
RUN set -eu; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null; \
    sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*$/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf; \
    grep -q '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf; \
    apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 \
        patroni python3-etcd etcd-server curl >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log; \
    test ! -e /var/lib/postgresql/15/main; \
    id etcd >/dev/null; \
    install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/patroni; \
    install -d -o postgres -g postgres -m 2775 /run/postgresql; \
    install -d -o etcd -g etcd -m 0700 /var/lib/etcd; \
    install -d -o root -g root -m 0755 /usr/local/lib/qkms /run/qkms/db /run/qkms/patroni
COPY tests/ha/patroni_conf.py docker/patroni-render.py docker/patroni-entrypoint.sh \
     docker/patroni-post-bootstrap.sh docker/etcd-entrypoint.sh /usr/local/lib/qkms/
# The renderer is imported from a read-only file system: no bytecode files.
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 5432 8008 2379
HEALTHCHECK --interval=5s --timeout=3s --start-period=90s --retries=5 \
    CMD curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8008/health || exit 1
ENTRYPOINT ["/usr/local/lib/qkms/patroni-entrypoint.sh"]
