#!/usr/bin/env python3
"""Tables for the accuracy benchmark.

    report.py WORK_DIR SPLIT...

Reads WORK_DIR/res/TOOL.SPLIT (`path label source held score`, one judged message a line) for
levee, sa and rspamd (the sampled messages), and WORK_DIR/levee/SPLIT.levee (Levee on the whole
split). Prints markdown: a pooled table (caught %, FP % (n), spam caught at <= 0.1% FP with the
best threshold on the tool's own score) and a per-source table.
"""
import os
import sys

TOOLS = [("levee", "Levee"), ("sa", "SpamAssassin"), ("rspamd", "rspamd")]


def load(path, only=None):
    rows = []
    if not os.path.exists(path):
        return None
    with open(path, errors="replace") as f:
        for line in f:
            c = line.rstrip("\n").split("\t")
            if len(c) < 5:
                continue
            if only is not None and c[0] not in only:
                continue
            try:
                rows.append((c[0], c[1], c[2], int(c[3]), float(c[4])))
            except ValueError:
                continue
    return rows


def caught_at_fp(rows, fp=0.001):
    spam = [r[4] for r in rows if r[1] == "spam"]
    ham = sorted((r[4] for r in rows if r[1] == "ham"), reverse=True)
    if not spam or not ham:
        return "n/a"
    allowed = int(fp * len(ham))
    bar = ham[min(allowed, len(ham) - 1)]
    return f"{100.0 * sum(1 for s in spam if s > bar) / len(spam):.2f}"


def counts(rows):
    s = [r for r in rows if r[1] == "spam"]
    h = [r for r in rows if r[1] == "ham"]
    cs, fh = sum(r[3] for r in s), sum(r[3] for r in h)
    caught = f"{100.0 * cs / len(s):.2f}" if s else "-"
    fp = f"{100.0 * fh / len(h):.2f} ({fh})" if h else "-"
    return len(s), caught, len(h), fp


def main():
    w, names = sys.argv[1], sys.argv[2:]
    results = {}
    for name in names:
        sample = load(os.path.join(w, "res", f"levee.{name}")) or []
        paths = {r[0] for r in sample}
        full = load(os.path.join(w, "levee", f"{name}.levee"))
        results[name] = [("Levee (whole split)", full)]
        for tool, label in TOOLS:
            rows = load(os.path.join(w, "res", f"{tool}.{name}"))
            if rows is not None:
                missing = len(paths) - len({r[0] for r in rows} & paths) if tool != "levee" else 0
                results[name].append((label + (f" [{missing} unanswered]" if missing else ""), rows))
    print("| split | tool | spam | caught % | ham | FP % (n) | caught at <=0.1% FP |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in names:
        for label, rows in results[name]:
            if rows is None:
                continue
            s, c, h, fp = counts(rows)
            print(f"| {name} | {label} | {s} | {c} | {h} | {fp} | {caught_at_fp(rows)} |")
    print()
    print("Per source (sampled messages, same for every tool):")
    print()
    print("| split | source | tool | spam | caught % | ham | FP % (n) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name in names:
        tools = [(l, r) for l, r in results[name] if r is not None and not l.startswith("Levee (whole")]
        sources = sorted({r[2] for _, rows in tools for r in rows})
        for src in sources:
            for label, rows in tools:
                s, c, h, fp = counts([r for r in rows if r[2] == src])
                print(f"| {name} | {src} | {label} | {s} | {c} | {h} | {fp} |")


if __name__ == "__main__":
    main()
