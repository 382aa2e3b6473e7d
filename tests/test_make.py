"""The Makefile: `make -n all` lists every stage in order, for each profile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _dry_run(*args: str) -> str:
    out = subprocess.run(
        ["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout


@pytest.mark.parametrize("profile", ["smoke", "default", "replicated"])
def test_make_all_lists_the_stages_in_order(profile, tmp_path):
    # a fresh runs folder so that finished stages of this checkout do not hide any rule
    text = _dry_run(
        "all", f"PROFILE={profile}", f"RUNS={tmp_path}/runs", f"SYNTH_ROOT={tmp_path}/data"
    )
    stages = [
        "attrlib.synthvoc",
        "01_teacher.ipynb",
        "02_distill.ipynb",
        "03_prune_oneshot.ipynb",
        "04_prune_iterative.ipynb",
        "04b_quantize.ipynb",
        "05_evaluate.ipynb",
        "06_paper.ipynb",
    ]
    if profile == "replicated":  # its grid has no quantization
        assert "04b_quantize.ipynb" not in text
        stages.remove("04b_quantize.ipynb")
    positions = [text.find(s) for s in stages]
    assert all(p >= 0 for p in positions), dict(zip(stages, positions, strict=True))
    assert positions == sorted(positions)
    teachers = 3 if profile == "replicated" else 1
    assert len([line for line in _run_lines(text) if "nbrun notebooks/01_teacher" in line]) == (
        teachers
    )


def test_default_grid_covers_the_study(tmp_path):
    text = _dry_run(
        "all", "PROFILE=default", f"RUNS={tmp_path}/runs", f"SYNTH_ROOT={tmp_path}/data"
    )
    for seed in (0, 1, 2):  # three seeds of every compressed setting, by default
        for run in ("x2-kd", "x2-ewa", "x2-swa", "x2-sswa", "x4-kd", "x4-swa"):
            assert f"distill/{run}-s{seed}/" in text
        for run in ("p0.3-naive", "p0.5-swa", "p0.7-sswa"):
            assert f"prune_oneshot/{run}-s{seed}/" in text
        for run in ("naive", "swa"):
            assert f"prune_iterative/{run}-s{seed}/" in text
    assert "-s3/" not in text
    assert "-p matching swa -p drop_fraction 0.3" in text


def test_every_teacher_has_its_own_folder_of_runs(tmp_path):
    runs = tmp_path / "runs"
    text = _dry_run(
        "all",
        "PROFILE=smoke",
        "SET=teacher_seeds=[3,5]",
        "JOBS=2",
        f"RUNS={runs}",
        f"SYNTH_ROOT={tmp_path}/data",
    )
    lines = _run_lines(text)
    teachers = [line for line in lines if "01_teacher.ipynb" in line]
    assert len(teachers) == 2
    for t in (3, 5):
        tree = f"{runs}/teacher-s{t}"
        assert any(f"-p seed {t} -p out_dir {tree}/teacher " in line for line in teachers)
        # each run learns from its own teacher's store and is evaluated against its maps
        grid = [line for line in lines if f"{tree}/distill/" in line or f"{tree}/prune_" in line]
        assert len(grid) == 6 and all(f"{tree}/teacher/targets.pt" in line for line in grid)
        assert not any(f"teacher-s{8 - t}/" in line for line in grid)
        evaluation = [line for line in lines if f"{tree}/evaluate/" in line and "05_" in line]
        assert len(evaluation) == 1 and f"find {tree} -name best.pt" in evaluation[0]
        assert f"-p teacher {tree}/teacher/best.pt" in evaluation[0]
    # two teachers at once on two job slots: each gets one thread
    assert all(line.startswith("OMP_NUM_THREADS=1 ") for line in teachers)
    assert sum("06_paper.ipynb" in line for line in lines) == 1


def test_smoke_and_voc_run_one_seed(tmp_path):
    split = tmp_path / "voc" / "ImageSets" / "Main" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_text("")
    for profile in ("smoke", "voc"):
        text = _dry_run(
            "all",
            f"PROFILE={profile}",
            f"VOC_ROOT={tmp_path}/voc" if profile == "voc" else "VOC_ROOT=",
            f"RUNS={tmp_path}/runs-{profile}",
            f"SYNTH_ROOT={tmp_path}/data",
        )
        assert "distill/x2-kd-s0/" in text and "prune_iterative/swa-s0/" in text, profile
        assert "-s1/" not in text, profile
        # real data is read whole before the teacher trains on it; the embedded set is not
        check = text.find("attrlib.datacheck check")
        if profile == "voc":
            assert -1 < check < text.index("01_teacher.ipynb"), "no data check before the teacher"
        else:
            assert check == -1


def test_voc_profile_needs_a_real_tree(tmp_path):
    out = subprocess.run(
        ["make", "-n", "data", "PROFILE=voc", f"VOC_ROOT={tmp_path}/nothing"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "ImageSets/Main/train.txt" in out.stderr


def test_grid_runs_get_their_thread_share(tmp_path):
    """Grid runs execute side by side with THREADS torch threads each; the teacher keeps all."""
    stamp = tmp_path / "data" / "VOCdevkit" / "VOC2012" / "synthvoc.json"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("{}")
    log = tmp_path / "threads.log"
    fake = tmp_path / "python"  # stands in for papermill and the targets builder: logs threads
    fake.write_text(
        "#!/bin/sh\n"
        f'[ "$2" = attrlib.datacheck ] && exec {sys.executable} "$@"\n'
        f'if [ "$2" = attrlib.stages ]; then echo "targets threads=${{OMP_NUM_THREADS:-unset}}"'
        f' >> {log}; for a; do out="$a"; done; touch "$out"; exit 0; fi\n'
        f'echo "$3 threads=${{OMP_NUM_THREADS:-unset}}" >> {log}\ntouch "$4"\n'
    )
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MAKEFLAGS")}
    subprocess.run(
        [
            "make",
            "distill",
            "PROFILE=smoke",
            f"PY={fake}",
            f"RUNS={tmp_path}/runs",
            f"SYNTH_ROOT={tmp_path}/data",
            "JOBS=2",
            "THREADS=1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = sorted(log.read_text().splitlines())
    assert lines == [
        "notebooks/01_teacher.ipynb threads=unset",
        "notebooks/02_distill.ipynb threads=1",
        "notebooks/02_distill.ipynb threads=1",
        "targets threads=unset",  # the teacher's targets, like the teacher, use every core
    ]


def _fake_papermill(tmp_path, seconds=0.0):
    """An executable standing in for the venv's python: as papermill it writes its output
    argument after `seconds`; as `-m attrlib.timing` it runs the real module."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f'[ "$2" = attrlib.timing ] && exec {sys.executable} "$@"\n'
        f"sleep {seconds}\n"
        # the targets builder (`-m attrlib.stages targets ... --out FILE`) writes its last argument
        'if [ "$2" = attrlib.stages ]; then for a; do out="$a"; done; else out="$4"; fi\n'
        'touch "$out"\n'
    )
    fake.chmod(0o755)
    return fake


