# qkms — build, test, run.
#   make                      release build into build/release/
#   make SANITIZE=address,undefined   sanitizer build into build/asan/
#   make test                 unit + integration + HA drill tests under ASan+UBSan
#   make ha-test              the HA topology's failover drills (tests/ha/, docs/ha.md)
#   make run                  local PostgreSQL + SoftHSM token under ./var, then kmsd
#   make bench                benchmarks
#   make install PREFIX=/usr/local DESTDIR=
#   make deps                 install the Debian packages (root)
#   make fuzz                 libFuzzer targets (clang), each run FUZZ_SECONDS s
#   make compose-up | compose-down | compose-test      the compose stack (docker/compose.yaml)
#   make compose-ha-up | compose-ha-down | compose-ha-test   its HA profile and the
#                             failover drills on containers (docker/compose.ha.yaml, docs/ha.md)

CC       ?= gcc
PREFIX   ?= /usr/local
DESTDIR  ?=
SANITIZE ?=
PYTHON   ?= /usr/bin/python3

ifeq ($(SANITIZE),)
  BUILD  := build/release
  OPT    := -O2 -D_FORTIFY_SOURCE=2
  SANFLAGS :=
else
  BUILD  := build/asan
  OPT    := -O1 -g -fno-omit-frame-pointer
  SANFLAGS := -fsanitize=$(SANITIZE) -fno-sanitize-recover=all
endif

PKGS     := libmicrohttpd gnutls jansson libpq openssl libcurl p11-kit-1
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
CFLAGS   += -std=c17 -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wvla -fstack-protector-strong \
            -fPIE $(OPT) $(SANFLAGS) -D_GNU_SOURCE -Icommon -Ipkcs11 -Ikmsd -Idevice -I$(BUILD)/gen \
            $(PKG_CFLAGS) -MMD -MP
LDFLAGS  += -pie -Wl,-z,relro,-z,now $(SANFLAGS)

SVC_LIBS  := $(shell pkg-config --libs jansson libpq libcrypto libcurl) -lanl -lpthread -ldl -lm
KMSD_LIBS := $(shell pkg-config --libs libmicrohttpd gnutls) $(SVC_LIBS)
CLI_LIBS  := $(shell pkg-config --libs libcurl jansson libcrypto) -pthread

