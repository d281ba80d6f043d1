#!/usr/bin/env python3
"""bench/plot.py — the picture of `make bench`'s session runs: deliveries/s
and p99 latency against the number of concurrent clients, from the lines
bench/run.sh wrote to build/bench/sessions.txt (session_bench's
`name=deliveries conc=N ... deliveries_per_s=X p99_ms=Y` and the same for
`name=sessions`), with the one-row durable commit floor (`name=pg_floor`)
for scale. Writes an SVG (matplotlib, Debian python3-matplotlib).

    python3 bench/plot.py build/bench/sessions.txt build/bench/sessions.svg [TITLE]

Exit status: 0 written, 1 the input holds no session runs, 2 usage, 3 no
matplotlib (the runs' lines are unaffected: the plot is an extra).
"""
import sys


def parse(lines):
    """{run name: [(conc, deliveries_per_s, p99_ms), ...]} and {conc: floor tps}."""
    runs, floor = {}, {}
    for line in lines:
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        name = fields.get("name")
        try:
            if name in ("deliveries", "sessions"):
                rate = float(fields["deliveries_per_s" if name == "deliveries" else "sessions_per_s"])
                runs.setdefault(name, []).append(
                    (int(fields["conc"]), rate, float(fields["p99_ms"])))
            elif name == "pg_floor":
                floor[int(fields["conc"])] = float(fields["tps"])
        except (KeyError, ValueError):
            continue  # a line of another shape: not a point
    for pts in runs.values():
        pts.sort()
    return runs, floor


def plot(runs, floor, out, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # SVG text as text, no date in the metadata: the same runs give the same file.
    matplotlib.rcParams["svg.fonttype"] = "none"
    matplotlib.rcParams["svg.hashsalt"] = "qkms"
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    labels = {"deliveries": "key deliveries/s (2 per session)",
              "sessions": "full sessions/s (2 keys + end)"}
    for name, marker, dy in (("deliveries", "o", 6), ("sessions", "s", -13)):
        pts = runs.get(name)
        if not pts:
            continue
        conc = [p[0] for p in pts]
        left.plot(conc, [p[1] for p in pts], marker=marker, label=labels[name])
        right.plot(conc, [p[2] for p in pts], marker=marker, label=name)
        for c, v in zip(conc, [p[1] for p in pts]):
            left.annotate(f"{v:,.0f}", (c, v), textcoords="offset points", xytext=(0, dy),
                          ha="center", fontsize=8)
        for c, v in zip(conc, [p[2] for p in pts]):
            # deliveries above their points, sessions below: they lie close
            right.annotate(f"{v:.1f}", (c, v), textcoords="offset points", xytext=(0, dy),
                           ha="center", fontsize=8)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.grid(True, which="both", alpha=0.3)
        ticks = sorted({p[0] for pts in runs.values() for p in pts})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
    left.set_ylabel("per second")
    top = max(p[1] for pts in runs.values() for p in pts)
    left.set_ylim(0, top * 1.15)  # room for the labels above the points
    left.set_title("throughput")
    right.set_ylabel("p99 latency (ms)")
    right.set_ylim(0, max(p[2] for pts in runs.values() for p in pts) * 1.15)
    right.set_title("p99 latency of a request")
    left.legend(fontsize=8, loc="lower right")
    right.legend(fontsize=8, loc="upper left")
    if floor:
        note = ", ".join(f"{tps:,.0f}/s at {c}" for c, tps in sorted(floor.items()))
        title += f"\none-row durable commit floor, same run: {note} clients"
    fig.suptitle(title, fontsize=9)
    fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)


def main(argv):
    if len(argv) not in (3, 4):
        print("usage: plot.py SESSIONS.txt OUT.svg [TITLE]", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        runs, floor = parse(f)
    if not runs:
        print(f"plot: no session runs in {argv[1]}", file=sys.stderr)
        return 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot: no matplotlib (Debian: python3-matplotlib); no picture made",
              file=sys.stderr)
        return 3
    plot(runs, floor, argv[2], argv[3] if len(argv) == 4 else "kmsd: session keys")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
