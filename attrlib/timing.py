"""Wall time per stage of `make`, folded from the log its recipes append to.

Every timed recipe appends two lines to `runs/<profile>/.timings.log` from plain shell (the
venv recipe runs before the venv's python exists):

    start <stage> <epoch seconds> <invocation> <target>
    end <stage> <epoch seconds> <invocation> <target>

`<invocation>` names one `make` process, `<target>` the file the recipe makes. A start
without its end (a recipe that failed or was interrupted) counts nothing.

`fold` turns the log into `timings.csv` (`stage,seconds`, plus a `total` row):

- Grid stages run side by side, so a stage's time is its wall-clock span within one
  invocation (first start to last end of its recipes), never the sum of its runs.
- A resumed `make all` still gives the time the results cost: spans are taken per
  invocation and added up, so the hours between an interrupted run and its resumption are
  not counted, while the work done before the interruption is.
- A target made again (a re-run evaluation after more seeds) replaces its earlier record,
  so the same work is never counted twice.
- `total` is, the same way, the sum over invocations of each one's span over all its
  recipes: for a single fresh `make all` it is that run's wall time.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from attrlib.io import write_text_atomic

# Pipeline order of the rows; a stage not listed follows them in order of its first start.
STAGE_ORDER = (
    "venv",
    "data",
    "teacher",
    "targets",
    "distill",
    "prune_oneshot",
    "prune_iterative",
    "quantize",
    "evaluate",
    "paper",
)


@dataclass(frozen=True)
class Record:
    """One finished recipe: its stage, start and end (epoch seconds), invocation, target."""

    stage: str
    start: float
    end: float
    invocation: str
    target: str


def _seconds(text: str) -> float:
    # a `date` without %N support prints a literal "N" after the dot: whole seconds then
    return float(text.removesuffix("N").removesuffix("."))


def parse_log(lines: Iterable[str]) -> list[Record]:
    """Finished recipes of a timings log; malformed lines and unmatched starts are skipped."""
    starts: dict[tuple[str, str], tuple[str, float]] = {}
    records = []
    for line in lines:
        fields = line.split(maxsplit=4)
        if len(fields) != 5 or fields[0] not in ("start", "end"):
            continue
        event, stage, stamp, invocation, target = fields
        try:
            when = _seconds(stamp)
        except ValueError:
            continue
        key = (invocation, target)
        if event == "start":
            starts[key] = (stage, when)
        elif key in starts:
            stage, start = starts.pop(key)
            records.append(Record(stage, start, when, invocation, target))
    return records


def latest_per_target(records: Iterable[Record]) -> list[Record]:
    """Each target's most recent record (by end), in the order of their starts."""
    latest: dict[str, Record] = {}
    for r in records:
        if r.target not in latest or r.end >= latest[r.target].end:
            latest[r.target] = r
    return sorted(latest.values(), key=lambda r: r.start)


def span_seconds(records: Iterable[Record]) -> float:
    """Sum over invocations of (last end - first start) of their records."""
    bounds: dict[str, tuple[float, float]] = {}
    for r in records:
        lo, hi = bounds.get(r.invocation, (r.start, r.end))
        bounds[r.invocation] = (min(lo, r.start), max(hi, r.end))
    return sum(hi - lo for lo, hi in bounds.values())


def stage_seconds(records: Iterable[Record]) -> dict[str, float]:
    """Seconds per stage (in pipeline order) and `total`, as `fold` writes them."""
    kept = latest_per_target(records)
    stages = list(dict.fromkeys(r.stage for r in kept))  # first-start order
    stages.sort(key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER))
    out = {s: span_seconds(r for r in kept if r.stage == s) for s in stages}
    out["total"] = span_seconds(kept)
    return out


def timings_csv(seconds: dict[str, float]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["stage", "seconds"])
    writer.writerows([stage, f"{value:.1f}"] for stage, value in seconds.items())
    return buffer.getvalue()


def fold(log: str | Path, out: str | Path) -> dict[str, float]:
    """Write `out` (timings.csv) from the timings log `log`; returns its rows."""
    log = Path(log)
    if not log.is_file():
        raise FileNotFoundError(f"{log} not found: no timed recipe has run for this profile")
    seconds = stage_seconds(parse_log(log.read_text().splitlines()))
    write_text_atomic(out, timings_csv(seconds))
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m attrlib.timing", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fold_cmd = sub.add_parser("fold", help="write timings.csv from a timings log")
    fold_cmd.add_argument("log", type=Path)
    fold_cmd.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    seconds = fold(args.log, args.out)
    print(f"{args.out}: " + ", ".join(f"{s} {v:.0f} s" for s, v in seconds.items()))


if __name__ == "__main__":
    main()
