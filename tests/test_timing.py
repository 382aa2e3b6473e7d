import pytest

from attrlib.timing import fold, main, parse_log, stage_seconds


def _log(*events):
    """Log lines from (event, stage, seconds, invocation, target) tuples."""
    return [f"{e} {s} {t:.3f} {run} {target}" for e, s, t, run, target in events]


def test_overlapping_runs_count_their_span_not_their_sum():
    lines = _log(
        ("start", "teacher", 0, "a", "teacher/nb"),
        ("end", "teacher", 10, "a", "teacher/nb"),
        ("start", "distill", 10, "a", "distill/x2-kd-s0/nb"),
        ("start", "distill", 11, "a", "distill/x2-swa-s0/nb"),
        ("end", "distill", 30, "a", "distill/x2-kd-s0/nb"),
        ("end", "distill", 25, "a", "distill/x2-swa-s0/nb"),
    )
    seconds = stage_seconds(parse_log(lines))
    assert seconds == pytest.approx({"teacher": 10, "distill": 20, "total": 30})
    assert list(seconds) == ["teacher", "distill", "total"]


def test_resumed_invocations_add_up_without_the_pause():
    lines = _log(
        ("start", "distill", 0, "a", "distill/r1"),
        ("end", "distill", 50, "a", "distill/r1"),
        ("start", "distill", 50, "a", "distill/r2"),  # interrupted: never ended in `a`
        ("start", "distill", 1000, "b", "distill/r2"),
        ("end", "distill", 1040, "b", "distill/r2"),
        ("start", "paper", 1040, "b", "paper/nb"),
        ("end", "paper", 1045, "b", "paper/nb"),
    )
    seconds = stage_seconds(parse_log(lines))
    assert seconds == pytest.approx({"distill": 90, "paper": 5, "total": 95})


def test_a_target_made_again_replaces_its_earlier_record():
    lines = _log(
        ("start", "prune_oneshot", 0, "a", "prune/s0"),
        ("end", "prune_oneshot", 20, "a", "prune/s0"),
        ("start", "evaluate", 20, "a", "evaluate/nb"),
        ("end", "evaluate", 30, "a", "evaluate/nb"),
        ("start", "prune_oneshot", 100, "b", "prune/s1"),
        ("end", "prune_oneshot", 120, "b", "prune/s1"),
        ("start", "evaluate", 120, "b", "evaluate/nb"),
        ("end", "evaluate", 135, "b", "evaluate/nb"),
    )
    seconds = stage_seconds(parse_log(lines))
    assert seconds == pytest.approx({"prune_oneshot": 40, "evaluate": 15, "total": 55})


def test_stages_follow_the_pipeline_and_odd_lines_are_skipped():
    lines = [
        *_log(
            ("start", "paper", 5, "a", "p"),
            ("end", "paper", 6, "a", "p"),
            ("start", "custom", 0, "a", "c"),
            ("end", "custom", 1, "a", "c"),
            ("start", "venv", 2, "a", "v"),
            ("end", "venv", 4, "a", "v"),
        ),
        "garbage",
        "end data 3 a never-started",
        "start data not-a-time a d",
        "start data 1700000000.N a whole-seconds",  # a `date` without %N
        "end data 1700000002.N a whole-seconds",
    ]
    records = parse_log(lines)
    assert [r.target for r in records] == ["p", "c", "v", "whole-seconds"]
    seconds = stage_seconds(records)
    assert list(seconds) == ["venv", "data", "paper", "custom", "total"]
    assert seconds["data"] == 2


def test_fold_writes_the_csv(tmp_path, capsys):
    log = tmp_path / ".timings.log"
    log.write_text(
        "\n".join(_log(("start", "teacher", 0, "a", "t"), ("end", "teacher", 12.34, "a", "t")))
    )
    main(["fold", str(log), str(tmp_path / "timings.csv")])
    assert (tmp_path / "timings.csv").read_text() == "stage,seconds\nteacher,12.3\ntotal,12.3\n"
    assert "total 12 s" in capsys.readouterr().out
    assert not list(tmp_path.glob(".timings.csv.*"))
    with pytest.raises(FileNotFoundError, match="no timed recipe"):
        fold(tmp_path / "none.log", tmp_path / "out.csv")
