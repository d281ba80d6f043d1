/*
 * fillload — a bench pair's device from its plaintext fill document, for
 * the load generators that drive the device protocol (bench/session_bench,
 * tests/ha/haload).
 *
 * Contract: reads DIR/KIND-I.json (e.g. veh-3.json) and loads it with
 * qkd_device_load; NULL when the file cannot be read or does not load
 * (the reason on stderr). The file's bytes are wiped from memory once
 * loaded; the device is the caller's (qkd_device_free).
 */
#ifndef QKMS_BENCH_FILLLOAD_H
#define QKMS_BENCH_FILLLOAD_H

#include "qkms_device.h"

qkd_device *bench_fill_load(const char *dir, const char *kind, int i);

#endif
