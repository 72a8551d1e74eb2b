"""The user's DVC flow in a temporary git repo: repro, an experiment with --set-param, metrics diff."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.slow


def project_env(env_extra: dict | None = None) -> dict:
    """The environment of a command in a test project: the stages' `python` is this interpreter, its
    virtual environment activated or not."""
    return {**os.environ, "TQDM_DISABLE": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            **(env_extra or {})}


def sh(project: Path, *args: str, check: bool = True, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command in the project; `dvc` and the stages' `python` are this interpreter's, activated or not."""
    env = project_env(env_extra)
    command = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else list(args)
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the pipeline (code, dvc.yaml, DVC config) with tiny params, committed after `dvc repro`."""
    root = tmp_path_factory.mktemp("pipeline")
    for folder in ("stages", "btseg", "plots"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.name", "pipeline test")  # dvc exp commits need an identity
    sh(root, "git", "config", "user.email", "test@example.invalid")
    sh(root, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "pipeline")  # as in a clone: dvclive reads the current revision
    sh(root, "dvc", "repro")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "baseline")
    return root


def metrics_diff(project: Path) -> dict:
    return json.loads(sh(project, "dvc", "metrics", "diff", "--json").stdout or "{}")


def test_repro_writes_metrics_for_every_dataset_and_model(project):
    for dataset in ("brats2020", "tumor_coco"):
        for model in ("unet", "resunet"):
            shown = json.loads((project / "metrics" / dataset / f"{model}.json").read_text())
            assert set(shown) == {"per_case", "per_slice", "pooled", "threshold", "cases"}  # a handful of numbers
            assert set(shown["per_slice"]) == set(shown["pooled"]) == {"dice"}
            metrics = json.loads((project / "reports" / dataset / model / "evaluation/metrics_full.json").read_text())
            assert shown["per_case"]["dice"] == metrics["per_case"]["dice"]
            for group in ("per_case", "per_slice", "pooled"):
                assert {"dice", "iou", "precision", "recall", "specificity"} <= set(metrics[group])
                assert all(0.0 <= metrics[group][m] <= 1.0
                           for m in ("dice", "iou", "precision", "recall", "specificity"))
            assert (project / "reports" / dataset / model / "worst_cases.png").stat().st_size > 10_000
            assert {"specificity", "hd95_px"} <= set(metrics["per_case"]) and metrics["hd95_unit"] == "px"
            assert set(metrics["dice_conventions"]) == {"ours", "nnunet", "brats_legacy", "monai_ignore_empty"}
            assert metrics["threshold_from"] == "validation" \
                and metrics["threshold"] in tiny_params()["evaluate"]["threshold_grid"]
            assert "none" in metrics["size_buckets"]
            for name in ("missed_tumors.png", "false_alarms.png", "best_cases.png", "analysis.png",
                         "dice_vs_size.csv", "case_dice.csv", "pr_curve.csv", "evaluation/per_case.csv"):
                assert (project / "reports" / dataset / model / name).is_file(), name
    # the summary: each pair's per-case Dice, read back from its own file (not recomputed)
    summary = json.loads((project / "dice.json").read_text())
    assert summary == {dataset: {model: json.loads((project / "metrics" / dataset / f"{model}.json")
                                                   .read_text())["per_case"]["dice"]
                                 for model in ("unet", "resunet")} for dataset in ("brats2020", "tumor_coco")}
    assert "up to date" in sh(project, "dvc", "status").stdout.lower() \
        or sh(project, "dvc", "status").stdout.strip() == ""


def test_plots_show_renders_one_html_page(project, tmp_path):
    sh(project, "dvc", "plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "Dice vs true tumor area" in page and "worst_cases.png" in page  # a data plot (vega) and an image
    # offline: vega is inlined, and nothing is loaded from elsewhere (schema ids in the specs are names, not loads)
    assert "vegaEmbed" in page and "cdn.jsdelivr" not in page
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)=["']?(https?:)?//""", page)
    assert "tumor_coco / resunet: per-case Dice" in page and "brats2020 / unet: training curve" in page
    # train and validation loss share one chart, coloured by split; tick labels keep small values (0.002, not 0)
    assert "brats2020 / unet: train and validation loss" in page
    assert '"split": "validation"' in page and '"split": "train"' in page
    assert page.count('"format": "~g"') >= 2 * 2 * 2  # curve and loss charts of every dataset x model


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run vega headless")
def test_every_chart_renders_headless_with_readable_labels(project, tmp_path):
    """Each chart of the page through the inlined vega and vega-lite, to SVG, as a browser would draw it."""
    sh(project, "dvc", "plots", "show", "-o", str(tmp_path / "plots"))
    result = subprocess.run(["node", str(REPO / "tests/render_plots.js"), str(tmp_path / "plots/index.html"),
                             str(REPO / "plots/offline.html")], capture_output=True, text=True, timeout=300, check=True)
    charts = json.loads(result.stdout)
    assert len(charts) >= 2 * 2 * 6, sorted(charts)  # per dataset x model: 3 curves, the loss chart, 2 from evaluate
    assert not {chart_id: chart["error"] for chart_id, chart in charts.items() if "error" in chart}
    for dataset in ("brats2020", "tumor_coco"):
        for model in ("unet", "resunet"):
            live = project / "dvclive" / dataset / model
            rates = [float(line.split("\t")[1])
                     for line in (live / "plots/metrics/learning_rate.tsv").read_text().splitlines()[1:]]
            labels = charts[f"dvclive_{dataset}_{model}_plots_metrics_learning_rate_tsv"]["y_labels"]
            assert labels and all(float(label) > 0 for label in labels), labels  # a rate of 0.002 is not labelled "0"
            assert min(float(label) for label in labels) <= max(rates)
            loss = charts[f"dvclive_{dataset}_{model}_loss_csv"]
            # one chart, two curves
            assert loss["legend"] == ["train", "validation"] and len(loss["y_labels"]) >= 3, loss


