#!/usr/bin/env python3
"""Split manifests for the accuracy benchmark, with the same membership as Levee's `splits` example.

    splits.py CORPUS_DIR OUT_DIR [SAMPLE] [SEED]

For every split (dev, loso-SOURCE, time) writes OUT_DIR/NAME.train (messages learned),
OUT_DIR/NAME.judge (every message judged) and OUT_DIR/NAME.sample (a stratified sample of the
judged messages: SAMPLE in all, spread over source x label in proportion, at least a few of each
stratum; SAMPLE=0 means all). Lines are `path<TAB>label<TAB>source`, paths absolute.

The time split follows splits.rs: Date header parsed (missing or unparsable = 0), each source's
train.tsv rows sorted by date (stable, manifest order for ties), the floor(n/2) oldest learned.
Python's Date parser is not Levee's (mail_parser gives 0 to a date without a time zone, and
reads a few zones differently), so on this corpus 34 of 3,207 messages land on the other side
of the line; run.sh therefore replaces time.train with the list Levee's `splits` example learned.
"""
import email.utils
import hashlib
import os
import sys


def read_manifest(corpus, name):
    rows = []
    with open(os.path.join(corpus, name), encoding="utf-8") as f:
        next(f)
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 3:
                continue
            rows.append((os.path.join(corpus, cols[0]), cols[1], cols[2]))
    return rows


def mail_date(path):
    """Seconds since the epoch of the first Date header, 0 when missing or unparsable."""
    with open(path, "rb") as f:
        head = f.read(256 * 1024)
    end = len(head)
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = head.find(sep)
        if i >= 0:
            end = min(end, i)
    lines = head[:end].decode("latin-1").replace("\r\n", "\n").split("\n")
    value = None
    for i, line in enumerate(lines):
        if line[:5].lower() == "date:":
            value = line[5:]
            for cont in lines[i + 1:]:
                if cont[:1] in (" ", "\t"):
                    value += " " + cont.strip()
                else:
                    break
            break
    if value is None:
        return 0
    try:
        d = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0
    if d is None:
        return 0
    if d.tzinfo is None:
        import datetime
        d = d.replace(tzinfo=datetime.timezone.utc)
    try:
        return int(d.timestamp())
    except (OverflowError, ValueError, OSError):
        return 0


def splits(train, dev):
    sources = sorted({r[2] for r in train})
    out = [("dev", train, dev)]
    for s in sources:
        out.append((f"loso-{s}", [r for r in train if r[2] != s],
                    [r for r in train + dev if r[2] == s]))
    learn = []
    for s in sources:
        rows = [r for r in train if r[2] == s]
        rows = sorted(rows, key=lambda r: mail_date(r[0]))
        learn += rows[: len(rows) // 2]
    out.append(("time", learn, dev))
    return out


def sample(rows, n, seed, name):
    """Deterministic stratified sample: n rows over (source, label) in proportion, >= 10 each."""
    if n <= 0 or n >= len(rows):
        return list(rows)
    strata = {}
    for r in rows:
        strata.setdefault((r[2], r[1]), []).append(r)
    keys = sorted(strata)
    want = {k: min(len(strata[k]), max(10, round(n * len(strata[k]) / len(rows)))) for k in keys}
    # Trim or pad the biggest strata so the total is n.
    while sum(want.values()) > n:
        k = max(keys, key=lambda k: want[k])
        want[k] -= 1
    while sum(want.values()) < n:
        k = max((k for k in keys if want[k] < len(strata[k])), key=lambda k: len(strata[k]) - want[k])
        want[k] += 1
    picked = []
    for k in keys:
        order = sorted(strata[k], key=lambda r: hashlib.sha256(f"{seed}/{name}/{os.path.basename(r[0])}".encode()).hexdigest())
        picked += order[: want[k]]
    return picked


def write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write("\t".join(r) + "\n")


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    corpus, out = os.path.abspath(sys.argv[1]), sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    seed = sys.argv[4] if len(sys.argv) > 4 else "levee"
    os.makedirs(out, exist_ok=True)
    train, dev = read_manifest(corpus, "train.tsv"), read_manifest(corpus, "dev.tsv")
    for name, learn, judge in splits(train, dev):
        write(os.path.join(out, name + ".train"), learn)
        write(os.path.join(out, name + ".judge"), judge)
        picked = sample(judge, n, seed, name)
        write(os.path.join(out, name + ".sample"), picked)
        print(f"{name}: learn {len(learn)}, judge {len(judge)}, sample {len(picked)}", file=sys.stderr)


if __name__ == "__main__":
    main()
