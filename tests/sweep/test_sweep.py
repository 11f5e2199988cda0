"""Sweeps: grid expansion and validation, the Slurm batch scripts, a real local sweep and its resumption."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mosaicbert.errors import ConfigError
from mosaicbert.sweep.launch import slurm_scripts
from mosaicbert.sweep.plan import cells, dot, make_plan, read_sweep

from conftest import REPO
from helpers.sweeps import read_rows, sweep_cli, write_sweep


# --------------------------------------------------------------------------- plan


def test_grid_expands_to_one_validated_run_per_cell(tmp_path, sample_root, in_repo):
    path = write_sweep(tmp_path, sample_root, grid={"seed": [17, 18], "optimizer.lr": [1.0e-3, 5.0e-4]})
    plan = make_plan(read_sweep(path))
    assert len(plan.runs) == 2 * 2 * 2
    assert len({run.run_id for run in plan.runs}) == 8 and len({run.config_hash for run in plan.runs}) == 8
    seen = {(run.model, run.cell["seed"], run.cell["optimizer.lr"]) for run in plan.runs}
    assert seen == {(m, s, lr) for m in ("mosaicbert", "hf-bert") for s in (17, 18) for lr in (1.0e-3, 5.0e-4)}
    for run in plan.runs:
        assert f"seed={run.cell['seed']}" in run.overrides and "autoresume=true" in run.overrides
        assert f"save_folder={run.folder}/checkpoints" in run.overrides and "save_interval=3ba" in run.overrides
        # The cell beats the sweep-wide overrides, and the grid's own values arrive typed.
        assert run.overrides.index(f"seed={run.cell['seed']}") > run.overrides.index("max_duration=6ba")
    # The same YAML plans the same runs (that is how a re-run finds them); a changed value makes new ones.
    assert [r.run_id for r in make_plan(read_sweep(path)).runs] == [r.run_id for r in plan.runs]
    other = make_plan(read_sweep(path, ["overrides.max_duration=8ba"]))
    assert not {r.run_id for r in other.runs} & {r.run_id for r in plan.runs}
    # The grid from the command line: OmegaConf nests the dotted key, the sweep reads it as the YAML's.
    narrowed = make_plan(read_sweep(path, ["grid.optimizer.lr=[1.0e-3]", "grid.model=[hf-bert]"]))
    assert [(r.model, r.cell["optimizer.lr"]) for r in narrowed.runs] == [("hf-bert", 1.0e-3)] * 2
    assert {r.run_id for r in narrowed.runs} <= {r.run_id for r in plan.runs}


@pytest.mark.parametrize("name", ["demo", "pareto-base", "pareto-large"])
def test_shipped_sweeps_plan_with_every_run_validated(name, in_repo, clean_env):
    plan = make_plan(read_sweep(REPO / "yamls" / "sweeps" / f"{name}.yaml"))
    assert len({run.model for run in plan.runs}) == 2 and len(plan.runs) >= 2
    from mosaicbert.config import read_yaml

    if name == "demo":  # each model at its own tuned peak rate (docs/time-to-quality.md)
        assert {r.model: read_yaml(r.recipe, r.overrides)["optimizer"]["lr"] for r in plan.runs} == {
            "mosaicbert": 1.0e-3, "hf-bert": 5.0e-4}
    else:  # the paper's protocol: checkpoints every 3,500 of 70,000 steps, GLUE on each
        assert plan.sweep.evaluation.kind == "glue" and plan.sweep.checkpoint_interval == "3500ba"
        assert {read_yaml(r.recipe, r.overrides)["max_duration"] for r in plan.runs} == {"286720000sp"}  # 70,000 x 4096
        assert all(run.glue_recipe for run in plan.runs)


def test_grid_model_key_picks_models_and_values_round_trip(tmp_path, sample_root, in_repo):
    sweep = read_sweep(write_sweep(tmp_path, sample_root, grid={"model": ["hf-bert"], "optimizer.betas": [[0.9, 0.99]]}))
    assert cells(sweep) == [{"model": "hf-bert", "optimizer.betas": [0.9, 0.99]}]
    plan = make_plan(sweep)
    assert [run.model for run in plan.runs] == ["hf-bert"]
    from omegaconf import OmegaConf

    for value in (17, 0.5, "300ba", "2h", [0.9, 0.98], None, True, "a b"):
        assert OmegaConf.to_container(OmegaConf.from_dotlist([dot("k", value)]))["k"] == value


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"grid": {}}, "grid is empty"),
        ({"grid": {"seed": []}}, "grid.seed must be a non-empty list"),
        ({"grid": {"seed": [17], "optimizer.lrr": [1.0e-3]}}, "sweep cell 0 (model=mosaicbert, seed=17, optimizer.lrr=0.001"),
        ({"grid": {"max_seq_len": [64, "long"]}}, "sweep cell 2 (model=mosaicbert, max_seq_len=long"),
        ({"grid": {"model": ["bert"]}}, "grid.model names 'bert'"),
        ({"models": {"mosaicbert": {"recipe": "yamls/nope.yaml"}}}, "models.mosaicbert.recipe: yamls/nope.yaml does not exist"),
        ({"grid": {"run_name": ["x"]}}, "grid.run_name: the sweep sets run_name"),
        ({"evaluation": {"kind": "glue"}}, "models.mosaicbert: evaluation.kind is glue but glue_recipe is not set"),
        ({"evaluatoin": {}}, "Did you mean 'evaluation'"),
    ],
)
def test_bad_sweeps_fail_before_anything_runs_naming_the_cell(tmp_path, sample_root, in_repo, changes, message):
    with pytest.raises(ConfigError) as err:
        make_plan(read_sweep(write_sweep(tmp_path, sample_root, **changes)))
    assert message in str(err.value)


@pytest.mark.slow
def test_bad_sweep_on_the_command_line_is_one_message_and_nothing_written(tmp_path, sample_root):
    path = write_sweep(tmp_path, sample_root, grid={"seed": [17, 18], "optimizer.lrr": [1.0e-3]})
    done = sweep_cli(str(path), "--launcher", "slurm")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: sweep cell 0 (model=mosaicbert, seed=17, optimizer.lrr=0.001") and "Did you mean 'lr'" in done.stderr
    assert not (tmp_path / "sweep").exists()


# --------------------------------------------------------------------------- slurm scripts


def test_slurm_scripts_for_a_multi_node_gpu_sweep(tmp_path, sample_root, in_repo):
    slurm = {"account": "proj", "partition": "gpu", "time": "10:00:00", "signal_seconds": 240, "extra_sbatch": ["--qos=high"]}
    plan = make_plan(read_sweep(write_sweep(tmp_path, sample_root, nodes=2, gpus_per_node=4, slurm=slurm,
                                            overrides={"data_local": str(sample_root), "global_train_batch_size": 64})))
    scripts = slurm_scripts(plan, plan.runs, str(REPO))
    pretrain, node = scripts["pretrain.sbatch"].splitlines(), scripts["launch-node.sh"]
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4", "#SBATCH --array=0-1",
                 "#SBATCH --time=10:00:00", "#SBATCH --signal=TERM@240", "#SBATCH --account=proj",
                 "#SBATCH --partition=gpu", "#SBATCH --qos=high", "#SBATCH --requeue"):
        assert line in pretrain, line
    assert f"RUNS=({' '.join(r.run_id for r in plan.runs)})" in pretrain
    assert any(line.startswith("srun --ntasks-per-node=1") and "--cpus-per-task=$SLURM_CPUS_PER_TASK" in line for line in pretrain)
    assert 'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in pretrain
    assert "export MASTER_PORT=$(( 29500 + SLURM_JOB_ID % 1000 ))" in pretrain
    assert "--world_size $(( SLURM_NNODES * NPROC ))" in node and "NPROC=4" in node
    assert '--node_rank "$SLURM_NODEID" --base_rank $(( SLURM_NODEID * NPROC ))' in node
    assert '--master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"' in node and "trap '' TERM" in node
    evaluate = scripts["evaluate.sbatch"]
    assert "#SBATCH --nodes=1" in evaluate and "--evaluate" in evaluate and "#SBATCH --account=proj" in evaluate
    for name, text in scripts.items():
        checked = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
        assert checked.returncode == 0, f"{name}: {checked.stderr}"


def sbatch_options(plan) -> dict[str, list[str]]:
    """Each batch script's #SBATCH options, but its log path."""
    scripts = slurm_scripts(plan, plan.runs, str(REPO))
    return {name: [line.removeprefix("#SBATCH ") for line in scripts[name].splitlines()
                   if line.startswith("#SBATCH") and not line.startswith("#SBATCH --output=")]
            for name in ("pretrain.sbatch", "evaluate.sbatch", "report.sbatch")}


