# tools/qrng-sim.py (a network QRNG stand-in with failure modes) for the
# qrng-sim service of docker/compose.yaml: data on 0.0.0.0:8090 (the compose
# network), the unauthenticated admin port on 127.0.0.1:8091 inside the
# container only (switch modes with
#   docker compose exec qrng-sim python3 -c "..." or a curl from the container).
#
# Build context: the repository root.
#   docker build -f docker/qrng-sim.Dockerfile -t localhost/qkms/qrng-sim .
ARG BASE=localhost/qkms-debian:bookworm
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN set -eu; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends python3 >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log; \
    groupadd --gid 10002 qrng; \
    useradd --no-log-init --uid 10002 --gid qrng --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin qrng
COPY tools/qrng-sim.py /usr/local/bin/qrng-sim.py
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER qrng
EXPOSE 8090
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request as u; sys.exit(len(u.urlopen('http://127.0.0.1:8090/random?bytes=16', timeout=2).read()) != 16)"]
ENTRYPOINT ["python3", "/usr/local/bin/qrng-sim.py"]
CMD ["--host", "0.0.0.0", "--port", "8090", "--admin-host", "127.0.0.1", "--admin-port", "8091"]