include device/device.mk
COMMON_SRC := $(wildcard common/*.c)
P11_SRC    := $(wildcard pkcs11/*.c)
# kmsd's layers (docs/architecture.md): the doors in kmsd/api/ are the only
# code that sees libmicrohttpd; everything else links without it.
KMSD_API_SRC := $(wildcard kmsd/api/*.c)
KMSD_SVC_SRC := $(filter-out kmsd/main.c,$(wildcard kmsd/*.c)) \
                $(wildcard kmsd/service/*.c kmsd/store/*.c kmsd/entropy/*.c)
KMSD_SRC   := $(KMSD_SVC_SRC) $(KMSD_API_SRC)
CLI_SRC    := $(wildcard cli/*.c)
SCHEMA     := $(sort $(wildcard schema/*.sql))

COMMON_OBJ := $(COMMON_SRC:%.c=$(BUILD)/%.o)
P11_OBJ    := $(P11_SRC:%.c=$(BUILD)/%.o)
KMSD_OBJ   := $(KMSD_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/schema_sql.o
SVC_OBJ    := $(KMSD_SVC_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/schema_sql.o
API_OBJ    := $(KMSD_API_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/%.o)
DEVICE_OBJ := $(DEVICE_LIB_SRC:%.c=$(BUILD)/%.o)

# The archives are rebuilt when the list of sources changes (a file removed
# or renamed), not only when a member is newer: a stale member would clash.
SRC_LIST   := $(BUILD)/sources.list
SRC_NAMES  := $(sort $(KMSD_SRC) $(COMMON_SRC) $(P11_SRC) $(DEVICE_LIB_SRC))
$(shell mkdir -p $(BUILD); echo '$(SRC_NAMES)' | cmp -s - $(SRC_LIST) || echo '$(SRC_NAMES)' > $(SRC_LIST))

LIBP11     := $(BUILD)/libqkms-p11.a
LIBKMSD    := $(BUILD)/libkmsd.a
LIBSVC     := $(BUILD)/libqkms-service.a
LIBAPI     := $(BUILD)/libqkms-api.a
LIBDEVICE  := $(BUILD)/libqkms-device.a
QKMSDEV    := $(BUILD)/bin/qkms-device
KMSD       := $(BUILD)/bin/kmsd
KMSCTL     := $(BUILD)/bin/kmsctl

UNIT_SRC   := $(wildcard tests/unit/test_*.c)
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
# Service tests: the key service against a real PostgreSQL and token, linked
# without libmicrohttpd (run by tests/integration/test_service_units.py).
SVC_TEST_SRC := $(wildcard tests/service/test_*.c)
SVC_TEST_BIN := $(SVC_TEST_SRC:tests/service/%.c=$(BUILD)/tests/service/%)

.PHONY: all clean test unit integration ha-test service-tests run bench install deps check-config-doc asan man
.DEFAULT_GOAL := all

all: $(KMSD) $(KMSCTL) $(QKMSDEV)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/gen/schema_sql.c: $(SCHEMA) scripts/embed-sql.sh
	@mkdir -p $(dir $@)
	sh scripts/embed-sql.sh $@ $(SCHEMA)

$(BUILD)/gen/schema_sql.o: $(BUILD)/gen/schema_sql.c
	@echo "CC $<"
	@$(CC) $(CFLAGS) -c $< -o $@

$(LIBP11): $(P11_OBJ) $(SRC_LIST)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(LIBKMSD): $(KMSD_OBJ) $(COMMON_OBJ) $(SRC_LIST)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(LIBSVC): $(SVC_OBJ) $(COMMON_OBJ) $(SRC_LIST)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(LIBAPI): $(API_OBJ) $(SRC_LIST)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(LIBDEVICE): $(DEVICE_OBJ) $(SRC_LIST)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(QKMSDEV): $(DEVICE_PROG_SRC:%.c=$(BUILD)/%.o) $(BUILD)/common/manroff.o $(LIBDEVICE)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(CLI_LIBS) -o $@

$(KMSD): $(BUILD)/kmsd/main.o $(LIBAPI) $(LIBSVC) $(LIBP11) $(LIBDEVICE)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(KMSD_LIBS) -o $@

$(KMSCTL): $(CLI_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(CLI_LIBS) -o $@

# ---- tests ----------------------------------------------------------------
$(BUILD)/tests/%: tests/unit/%.c $(LIBKMSD) $(LIBP11) $(LIBDEVICE_TESTING)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $< $(LIBKMSD) $(LIBP11) $(LIBDEVICE_TESTING) $(KMSD_LIBS) $(CLI_LIBS) -lcmocka -o $@

$(BUILD)/tests/service/%: tests/service/%.c $(BUILD)/tests/service/fixture.o $(LIBSVC) $(LIBP11) $(LIBDEVICE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/service $(LDFLAGS) $< $(BUILD)/tests/service/fixture.o $(LIBSVC) $(LIBP11) $(LIBDEVICE) $(SVC_LIBS) -lcmocka -o $@

$(BUILD)/tests/service/fixture.o: tests/service/fixture.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/service -c $< -o $@

service-tests: $(SVC_TEST_BIN)

ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1 \
            LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# `make test` always builds and tests the sanitizer variant.
test:
	$(MAKE) SANITIZE=address,undefined unit integration ha-test

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $(ASAN_ENV) $$t; done

integration: $(KMSD) $(KMSCTL) $(QKMSDEV) $(SVC_TEST_BIN)
	$(ASAN_ENV) QKMS_KMSD=$(CURDIR)/$(KMSD) QKMS_KMSCTL=$(CURDIR)/$(KMSCTL) QKMS_DEVICE=$(CURDIR)/$(QKMSDEV) \
	  QKMS_SVC_TESTS="$(addprefix $(CURDIR)/,$(SVC_TEST_BIN))" \
	  $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

# High availability on one machine (docs/ha.md): etcd, Patroni-managed
# PostgreSQL with a synchronous standby, HAProxy and two kmsd, and the
# failover drills under a paired-key load (tests/ha/). Root: PostgreSQL runs
# as the postgres user and the partition drill adds an nftables rule.
HALOAD := $(BUILD)/tests/ha/haload
$(HALOAD): tests/ha/haload.c bench/httpc.c bench/fillload.c $(LIBDEVICE)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Ibench $(LDFLAGS) tests/ha/haload.c bench/httpc.c bench/fillload.c $(LIBDEVICE) \
	  $(CLI_LIBS) -lssl -o $@

ha-test: $(KMSD) $(KMSCTL) $(HALOAD)
	$(ASAN_ENV) QKMS_KMSD=$(CURDIR)/$(KMSD) QKMS_KMSCTL=$(CURDIR)/$(KMSCTL) \
	  QKMS_HALOAD=$(CURDIR)/$(HALOAD) $(PYTHON) -m pytest -q -p no:cacheprovider -s tests/ha $(PYTEST_ARGS)

# ---- run, bench, install --------------------------------------------------
run: all
	QKMS_KMSD=$(CURDIR)/$(KMSD) sh scripts/qkms-local.sh run

bench: all
	QKMS_KMSD=$(CURDIR)/$(KMSD) PYTHON=$(PYTHON) sh bench/run.sh

# Manual pages, made by the binaries from their own help tables
# (common/manroff.h), so the manual cannot drift from --help.
MAN_PAGES := $(BUILD)/man/kmsctl.1 $(BUILD)/man/qkms-device.1 $(BUILD)/man/kmsd.8
man: $(MAN_PAGES)

$(BUILD)/man/kmsctl.1: $(KMSCTL)
	@mkdir -p $(dir $@)
	$(KMSCTL) --man > $@.tmp && mv $@.tmp $@

$(BUILD)/man/qkms-device.1: $(QKMSDEV)
	@mkdir -p $(dir $@)
	$(QKMSDEV) --man > $@.tmp && mv $@.tmp $@

$(BUILD)/man/kmsd.8: $(KMSD)
	@mkdir -p $(dir $@)
	$(KMSD) --print-man > $@.tmp && mv $@.tmp $@

install: all $(MAN_PAGES)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/share/qkms
	install -m 0755 $(KMSD) $(KMSCTL) $(QKMSDEV) $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 $(LIBP11) $(LIBDEVICE) $(DESTDIR)$(PREFIX)/lib/
	install -m 0755 scripts/qkms-local.sh $(DESTDIR)$(PREFIX)/share/qkms/
	install -m 0644 docs/kmsd.conf.example $(DESTDIR)$(PREFIX)/share/qkms/
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions
	$(KMSCTL) completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/kmsctl
	$(KMSCTL) completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_kmsctl
	install -d $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0644 $(BUILD)/man/kmsctl.1 $(BUILD)/man/qkms-device.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 0644 $(BUILD)/man/kmsd.8 $(DESTDIR)$(PREFIX)/share/man/man8/

deps:
	sh scripts/deps.sh

# Optional: the container build copies only what `make all install` needs.
-include fuzz/fuzz.mk

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)

# ---- compose deployment (docker/compose.yaml; docker compose or podman-compose) ----
.PHONY: container-deps base-image compose-up compose-down compose-test \
        compose-ha-up compose-ha-down compose-ha-test
# podman + podman-compose + runc + debootstrap where docker compose is absent
container-deps:
	sh scripts/container-deps.sh

base-image:
	sh docker/base-image.sh

compose-up:
	bash docker/compose.sh up

compose-down:
	bash docker/compose.sh down

compose-test: all
	PYTHON=$(PYTHON) QKMS_KMSCTL=$(CURDIR)/$(KMSCTL) QKMS_DEVICE=$(CURDIR)/$(QKMSDEV) bash tests/compose/run.sh $(PYTEST_ARGS)

# The HA profile (docker/compose.ha.yaml: etcd, three Patroni nodes, HAProxy,
# two kmsd) and the failover drills on its containers (tests/compose_ha/,
# docs/ha.md "The compose profile"), under haload's mutual-TLS load.
compose-ha-up:
	bash docker/compose.sh --ha up

compose-ha-down:
	bash docker/compose.sh --ha down

compose-ha-test: all $(HALOAD)
	PYTHON=$(PYTHON) QKMS_DEVICE=$(CURDIR)/$(QKMSDEV) QKMS_HALOAD=$(CURDIR)/$(HALOAD) \
	  bash tests/compose_ha/run.sh $(PYTEST_ARGS)