def test_slurm_jobs_of_the_shipped_sweep_ask_for_what_they_use(in_repo, clean_env):
    shipped = REPO / "yamls" / "sweeps" / "pareto-base.yaml"
    options = sbatch_options(make_plan(read_sweep(shipped, ["evaluation.kind=mlm"])))
    one_node = ["--nodes=1", "--ntasks-per-node=1"]
    assert options["pretrain.sbatch"] == ["--job-name=pareto-base-pretrain", *one_node, "--time=16:00:00",
                                          "--gpus-per-node=8", "--exclusive", "--array=0-1", "--signal=TERM@600",
                                          "--requeue", "--open-mode=append"]
    # The MLM scorer uses one device, and the report none: neither holds a whole node.
    assert options["evaluate.sbatch"] == ["--job-name=pareto-base-evaluate", *one_node, "--time=48:00:00", "--gpus-per-node=1"]
    assert options["report.sbatch"] == ["--job-name=pareto-base-report", *one_node, "--time=00:30:00", "--cpus-per-task=2"]
    glue = sbatch_options(make_plan(read_sweep(shipped)))["evaluate.sbatch"]  # a GLUE job on every GPU
    assert glue == ["--job-name=pareto-base-evaluate", *one_node, "--time=48:00:00", "--gpus-per-node=8", "--exclusive"]