def test_exp_run_with_set_param_changes_metrics_shown_by_metrics_diff(project):
    assert metrics_diff(project) == {}  # nothing changed yet
    sh(project, "dvc", "exp", "run", "--set-param", "train.epochs=5")
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"] == 5
    diff = metrics_diff(project)
    changed = {(path, key) for path, entries in diff.items() for key, entry in entries.items()
               if entry.get("diff") not in (None, 0)}
    # a model whose best validation epoch stays within the first two may score the same; most change
    assert len({path for path, _ in changed}) >= 2, f"too few metrics files changed: {diff}"
    assert any(key == "per_case.dice" for _, key in changed), f"no per-case Dice changed: {diff}"
    shown = sh(project, "dvc", "exp", "show", "--json").stdout
    assert '"epochs": 5' in shown.replace(" ", "").replace('"epochs":5', '"epochs": 5'), shown[-2000:]
    sh(project, "git", "checkout", "-q", "--", ".")
    sh(project, "dvc", "checkout", "-q")


def test_a_recipe_runs_as_one_experiment_that_exp_show_records(project):
    (project / "recipes").mkdir(exist_ok=True)
    (project / "recipes" / "tiny.yaml").write_text(yaml.safe_dump({"description": "two epochs, one dataset", "set": {
        "train.epochs": 2, "data.datasets": ["tumor_coco"], "train.augment.hflip": 0.0}}))
    sh(project, sys.executable, "-m", "btseg.recipes", "tiny", "-S", "train.batch_size=4")
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["recipe"] == "tiny" and params["train"]["epochs"] == 2 \
        and params["data"]["datasets"] == ["tumor_coco"]
    assert params["train"]["batch_size"] == 4  # a further -S after the recipe's wins
    shown = json.loads(sh(project, "dvc", "exp", "show", "--json").stdout)
    assert '"recipe": "tiny"' in json.dumps(shown)
    sh(project, "git", "checkout", "-q", "--", ".")
    sh(project, "dvc", "checkout", "-q")


def test_mistyped_set_param_is_refused(project):
    # DVC itself refuses a key that does not exist ...
    result = sh(project, "dvc", "exp", "run", "--set-param", "train.epochz=3", check=False)
    assert result.returncode != 0
    # ... and a key forced in with '+' is stopped by our validation, naming it
    result = sh(project, "dvc", "exp", "run", "--set-param", "+train.epochz=3", check=False)
    assert result.returncode != 0
    assert "train.epochz: unknown key; did you mean 'epochs'?" in result.stdout + result.stderr
    sh(project, "git", "checkout", "-q", "--", "params.yaml")


