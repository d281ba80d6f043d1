#!/usr/bin/python3
"""Firmware releases signed per second (docs/api.md, "Signing releases"):
each a manifest signed in the token (ECDSA P-256), a counter committed, a
content key wrapped for one target, a small image's package streamed back.
Bounded in time; one line: name=fw_sign conc=C signatures_per_s=N p50_ms=X
p99_ms=Y image_bytes=B.

    fw_sign_bench.py URL ADMIN_TOKEN_FILE SECONDS CONCURRENCY
"""
import os
import sys
import threading
import time
import uuid

import requests


def main(url, token_file, secs, conc):
    admin = {"Authorization": "Bearer " + open(token_file).read().strip()}
    product = "bench-fw-" + uuid.uuid4().hex[:6]
    device = "BENCH-FW-" + uuid.uuid4().hex[:6]
    for path, body in (("/v1/admin/firmware/keys", {"product": product}),
                       ("/v1/admin/devices", {"device_id": device, "type": "meter", "keys": 1})):
        r = requests.post(url + path, json=body, headers=admin, timeout=30)
        r.raise_for_status()
    r = requests.post(url + "/v1/admin/tokens", json={"name": "bench-rel-" + uuid.uuid4().hex[:6],
                                                      "role": "release"},
                      headers=admin, timeout=30)
    r.raise_for_status()
    rel = {"Authorization": "Bearer " + r.json()["token"],
           "Content-Type": "application/octet-stream"}
    image = os.urandom(4096)
    lat, errors, stop = [], [], time.monotonic() + secs
    lock = threading.Lock()

    def worker():
        s = requests.Session()
        while time.monotonic() < stop:
            t0 = time.monotonic()
            r = s.post(url + "/v1/admin/firmware/packages", headers=rel, data=image, timeout=30,
                       params={"product": product, "version": "bench", "device": device})
            dt = time.monotonic() - t0
            with lock:
                (lat if r.status_code == 201 else errors).append(dt)

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - t0
    lat.sort()
    pct = (lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: 0)
    print(f"name=fw_sign conc={conc} signatures_per_s={len(lat) / elapsed:.0f} "
          f"p50_ms={pct(0.5):.1f} p99_ms={pct(0.99):.1f} errors={len(errors)} "
          f"image_bytes={len(image)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
