# ---- fuzzing: libFuzzer targets (fuzz/README.md) -----------------------------
#   make fuzz                   build every fuzz/fuzz_*.c and run each FUZZ_SECONDS s
#   make fuzz FUZZ_SECONDS=60 FUZZ_TARGETS="envelope csv"
#   make fuzz-build             build only (build/fuzz/bin/fuzz_<name>)
# Everything is compiled with clang into build/fuzz/ (-fsanitize=fuzzer,
# address,undefined), apart from the gcc builds. A crash, sanitizer report,
# timeout or failed FUZZ_CHECK fails the run; the input stays under
# build/fuzz/crashes/.
FUZZ_CC      ?= clang-14
FUZZ_SECONDS ?= 10
FUZZ_BUILD   := build/fuzz
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS  := -std=c17 -g -O1 -fno-omit-frame-pointer $(FUZZ_SAN) -fsanitize=fuzzer-no-link \
                -Wall -Wextra -Werror -Wshadow -Wvla -D_GNU_SOURCE -Icommon -Ipkcs11 -Ikmsd \
                -Idevice -Icli -I$(FUZZ_BUILD)/gen $(PKG_CFLAGS) -MMD -MP \
                -DFUZZ_VECTORS='"$(CURDIR)/tests/vectors/protocol-v1.json"' \
                -DFUZZ_VECTORS_V2='"$(CURDIR)/tests/vectors/protocol-v2.json"' \
                -DFUZZ_VECTORS_SEAL='"$(CURDIR)/tests/vectors/seal-v1.json"' \
                -DFUZZ_VECTORS_FW='"$(CURDIR)/tests/vectors/firmware-v1.json"'
FUZZ_ALL     := $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_TARGETS ?= $(FUZZ_ALL)
# Everything a target may call: kmsd, its libraries, the device library and
# the kmsctl parsers. An archive, so each target pulls only what it uses.
FUZZ_LIB_SRC := $(COMMON_SRC) $(P11_SRC) $(KMSD_SRC) device/qkms_proto.c device/qkms_device.c \
                device/qkms_proto2.c device/qkms_device2.c device/qkms_seal.c device/qkms_fw.c \
                cli/attr_arg.c cli/csv.c cli/import_file.c cli/output.c cli/progress.c
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=$(FUZZ_BUILD)/%.o) $(FUZZ_BUILD)/gen/schema_sql.o
FUZZ_LIB     := $(FUZZ_BUILD)/libqkms-fuzz.a
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/bin/fuzz_%)

.PHONY: fuzz fuzz-build fuzz-corpus
.SECONDARY: $(FUZZ_ALL:%=$(FUZZ_BUILD)/fuzz/fuzz_%.o)
fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	sh fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Regenerate the seed corpora from tests/vectors (committed; see fuzz/README.md).
fuzz-corpus:
	$(PYTHON) fuzz/make_corpus.py

$(FUZZ_BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "FUZZ-CC $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/gen/schema_sql.c: $(SCHEMA) scripts/embed-sql.sh
	@mkdir -p $(dir $@)
	sh scripts/embed-sql.sh $@ $(SCHEMA)

$(FUZZ_BUILD)/gen/schema_sql.o: $(FUZZ_BUILD)/gen/schema_sql.c
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_LIB): $(FUZZ_LIB_OBJ) $(SRC_LIST)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(FUZZ_BUILD)/bin/fuzz_%: $(FUZZ_BUILD)/fuzz/fuzz_%.o $(FUZZ_LIB)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $^ $(KMSD_LIBS) $(CLI_LIBS) -o $@