def test_whole_node_options_go_only_to_jobs_that_use_whole_nodes(in_repo, clean_env):
    whole = ["--exclusive=user", "--mem 0", "--mem=0G"]
    shared = ["--account=proj", "--partition=gpu", "--qos=normal", "--constraint=a100", "--mem=64G"]
    settings = ["evaluation.kind=mlm", "slurm.cpus_per_task=64", "slurm.account=proj", "slurm.partition=gpu",
                f"slurm.extra_sbatch=[{','.join(whole + shared[2:])}]"]
    options = sbatch_options(make_plan(read_sweep(REPO / "yamls" / "sweeps" / "pareto-base.yaml", settings)))
    assert options["pretrain.sbatch"][4:-4] == ["--gpus-per-node=8", "--cpus-per-task=64", *shared[:2], *whole, *shared[2:]]
    assert options["evaluate.sbatch"][4:] == ["--gpus-per-node=1", "--cpus-per-task=8", *shared]  # a GPU's share of the CPUs
    assert options["report.sbatch"][4:] == ["--cpus-per-task=2", *shared]


# --------------------------------------------------------------------------- a real local sweep


@pytest.mark.slow
def test_local_sweep_collects_the_table_and_resumes(tmp_path, sample_root):
    path = write_sweep(tmp_path, sample_root)
    folder = tmp_path / "sweep"
    first = sweep_cli(str(path), "--launcher", "local")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = read_rows(folder)
    assert sorted((r["model"], int(r["step"])) for r in rows) == [("hf-bert", 3), ("hf-bert", 6), ("mosaicbert", 3), ("mosaicbert", 6)]
    for row in rows:
        assert row["metric"] == "mlm_accuracy" and 0.0 <= float(row["quality"]) <= 1.0
        assert float(row["wall_clock_hours"]) > 0 and int(row["tokens"]) > 0 and float(row["cost"]) == 0.0
    assert (folder / "pareto.png").stat().st_size > 0 and json.loads((folder / "results.json").read_text())["frontier"]
    # Both models saw the same tokens: same data, order, batch and steps.
    by_step = {}
    for row in rows:
        by_step.setdefault(row["step"], set()).add(row["tokens"])
    assert all(len(tokens) == 1 for tokens in by_step.values())

    # Interrupt one run after its first checkpoint, as SIGTERM at step 3 would leave it, and lose one evaluation of the other.
    runs = {p.name.split("-")[0]: p for p in (folder / "runs").iterdir()}
    interrupted, kept = runs["mosaicbert"], runs["hf"]
    (interrupted / "summary.json").unlink()
    (interrupted / "checkpoints" / "ep0-ba6-rank0.pt").unlink()
    latest = interrupted / "checkpoints" / "latest-rank0.pt"
    latest.unlink()
    latest.symlink_to("ep0-ba3-rank0.pt")
    kept_checkpoints = {p.name: p.stat().st_mtime_ns for p in (kept / "checkpoints").glob("ep*.pt")}
    lost = sorted((kept / "evaluations").glob("ep0-ba6-*.json"))
    assert len(lost) == 1
    lost[0].unlink()

    second = sweep_cli(str(path), "--launcher", "local")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "to resume from 1 checkpoint(s)" in second.stdout and "trained, 1 checkpoint(s) to evaluate" in second.stdout
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["batches"] == 6 and summary["batches_this_run"] == 3  # continued from step 3, not from scratch
    assert {p.name: p.stat().st_mtime_ns for p in (kept / "checkpoints").glob("ep*.pt")} == kept_checkpoints
    assert (kept / "sweep.log").read_text().count("src/main.py") == 1  # the finished run was not trained again
    assert len(read_rows(folder)) == 4

    # A third run has nothing to do, and --report redraws the same table.
    third = sweep_cli(str(path))
    assert third.returncode == 0 and "2 of 2 run(s) already done; 0 to go" in third.stdout
    before = (folder / "results.csv").read_text()
    (folder / "results.csv").unlink()
    report = sweep_cli("--report", str(folder))
    assert report.returncode == 0 and (folder / "results.csv").read_text() == before


