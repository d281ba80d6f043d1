# The library is installed on its own, so it carries the common/ modules it
# uses (kmsd links them from libkmsd.a first; the copies do not clash).
DEVICE_LIB_SRC := device/qkms_proto.c device/qkms_proto2.c device/qkms_device.c device/qkms_device2.c device/qkd_http.c \
                  device/qkms_seal.c device/qkd_seal.c device/qkms_fw.c \
                  common/hexutil.c common/kcv.c common/qbuf.c
DEVICE_PROG_SRC := device/qkms-device.c

# Unit tests link a build of the library that accepts fixed request nonces
# (-DQKMS_TESTING: the test vectors need them); kmsd, qkms-device and the
# installed library never do. test_device_release checks the real one.
DEVICE_TESTING_OBJ := $(DEVICE_LIB_SRC:%.c=$(BUILD)/testing/%.o)
LIBDEVICE_TESTING := $(BUILD)/libqkms-device-testing.a

$(BUILD)/testing/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "CC $< (QKMS_TESTING)"
	@$(CC) $(CFLAGS) -DQKMS_TESTING -c $< -o $@

$(LIBDEVICE_TESTING): $(DEVICE_TESTING_OBJ)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(BUILD)/tests/test_device_release: tests/unit/test_device_release.c $(BUILD)/libqkms-device.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $< $(BUILD)/libqkms-device.a $(CLI_LIBS) -lcmocka -o $@
