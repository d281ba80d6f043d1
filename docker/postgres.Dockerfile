# PostgreSQL 15 from Debian's packages, for the postgres service of
# docker/compose.yaml. The data directory is a named volume; the entrypoint
# (docker/postgres-entrypoint.sh) creates the cluster on first start and the
# qkms role and database with the password the init service generated.
#
# Build context: the repository root.
#   docker build -f docker/postgres.Dockerfile -t localhost/qkms/postgres:15 .
ARG BASE=localhost/qkms-debian:bookworm
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
# postgresql-common first, so that installing the server creates no cluster.
RUN set -eu; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null; \
    sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*$/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf; \
    grep -q '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf; \
    apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log; \
    test ! -e /var/lib/postgresql/15/main; \
    install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data; \
    install -d -o postgres -g postgres -m 2775 /run/postgresql
COPY docker/postgres-entrypoint.sh /usr/local/bin/qkms-postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
# SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client,
# and kmsd keeps a connection pool open).
STOPSIGNAL SIGINT
EXPOSE 5432
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=5 \
    CMD pg_isready -q -h 127.0.0.1 -p 5432 -d qkms -U qkms || exit 1
ENTRYPOINT ["/usr/local/bin/qkms-postgres-entrypoint"]
