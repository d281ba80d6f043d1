# The library is installed on its own, so it carries the common/ modules it
# uses (kmsd links them from libkmsd.a first; the copies do not clash).
DEVICE_LIB_SRC := device/qkms_proto.c device/qkms_device.c device/qkd_http.c \
                  common/hexutil.c common/kcv.c
DEVICE_PROG_SRC := device/qkms-device.c
