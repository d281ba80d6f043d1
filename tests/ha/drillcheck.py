"""drillcheck — what the failover drills set up, measure and check, shared by
the drills on host processes (tests/ha/test_drills.py, `make ha-test`) and
on containers (tests/compose_ha/test_compose_ha.py, `make compose-ha-test`),
so that both count and judge the same way:

  - the drill's devices: NPAIRS vehicle/encryptor pairs in a group of their
    own whose policy ends a session after IDLE_S idle seconds (the reaper
    then destroys drill sessions while instances die around it), and their
    fill documents in the layout haload reads (FILLDIR/veh-<i>.json, ...);
  - haload's event log (one line per request outcome);
  - per drill window: failed requests and the recovery time;
  - every key any client received against the database: a key is lost when
    a client received it and the database has it neither as a session's key
    nor as a tombstone's; a session has a duplicate when its clients received
    more than one key ID (or one key ID with two check values);
  - the table written to drills.txt.

Nothing here talks to a server: the callers run the admin requests and the
SQL (over loopback, or inside the containers) and hand over the results.
"""
import json
import os
import subprocess

NPAIRS = 8
CONC = 8
# Longer than any drill's recovery (a lost primary takes Patroni's ttl, 20 s):
# a session is not reaped between its parties.
IDLE_S = 60
GROUP = "drill"

# The key IDs the database knows: live sessions' and destroyed ones'.
STORED_KEYS_SQL = ("SELECT key_id FROM sessions UNION ALL "
                   "SELECT key_id FROM session_tombstones")
# Drill sessions idle for longer than their policy allows (0 once the
# reaper has caught up), and those it destroyed.
OVERDUE_SQL = ("SELECT count(*) FROM sessions WHERE initiator_id LIKE 'HA-%' AND "
               "last_used_at + make_interval(secs => idle_timeout_s) "
               "< now() - interval '3 seconds'")
REAPED_SQL = ("SELECT count(*) FROM session_tombstones "
              "WHERE initiator LIKE 'HA-%' AND reason = 'idle_timeout'")


def drill_policy(idle_s=IDLE_S):
    """The body of POST /v1/admin/policies for the drill's group."""
    return {"name": GROUP, "type_a": "vehicle", "type_b": "encryptor",
            "group_a": GROUP, "group_b": GROUP, "idle_timeout_s": idle_s}


def pair_devices(npairs=NPAIRS):
    """[(kind, i, device_id, type)]: kind is haload's file prefix."""
    out = []
    for i in range(npairs):
        for kind, typ in (("veh", "vehicle"), ("enc", "encryptor")):
            out.append((kind, i, f"HA-{kind.upper()}-{i}", typ))
    return out


def device_body(device_id, typ):
    """The body of POST /v1/admin/devices for a drill device."""
    return {"device_id": device_id, "type": typ, "group": GROUP}


def write_secret(path, data):
    """A file only its owner reads (fill documents hold device keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def write_fill(fills, kind, i, doc):
    """A plaintext fill document where haload looks for it."""
    os.makedirs(fills, exist_ok=True)
    write_secret(os.path.join(fills, f"{kind}-{i}.json"), json.dumps(doc))


def read_events(path):
    """haload's lines as (seconds, session, party, what, rest)."""
    ev = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) >= 4:
                ev.append((int(p[0]) / 1000.0, p[1], p[2], p[3], p[4:]))
    return ev


def window_figures(events, t0, t1):
    """Failed requests in [t0, t1) and the recovery time: from the first
    failure to the first success after the last failure."""
    fails = [e[0] for e in events if t0 <= e[0] < t1 and e[3] == "err"]
    if not fails:
        return 0.0, 0
    last = max(fails)
    after = [e[0] for e in events if e[0] > last and e[3] == "ok"]
    end = min(after) if after else t1
    return end - min(fails), len(fails)


def consistency(events, stored):
    """{session: (first answer time, lost keys, duplicate)} from haload's
    events and the key IDs the database holds (STORED_KEYS_SQL)."""
    keys, first = {}, {}
    for t, sid, _party, what, rest in events:
        if what == "ok":
            keys.setdefault(sid, set()).add((rest[0], rest[1]))
            first.setdefault(sid, t)
    stored = set(stored)
    out = {}
    for sid, s in keys.items():
        ids = {k for k, _ in s}
        out[sid] = (first[sid], len(ids - stored), len(s) > 1)
    return out


def drill_rows(events, sessions, marks):
    """[(drill, recovery s, failed requests, lost keys, duplicate keys)]: one
    row per window between marks [(name, start time)], "before" first. A
    session counts in the window of its first answer."""
    rows = []
    bounds = [("before", 0)] + list(marks)
    for i, (name, t0) in enumerate(bounds):
        t1 = bounds[i + 1][1] if i + 1 < len(bounds) else float("inf")
        rec, failed = window_figures(events, t0, t1)
        lost = sum(v[1] for v in sessions.values() if t0 <= v[0] < t1)
        dup = sum(1 for v in sessions.values() if t0 <= v[0] < t1 and v[2])
        rows.append((name, rec, failed, lost, dup))
    return rows


def table(rows, summary):
    """The Markdown table of rows, then the summary line."""
    lines = ["| drill | recovery s | failed requests | lost keys | duplicate keys |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {rec:.1f} | {failed} | {lost} | {dup} |"
              for n, rec, failed, lost, dup in rows]
    lines.append("\n" + summary)
    return "\n".join(lines)


def write_table(out_dir, text):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "drills.txt"), "w") as f:
        f.write(text + "\n")


def stop_load(load, events_path):
    """Ask haload to stop (its stop file), wait for it and return its
    summary; it must have exited 0."""
    open(events_path + ".stop", "w").close()
    try:
        out, _ = load.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        load.kill()
        out, _ = load.communicate()
    print(out)
    assert load.returncode == 0, out
    return out


def outcome(events_path, stored, marks, marks_dir):
    """(events, sessions, rows) of a run: haload's events, each session's
    keys checked against the stored key IDs, and the drill rows; the marks
    are written to marks_dir/marks.txt beside."""
    events = read_events(events_path)
    sessions = consistency(events, stored)
    rows = drill_rows(events, sessions, marks)
    with open(os.path.join(marks_dir, "marks.txt"), "w") as f:
        f.writelines(f"{t:.3f} {n}\n" for n, t in marks)
    return events, sessions, rows
