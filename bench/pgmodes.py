#!/usr/bin/env python3
"""pgbench scripts for issue 14's "group commit or libpq pipeline mode":
the same deliveries (n sessions, each created by its initiator and then
found by its responder, so 2n calls of qkms_session_key and one commit) sent
as one call of qkms_session_key_batch (what kmsd does) or as 2n pipelined
statements in one transaction (what pipeline mode would do).

usage: pgmodes.py batch|pipeline n  > script.sql
The bench pairs SV-i / SE-i (bench_sessions_setup) must exist."""
import sys

mode, n = sys.argv[1], int(sys.argv[2])
out = []
for k in range(n):
    out.append(f"\\set p{k} random(0, 63)")
    out.append(f"\\set r{k} random(1, 9000000000000000000)")

TS = "extract(epoch FROM now())::bigint"
WRAPPED = "'\\x0100000001000102030405060708090a0b000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f'"


def calls():
    """Per delivery: (device expr, nonce expr, hash expr, session id expr,
    peer expr, is_initiator)."""
    for k in range(n):
        h = f"sha256(('pm-' || :r{k})::bytea)"
        sid = f"'pm-' || :r{k}"
        yield (f"(SELECT id FROM devices WHERE device_id = 'SV-' || :p{k})",
               f"decode(md5('i' || :r{k}), 'hex')", h, sid, f"'SE-' || :p{k}", True)
        yield (f"(SELECT id FROM devices WHERE device_id = 'SE-' || :p{k})",
               f"decode(md5('r' || :r{k}), 'hex')", h, sid, f"'SV-' || :p{k}", False)


if mode == "pipeline":
    out += ["\\startpipeline", "BEGIN;"]
    for dev, nonce, h, sid, peer, ini in calls():
        cand = (f"gen_random_uuid(), {WRAPPED}::bytea, 1, 'os', 128" if ini
                else "NULL, NULL, NULL, NULL, NULL")
        out.append(f"SELECT * FROM qkms_session_key({dev}, 0, {nonce}, {TS}, 300, {h}, NULL, "
                   f"{sid}, {peer}, false, {cand});")
    out += ["COMMIT;", "\\endpipeline"]
elif mode == "batch":
    cols = list(zip(*calls()))
    def arr(items, typ):
        return "ARRAY[" + ", ".join(items) + f"]::{typ}"
    hexed = lambda xs: [f"encode({x}, 'hex')" for x in xs]
    ini = cols[5]
    out.append(
        "SELECT * FROM qkms_session_key_batch("
        + arr(cols[0], "bigint[]") + ", "
        + arr(["0"] * len(ini), "integer[]") + ", "
        + arr(hexed(cols[1]), "text[]") + ", "
        + arr([TS] * len(ini), "bigint[]") + ", "
        + arr(["300"] * len(ini), "integer[]") + ", "
        + arr(hexed(cols[2]), "text[]") + ", "
        + arr(["NULL"] * len(ini), "text[]") + ", "
        + arr(cols[3], "text[]") + ", "
        + arr(cols[4], "text[]") + ", "
        + arr(["false"] * len(ini), "boolean[]") + ", "
        + arr(["gen_random_uuid()" if i else "NULL" for i in ini], "uuid[]") + ", "
        + arr([f"encode({WRAPPED}::bytea, 'hex')" if i else "NULL" for i in ini], "text[]") + ", "
        + arr(["1" if i else "NULL" for i in ini], "integer[]") + ", "
        + arr(["'os'" if i else "NULL" for i in ini], "text[]") + ", "
        + arr(["128" if i else "NULL" for i in ini], "integer[]") + ");")
else:
    sys.exit("usage: pgmodes.py batch|pipeline n")
print("\n".join(out))
