"""ha_bench — what the synchronous standby costs a key delivery
(BENCH_PARTS=ha make bench; docs/ha.md).

Starts the HA topology of tests/ha/hastack.py (etcd, three Patroni-managed
PostgreSQL nodes, one kmsd, release build) and runs bench/session_bench's
deliveries against kmsd at 16 and 64 clients, turn about in one stack:
  sync    as shipped: synchronous_mode (strict), every commit confirmed by
          one standby
  async   synchronous_mode off (Patroni's dynamic configuration): commits
          return once on the primary's disk; standbys still stream
BENCH_HA_ROUNDS rounds (default 2). Prints one line per run:
  name=ha_deliveries mode=sync|async round=R conc=C deliveries_per_s=... p50_ms=... p99_ms=...
and one per mode with the mean ratio async/sync.

usage: ha_bench.py SESSION_BENCH SECONDS
"""
import json
import os
import subprocess
import sys
import time

import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "ha"))
from hastack import HAStack, wait_for  # noqa: E402

NPAIRS = 64


def fields(line):
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def set_sync(st, on):
    node = st.primary()
    r = requests.patch(f"http://127.0.0.1:{st.rest_port[node]}/config", timeout=5,
                       json={"synchronous_mode": on, "synchronous_mode_strict": on})
    r.raise_for_status()

    def applied():
        sync_names = st.psql("SHOW synchronous_standby_names").strip()
        return bool(sync_names) == on
    if not wait_for(applied, 30):
        raise RuntimeError(f"synchronous_mode={on} not applied")
    time.sleep(1)


def main():
    bench, secs = sys.argv[1], sys.argv[2]
    rounds = int(os.environ.get("BENCH_HA_ROUNDS", "2"))
    st = HAStack(kmsd_count=1)
    try:
        st.up()
        k = st.kmsd_names[0]
        port = st.kmsd_port[k]
        r = st.admin("POST", "/v1/admin/policies",
                     json={"name": "bench", "type_a": "vehicle", "type_b": "encryptor"})
        r.raise_for_status()
        fills = os.path.join(st.state, "fill")
        os.makedirs(fills)
        for i in range(NPAIRS):
            for kind, typ in (("veh", "vehicle"), ("enc", "encryptor")):
                did = f"HB-{kind}-{i}"
                st.admin("POST", "/v1/admin/devices",
                         json={"device_id": did, "type": typ}).raise_for_status()
                r = st.admin("POST", f"/v1/admin/devices/{did}/fill", json={"plaintext": True})
                r.raise_for_status()
                with open(os.path.join(fills, f"{kind}-{i}.json"), "w") as f:
                    json.dump(r.json()["plaintext"], f)
        results = {}
        for rnd in range(1, rounds + 1):
            for mode in ("sync", "async"):
                set_sync(st, mode == "sync")
                for conc in (16, 64):
                    out = subprocess.run([bench, str(port), str(conc), secs, fills, str(NPAIRS),
                                          "deliveries"], capture_output=True, text=True, check=True)
                    line = out.stdout.strip().splitlines()[-1]
                    f = fields(line)
                    print(f"name=ha_deliveries mode={mode} round={rnd} conc={conc} "
                          f"deliveries_per_s={f['deliveries_per_s']} p50_ms={f['p50_ms']} "
                          f"p99_ms={f['p99_ms']} errors={f['errors']} "
                          f"key_mismatches={f['key_mismatches']}", flush=True)
                    results.setdefault((mode, conc), []).append(float(f["deliveries_per_s"]))
        set_sync(st, True)
        for conc in (16, 64):
            s = sum(results[("sync", conc)]) / rounds
            a = sum(results[("async", conc)]) / rounds
            print(f"name=ha_sync_cost conc={conc} sync_deliveries_per_s={s:.0f} "
                  f"async_deliveries_per_s={a:.0f} sync_over_async={s / a:.2f}")
    finally:
        st.destroy()


if __name__ == "__main__":
    main()
