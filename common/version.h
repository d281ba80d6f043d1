/* version — the one product version string, shared by kmsd and kmsctl. */
#ifndef QKMS_VERSION_H
#define QKMS_VERSION_H
#define QKMS_VERSION "0.1.0"
#endif
