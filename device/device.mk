DEVICE_LIB_SRC := device/qkms_proto.c device/qkms_device.c device/qkd_http.c
DEVICE_PROG_SRC := device/qkms-device.c