def _clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MAKEFLAGS")}


def test_stage_wall_time_is_the_span_of_its_parallel_runs(tmp_path):
    """Two distillation runs side by side take one run's time, not two; `make timings`
    folds the log into timings.csv."""
    stamp = tmp_path / "data" / "VOCdevkit" / "VOC2012" / "synthvoc.json"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("{}")
    fake = _fake_papermill(tmp_path, seconds=1.5)
    runs = tmp_path / "runs"
    common = [f"PY={fake}", f"RUNS={runs}", f"SYNTH_ROOT={tmp_path}/data", "PROFILE=smoke"]
    for target in ("distill", "timings"):
        subprocess.run(
            ["make", target, *common, "JOBS=2", "THREADS=1", f"STAMP={fake}"],
            cwd=ROOT,
            env=_clean_env(),
            capture_output=True,
            text=True,
            check=True,
        )
    log = (runs / ".timings.log").read_text().splitlines()
    assert sum(line.startswith("end distill ") for line in log) == 2
    rows = (runs / "timings.csv").read_text().splitlines()
    assert rows[0] == "stage,seconds" and [r.split(",")[0] for r in rows[1:]] == [
        "teacher",
        "targets",
        "distill",
        "total",
    ]
    seconds = {r.split(",")[0]: float(r.split(",")[1]) for r in rows[1:]}
    assert 1.5 <= seconds["distill"] < 2.9  # the two runs overlap: about 1.5 s, not 3 s
    assert seconds["total"] >= seconds["teacher"] + seconds["distill"] - 0.2


def test_results_copies_the_reference_run(tmp_path):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    figures = tmp_path / "figures"
    command = ["make", "results", "PROFILE=smoke", f"RUNS={runs}", f"RESULTS={docs}"]
    command.append(f"RESULT_FIGURES_DIR={figures}")
    (runs / "paper").mkdir(parents=True)
    tables = ("all_runs.csv", "effects.csv", "summary.md", "teacher_spread.csv", "validity.csv")
    for name in (*tables, "forest.png", "replicates_gradcam_auc.png"):
        (runs / "paper" / name).write_text(name)
    out = subprocess.run(command, cwd=ROOT, env=_clean_env(), capture_output=True, text=True)
    assert out.returncode != 0
    assert f"{runs}/timings.csv is missing" in out.stderr
    assert not docs.exists()
    (runs / "timings.csv").write_text("stage,seconds\ntotal,1.0\n")
    (runs / "profile.yaml").write_text("name: smoke\n")  # the resolved profile make wrote
    subprocess.run(command, cwd=ROOT, env=_clean_env(), capture_output=True, check=True)
    assert sorted(p.name for p in docs.iterdir()) == sorted(
        [*tables, "timings.csv", "profile.yaml"]
    )
    assert (docs / "summary.md").read_text() == "summary.md"
    assert sorted(p.name for p in figures.iterdir()) == ["forest.png", "replicates_gradcam_auc.png"]
    # the faithfulness figures go along where the paper drew them
    (runs / "paper" / "forest_faithfulness.png").write_text("f")
    subprocess.run(command, cwd=ROOT, env=_clean_env(), capture_output=True, check=True)
    assert (figures / "forest_faithfulness.png").read_text() == "f"
    assert not (figures / "faithfulness_curves.png").exists()


