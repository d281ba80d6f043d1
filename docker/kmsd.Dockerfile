# kmsd, kmsctl and qkms-device in one image (docker/compose.yaml runs it as
# the services init, kmsd, demo-setup, vehicle and encryptor).
#
#   build:   Debian bookworm + the build packages of scripts/deps.sh; make; make install
#   runtime: the runtime libraries only, SoftHSMv2, curl (health check),
#            iproute2 (the entrypoint finds the metrics listener's address);
#            user qkms (10001); nothing under / needs to be writable
#            (compose runs it read_only with volumes and a tmpfs /tmp).
#
# Build context: the repository root.
#   docker build -f docker/kmsd.Dockerfile -t localhost/qkms/kmsd .
# BASE defaults to the local image of docker/base-image.sh; with a registry,
# --build-arg BASE=debian:bookworm works unchanged.
ARG BASE=localhost/qkms-debian:bookworm

FROM ${BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive
# The build packages are the BUILD list of scripts/deps.sh (the one package
# list): its variable assignments are sourced, nothing else of it runs.
COPY scripts/deps.sh /tmp/deps.sh
RUN set -eu; \
    sed '/^PKGS=/,$d' /tmp/deps.sh > /tmp/deps-vars.sh; \
    . /tmp/deps-vars.sh; \
    test -n "$BUILD"; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends $BUILD >/dev/null; \
    rm -rf /var/lib/apt/lists/* /tmp/deps.sh /tmp/deps-vars.sh
WORKDIR /src
# Only what `make all install` reads (no build/, var/ or tests/ from the host).
COPY Makefile ./
COPY common/ common/
COPY pkcs11/ pkcs11/
COPY kmsd/ kmsd/
COPY cli/ cli/
COPY device/ device/
COPY schema/ schema/
COPY scripts/ scripts/
COPY docs/kmsd.conf.example docs/
RUN make -j2 all && make install PREFIX=/usr/local DESTDIR=/out \
    && strip --strip-unneeded /out/usr/local/bin/kmsd /out/usr/local/bin/kmsctl /out/usr/local/bin/qkms-device

FROM ${BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN set -eu; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends \
        libmicrohttpd12 libgnutls30 libjansson4 libpq5 libssl3 libcurl4 softhsm2 ca-certificates curl \
        iproute2 >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log; \
    groupadd --gid 10001 qkms; \
    useradd --no-log-init --uid 10001 --gid qkms --home-dir /var/lib/qkms --no-create-home \
        --shell /usr/sbin/nologin qkms; \
    install -d -o root -g root -m 0755 /var/lib/qkms /etc/qkms /usr/local/lib/qkms /run/qkms; \
    install -d -o qkms -g qkms -m 0700 /var/lib/qkms/token /var/lib/qkms/admin /var/lib/qkms/fills; \
    install -d -o root -g root -m 0755 /run/qkms/pin /run/qkms/db
COPY --from=build /out/usr/local/ /usr/local/
COPY docker/softhsm2.conf /etc/qkms/softhsm2.conf
# The settings of kmsd behind HAProxy on a Patroni cluster, read only where
# KMSD_CONFIG names it (the compose profile "ha": docker/compose.ha.yaml).
COPY docker/kmsd-ha.conf /etc/qkms/kmsd-ha.conf
COPY docker/kmsd-entrypoint.sh docker/qkms-init.sh docker/demo-setup.sh docker/demo-device.sh \
     /usr/local/lib/qkms/
# SoftHSM's token lives in /var/lib/qkms/token (a volume). kmsctl inside the
# container finds the bootstrap admin token without options:
#   docker compose exec kmsd kmsctl status
ENV SOFTHSM2_CONF=/etc/qkms/softhsm2.conf \
    KMS_TOKEN_FILE=/var/lib/qkms/admin/admin.token
WORKDIR /var/lib/qkms
USER qkms
EXPOSE 8470
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8470/readyz || exit 1
ENTRYPOINT ["/usr/local/lib/qkms/kmsd-entrypoint.sh"]