def test_report_of_a_folder_without_a_plan_is_one_message(tmp_path):
    done = sweep_cli("--report", str(tmp_path))
    assert done.returncode == 2 and "holds no plan.json" in done.stderr and "Traceback" not in done.stderr


def test_scored_checkpoints_skip_signal_checkpoints_and_can_be_the_last_only(tmp_path, sample_root, in_repo):
    from mosaicbert.sweep.evaluate import checkpoints, scored_checkpoints

    plan = make_plan(read_sweep(write_sweep(tmp_path, sample_root, models={"mosaicbert": {"recipe": "yamls/demo.yaml"}})))
    (run,) = plan.runs
    folder = Path(run.checkpoint_folder)
    folder.mkdir(parents=True)
    for step in (3, 5, 6, 9, 12):
        (folder / f"ep0-ba{step}-rank0.pt").write_bytes(b"")
    (folder / ".partial-1-ep0-ba15-rank0.pt").write_bytes(b"")
    (folder / "latest-rank0.pt").symlink_to("ep0-ba12-rank0.pt")
    (folder / "signal-checkpoints.txt").write_text("ep0-ba5-rank0.pt\n")  # what a SIGTERM at step 5 leaves
    assert [p.name for p in checkpoints(run)] == [f"ep0-ba{s}-rank0.pt" for s in (3, 6, 9, 12)]
    assert scored_checkpoints(plan, run) == checkpoints(run)
    plan.sweep.evaluation.checkpoints = "last"
    assert scored_checkpoints(plan, run) == []  # not finished: its last checkpoint is not its final one
    (Path(run.folder) / "summary.json").write_text("{}")
    assert [p.name for p in scored_checkpoints(plan, run)] == ["ep0-ba12-rank0.pt"]
