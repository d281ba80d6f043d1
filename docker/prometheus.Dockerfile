# Prometheus from Debian's package, for the prometheus service of
# docker/compose.yaml: scrapes kmsd's metrics listener on the backend network
# and evaluates the alert rules shipped in docker/prometheus/rules.yml.
# Data (15 days) in the volume "prometheus"; the web UI and API on :9090 of
# the backend network, not published (docs/operations.md, "Prometheus").
#
# Build context: the repository root.
#   docker build -f docker/prometheus.Dockerfile -t localhost/qkms/prometheus .
ARG BASE=localhost/qkms-debian:bookworm
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
# The package makes a system user "prometheus"; it then gets a fixed ID, so
# that the volume's owner is the same in every image built.
RUN set -eu; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /etc/prometheus/*.yml; \
    groupmod --gid 10003 prometheus; \
    usermod --uid 10003 --gid 10003 prometheus; \
    rm -rf /var/lib/prometheus; \
    install -d -o prometheus -g prometheus -m 0750 /var/lib/prometheus /var/lib/prometheus/metrics2
COPY docker/prometheus/prometheus.yml docker/prometheus/rules.yml /etc/prometheus/
# The configuration is checked at build time: a broken file fails the build,
# not the first start.
RUN promtool check config /etc/prometheus/prometheus.yml
USER prometheus
EXPOSE 9090
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
    CMD promtool query instant http://127.0.0.1:9090 'vector(1)' >/dev/null || exit 1
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", \
     "--storage.tsdb.path=/var/lib/prometheus/metrics2", \
     "--storage.tsdb.retention.time=15d", \
     "--web.listen-address=0.0.0.0:9090"]
