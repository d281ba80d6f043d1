#!/usr/bin/python3
"""Signatures per second. MODE fw: firmware releases (docs/api.md,
"Signing releases"): each a manifest signed in the token (ECDSA P-256), a
counter committed, a content key wrapped for one target, a small image's
package streamed back. MODE data: POST /v1/crypto/sign ("Signatures") of a
SHA-256 with a data-signing key: a signature in the token and an audit
row committed. Bounded in time; one line: name=fw_sign|data_sign conc=C
signatures_per_s=N p50_ms=X p99_ms=Y errors=E.

    fw_sign_bench.py URL ADMIN_TOKEN_FILE SECONDS CONCURRENCY [MODE]
"""
import os
import sys
import threading
import time
import uuid

import requests


def setup_data(url, admin):
    """A data-signing key and a crypto token acting for @platform: the
    request to repeat."""
    name = "bench-sign-" + uuid.uuid4().hex[:6]
    requests.post(url + "/v1/admin/signing-keys", json={"name": name}, headers=admin,
                  timeout=30).raise_for_status()
    r = requests.post(url + "/v1/admin/tokens", json={
        "name": "bench-crypto-" + uuid.uuid4().hex[:6], "role": "crypto", "acts_for": "@platform"},
        headers=admin, timeout=30)
    r.raise_for_status()
    hdr = {"Authorization": "Bearer " + r.json()["token"]}
    body = {"key": name, "digest": os.urandom(32).hex()}
    return lambda s: s.post(url + "/v1/crypto/sign", headers=hdr, json=body, timeout=30), 200


def setup_fw(url, admin):
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
    params = {"product": product, "version": "bench", "device": device}
    return lambda s: s.post(url + "/v1/admin/firmware/packages", headers=rel, data=image,
                            timeout=30, params=params), 201


def main(url, token_file, secs, conc, mode="fw"):
    admin = {"Authorization": "Bearer " + open(token_file).read().strip()}
    call, ok = (setup_data if mode == "data" else setup_fw)(url, admin)
    lat, errors, stop = [], [], time.monotonic() + secs
    lock = threading.Lock()

    def worker():
        s = requests.Session()
        while time.monotonic() < stop:
            t0 = time.monotonic()
            r = call(s)
            dt = time.monotonic() - t0
            with lock:
                (lat if r.status_code == ok else errors).append(dt)

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - t0
    lat.sort()
    pct = (lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: 0)
    print(f"name={'data_sign' if mode == 'data' else 'fw_sign'} conc={conc} "
          f"signatures_per_s={len(lat) / elapsed:.0f} p50_ms={pct(0.5):.1f} "
          f"p99_ms={pct(0.99):.1f} errors={len(errors)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]),
         sys.argv[5] if len(sys.argv) > 5 else "fw")