def test_stage_seeds_repeat_only_that_stage(tmp_path):
    text = _dry_run(
        "all",
        "PROFILE=smoke",
        "PRUNE_SEEDS=0 1",
        f"RUNS={tmp_path}/runs",
        f"SYNTH_ROOT={tmp_path}/data",
    )
    assert "prune_oneshot/p0.5-swa-s1/" in text and "prune_iterative/naive-s1/" in text
    assert "distill/x2-kd-s0/" in text and "distill/x2-kd-s1/" not in text


def test_data_regenerated_byte_for_byte_reruns_nothing(synth_root, tmp_path):
    """The teacher (and all after it) depends on the data's content, not on its file times."""
    log = tmp_path / "ran.log"
    fake = tmp_path / "python"  # the real python for the digest, a logging stand-in otherwise
    fake.write_text(
        "#!/bin/sh\n"
        f'[ "$2" = attrlib.datacheck ] && exec {sys.executable} "$@"\n'
        f'[ "$2" = attrlib.timing ] && exit 0\n'
        f'echo "$3" >> {log}; touch "$4"\n'
    )
    fake.chmod(0o755)
    data = tmp_path / "data"
    voc = data / "VOCdevkit" / "VOC2012"
    make = [
        "make",
        "teacher",
        "PROFILE=smoke",
        f"PY={fake}",
        f"RUNS={tmp_path}/runs",
        f"SYNTH_ROOT={data}",
    ]

    def teacher_runs() -> int:
        subprocess.run(make, cwd=ROOT, env=_clean_env(), capture_output=True, check=True)
        return log.read_text().count("01_teacher") if log.exists() else 0

    shutil.copytree(synth_root, voc)
    assert teacher_runs() == 1
    assert teacher_runs() == 1  # nothing new
    shutil.rmtree(data)
    time.sleep(0.01)
    shutil.copytree(synth_root, voc, copy_function=shutil.copyfile)  # same bytes, new times
    assert teacher_runs() == 1
    quiet = subprocess.run([*make, "-q"], cwd=ROOT, env=_clean_env(), capture_output=True)
    assert quiet.returncode == 0, "make -q: the teacher looks out of date"
    image = next((voc / "JPEGImages").glob("*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")
    (voc / "synthvoc.json").touch()  # a regeneration writes its manifest anew
    assert teacher_runs() == 2


def _run_lines(text: str) -> list[str]:
    """The lines of `make -n` output that execute a notebook or build the teacher's targets,
    each as its environment and the command scripts/claim.sh runs (without the claim's
    target and prerequisites)."""
    lines = []
    for line in text.splitlines():
        if "attrlib.nbrun" in line or "attrlib.stages targets" in line:
            env, claimed, rest = line.partition("scripts/claim.sh ")
            lines.append(env + rest.split(" -- ", 1)[1].lstrip() if claimed else line)
    return lines


def test_nproc_runs_the_training_stages_under_torchrun(tmp_path):
    text = _dry_run(
        "all", "PROFILE=smoke", "NPROC=2", f"RUNS={tmp_path}/runs", f"SYNTH_ROOT={tmp_path}/data"
    )
    torchrun = "torchrun --standalone --nproc_per_node=2 -m attrlib.nbrun --rank-output "
    lines = {
        nb: [line for line in _run_lines(text) if nb in line]
        for nb in (
            "01_teacher",
            "02_distill",
            "03_prune_oneshot",
            "04_prune_iterative",
            "05_evaluate",
            "06_paper",
        )
    }
    for nb in ("01_teacher", "02_distill", "03_prune_oneshot", "04_prune_iterative", "05_evaluate"):
        assert lines[nb] and all(torchrun in line for line in lines[nb]), nb
    assert "torchrun" not in lines["06_paper"][0]  # the paper only reads the runs: once
    plain = _dry_run("all", "PROFILE=smoke", f"RUNS={tmp_path}/runs", f"SYNTH_ROOT={tmp_path}/data")
    assert "torchrun" not in plain and "--rank-output" not in plain


def test_nproc_ranks_share_the_notebook_and_only_rank_0_writes_it(tmp_path):
    """Each torchrun rank's kernel sees the rank's environment; one executed copy is kept."""
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("out_dir = ''", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(
                "import os\n"
                "names = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')\n"
                "with open(f\"{out_dir}/rank{os.environ['RANK']}.txt\", 'w') as f:\n"
                "    f.write(' '.join(os.environ[n] for n in names))\n"
            ),
        ]
    )
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, tmp_path / "nb.ipynb")
    out = tmp_path / "run"
    out.mkdir()
    subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "attrlib.nbrun",
            "--rank-output",
            str(tmp_path / "nb.ipynb"),
            str(out / ".partial-nb.ipynb"),
            "-p",
            "out_dir",
            str(out),
        ],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        check=True,
    )
    assert sorted(p.name for p in out.iterdir()) == [".partial-nb.ipynb", "rank0.txt", "rank1.txt"]
    seen = [(out / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert [s[:3] for s in seen] == [["0", "2", "0"], ["1", "2", "1"]]
    assert seen[0][3:] == seen[1][3:]  # one rendezvous: the same master address and port


def test_launch_prefixes_every_run(tmp_path):
    text = _dry_run(
        "all",
        "PROFILE=smoke",
        "LAUNCH=echo-launch --gres=gpu:1",
        f"RUNS={tmp_path}/runs",
        f"SYNTH_ROOT={tmp_path}/data",
    )
    lines = _run_lines(text)
    grid = [line for line in lines if "/distill/" in line or "/prune_" in line]
    assert len(grid) == 6  # smoke: two runs of each grid stage
    for line in lines:
        launched = "echo-launch --gres=gpu:1 .venv/bin/python -m" in line
        assert launched == ("06_paper" not in line), line  # the paper is no cluster job


def test_gpus_give_each_concurrent_run_a_gpu_of_its_own(tmp_path):
    """GPUS="0 1": runs overlap two at a time (JOBS defaults to 2), never two on one GPU."""
    stamp = tmp_path / "data" / "VOCdevkit" / "VOC2012" / "synthvoc.json"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("{}")
    log = tmp_path / "gpus.log"
    fake = tmp_path / "python"  # papermill and the targets builder: log GPU and times, sleep
    fake.write_text(
        "#!/bin/sh\n"
        f'[ "$2" = attrlib.datacheck ] || [ "$2" = attrlib.timing ] && exec {sys.executable} "$@"\n'
        'if [ "$2" = attrlib.stages ]; then for a; do out="$a"; done; else out="$4"; fi\n'
        f'echo "$out $CUDA_VISIBLE_DEVICES $(date +%s.%N) start" >> {log}\n'
        "sleep 0.8\n"
        f'echo "$out $CUDA_VISIBLE_DEVICES $(date +%s.%N) end" >> {log}\n'
        'touch "$out"\n'
    )
    fake.chmod(0o755)
    runs = tmp_path / "runs"
    common = ["PROFILE=smoke", f"PY={fake}", f"RUNS={runs}", f"SYNTH_ROOT={tmp_path}/data"]
    jobs = subprocess.run(
        ["make", "-s", *common, "GPUS=0 1", "--eval=jobs: ; @echo $(JOBS)", "jobs"],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert jobs.stdout.split()[-1] == "2"
    subprocess.run(
        ["make", "distill", "prune-oneshot", *common, "GPUS=0 1"],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    spans: dict[str, dict] = {}  # output -> gpu, start, end
    for line in log.read_text().splitlines():
        out, gpu, seconds, event = line.split()
        spans.setdefault(out, {"gpu": gpu})[event] = float(seconds)
    assert spans[f"{runs}/teacher-s0/teacher/.partial-01_teacher.ipynb"]["gpu"] == "0"
    assert spans[f"{runs}/teacher-s0/teacher/targets.pt"]["gpu"] == "0"
    grid = [span for out, span in spans.items() if "/distill/" in out or "/prune_oneshot/" in out]
    assert len(grid) == 4 and {span["gpu"] for span in grid} == {"0", "1"}
    overlapping = [
        (a, b)
        for i, a in enumerate(grid)
        for b in grid[i + 1 :]
        if a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlapping, "no two runs side by side"
    assert all(a["gpu"] != b["gpu"] for a, b in overlapping), overlapping


def test_evaluation_settings_reach_notebook_05(tmp_path):
    args = ("evaluate", "PROFILE=smoke", f"RUNS={tmp_path}/runs", f"SYNTH_ROOT={tmp_path}/data")
    plain = _dry_run(*args)
    assert "faith_metrics" not in plain and "-p overwrite True" not in plain
    text = _dry_run(*args, "FAITH_METRICS=deletion,road", "EVAL_OVERWRITE=1")
    assert '-y "faith_metrics: [deletion,road]" -p overwrite True' in text