def summaries(shown, pairs: list[tuple[str, str]]) -> list[dict]:
    """dice.json of every row of `dvc exp show --json` (baselines and experiments) that scored all
    `pairs` (earlier tests' experiments may have run other datasets), in row order."""
    rows = []
    for baseline in shown:
        for state in [baseline] + [rev for exp in baseline.get("experiments") or [] for rev in exp["revs"]]:
            dice = ((state.get("data") or {}).get("metrics") or {}).get("dice.json", {}).get("data") or {}
            if all(model in dice.get(dataset, {}) for dataset, model in pairs):
                rows.append(dice)
    return rows


def test_queued_sweep_of_two_variants_runs_and_shows_both(project):
    sh(project, "dvc", "exp", "remove", "--all-commits")  # the table shows this sweep, not earlier tests' experiments
    for setting in ("train.epochs=3", "data.sample.seed=5"):  # other sample data: every pair's Dice moves
        sh(project, "dvc", "exp", "run", "--queue", "--set-param", setting)
    sh(project, "dvc", "queue", "start", "--jobs", "1")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = sh(project, "dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2, status
    shown = json.loads(sh(project, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert '"epochs": 3' in text.replace(" ", "").replace('"epochs":3', '"epochs": 3')
    assert '"seed": 5' in text.replace(" ", "").replace('"seed":5', '"seed": 5')
    assert text.count("per_case") >= 3  # baseline and both experiments carry metrics
    pairs = [(d, m) for d in ("brats2020", "tumor_coco") for m in ("unet", "resunet")]
    rows = summaries(shown, pairs)
    assert len(rows) >= 4  # workspace, baseline, two experiments
    assert all(len({row[d][m] for row in rows}) > 1 for d, m in pairs), rows  # so --only-changed keeps all four

    # an ordinary terminal: the table fits 200 columns with every dataset x model's per-case Dice in it
    env = {"COLUMNS": "200", "LINES": "50"}
    table = sh(project, "dvc", "exp", "show", "--only-changed", "--no-pager", env_extra=env).stdout
    lines = table.splitlines()
    assert lines and max(len(line) for line in lines) <= 200, table
    header = next(line for line in lines if "Experiment" in line).split()
    columns = [f"{d}.{m}" for d, m in pairs]
    assert columns[0] in header, table
    first = header.index(columns[0])  # after Experiment, Created (and State, Executor for queued runs)
    assert header[first:first + 4] == columns and not any(name.startswith("metrics/") for name in header[:first]), table
    printed = [" ".join(line.split()) for line in lines]
    for row in rows:  # every row's four values side by side, as DVC prints them (5 significant digits)
        values = " ".join(f"{row[d][m]:.5g}" for d, m in pairs)
        assert any(values in line for line in printed), (values, table)
    # and the README's narrower table: the Dice and the params that changed
    table = sh(project, "dvc", "exp", "show", "--only-changed", "--drop", "metrics/.*", "--no-pager",
               env_extra=env).stdout
    lines = table.splitlines()
    header = next(line for line in lines if "Experiment" in line).split()
    assert max(len(line) for line in lines) <= 200 and {"train.epochs", "data.sample.seed"} <= set(header), table
    sh(project, "dvc", "queue", "stop", check=False)


def test_second_machine_pulls_from_a_remote_and_has_nothing_to_rerun(project, tmp_path):
    remote = tmp_path / "remote"
    sh(project, "git", "checkout", "-q", "--", ".")
    sh(project, "dvc", "checkout", "-q")
    sh(project, "dvc", "remote", "add", "-d", "shared", str(remote))
    sh(project, "git", "commit", "-qam", "shared remote")
    sh(project, "dvc", "push")
    clone = tmp_path / "second-machine"
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    sh(clone, "dvc", "pull")
    status = sh(clone, "dvc", "status").stdout
    assert "up to date" in status.lower(), status
    repro = sh(clone, "dvc", "repro").stdout
    assert "Running stage" not in repro, repro
    for path in ("metrics/brats2020/unet.json", "models/tumor_coco/resunet/model.pt",
                 "data/slices/brats2020/train/images.npy"):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path
