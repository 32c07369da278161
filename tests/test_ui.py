"""The MLflow UI in a real browser (issue 13 item 5): headless Chromium on the smoke preset's store.

The store is made the way the smoke pipeline makes it (its grid: Omniglot 5-way 1-shot, Reptile,
FOMAML and MAML, seed 0; its stages: train -> evaluate -> `reptile-tf track --init` and
`reptile-tf track RUN_DIR --experiment smoke`), at a budget cut so that the test stays within
three minutes on a loaded 2-core machine (10 iterations, no periodic validation, 10 evaluation
tasks; the full smoke budget took over 2 minutes for Reptile alone there, mostly compiling).
`REPTILE_TF_UI_STORE=path/to/mlflow.db` checks an existing store instead, e.g. the smoke run's
(`.cache/smoke/results/mlflow/mlflow.db` after `make smoke`; tracked by this version of
`reptile-tf track`).

The UI is started by `make ui` (the target users run) and read by Debian's `chromium`
(`--headless --dump-dom`, `--screenshot`; installed with apt-get when missing, as `.ci/run`
does; no browser download). Checked, as rendered by the UI's JavaScript:

- the experiment's runs page: the experiment, its description and every setting (parent) run;
- a seed run's page: its name, parent run, the training's duration as MLflow formats it (from
  the run's start and end, which tracking takes from the training), the source commit, the
  training data set, the metrics (test accuracy, wall time) and the logged model;
- its artifacts page: config.json, eval.json, metrics.jsonl, learning_curve.png, checkpoint/,
  per_task/.

Screenshots of the three pages stay in `.cache/ui/` (gitignored) as CI artifacts, with the DOM
dumps. Never skipped: without chromium and no way to install it, the test fails and says why.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from reptile_tf import tracking
from reptile_tf.cli import main as cli_main

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "workflow" / "config" / "smoke.yaml").read_text())
OUT = ROOT / ".cache" / "ui"
EXPERIMENT = SMOKE["preset"]
# The smoke preset's budget and run options, cut to fit the test (see the module docstring).
BUDGET = {"iterations": 10, "eval_tasks": 10}
RUN_OPTIONS = {"log_every": 5, "checkpoint_every": 10, "val_every": 0}  # no validation: its tracing costs time
SERVER_START_TIMEOUT = 180
# Virtual time Chromium gives the page's scripts and requests before it dumps the DOM; a page whose
# data has not arrived yet is loaded again with more.
PAGE_BUDGETS_MS = (20_000, 45_000, 90_000)


# ------------------------------------------------------------------------------- browser


def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (as .ci/run does)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("chromium is missing and installing it needs root: `sudo apt-get install -y chromium`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"])
    for cmd in steps:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        if result.returncode != 0:
            pytest.fail(f"could not install chromium ({' '.join(cmd)}):\n{result.stdout[-2000:]}"
                        f"{result.stderr[-2000:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.fail("apt-get installed chromium but there is no `chromium` on PATH")
    return found


def page_text(dom: str) -> str:
    """The visible text of a DOM dump (scripts, styles and tags removed, whitespace collapsed)."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", html.unescape(text))


def render(browser: str, url: str, name: str, expected: list[str], profile: Path) -> str:
    """Load `url` headless; save its screenshot and DOM as .cache/ui/<name>.{png,html}; return its
    text once every `expected` string shows (loading again with more time), else fail naming the
    missing ones."""
    OUT.mkdir(parents=True, exist_ok=True)
    screenshot, dump = OUT / f"{name}.png", OUT / f"{name}.html"
    missing: list[str] = expected
    for budget in PAGE_BUDGETS_MS:
        screenshot.unlink(missing_ok=True)
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1920,1300",
               f"--virtual-time-budget={budget}", f"--screenshot={screenshot}", "--dump-dom", url]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=budget / 1000 + 120)
        dump.write_text(result.stdout)
        text = page_text(result.stdout)
        missing = [s for s in expected if s not in text]
        if result.returncode == 0 and not missing:
            assert screenshot.is_file() and screenshot.stat().st_size > 10_000, f"no screenshot of {url}"
            return text
    pytest.fail(f"{url} does not show {missing} (DOM: {dump}, screenshot: {screenshot}; chromium exit "
                f"{result.returncode}: {result.stderr[-1000:]})")


# ------------------------------------------------------------------------------- store and server


def smoke_store(tmp_path: Path, data_dir: Path, train_images) -> Path:
    """The smoke preset's runs, trained, evaluated and tracked as its pipeline does (cut budget)."""
    from reptile_tf import evaluate, train

    setting = SMOKE["grid"]["settings"][0]
    seed = SMOKE["grid"]["seeds"][0]
    store = tmp_path / "results" / "mlflow" / "mlflow.db"
    uri = f"sqlite:///{store}"
    assert cli_main(["track", "--init", "--experiment", EXPERIMENT, "--tracking-uri", uri]) == 0
    for algorithm in SMOKE["grid"]["algorithms"]:
        overrides = ((SMOKE["budget"].get("per_algorithm") or {}).get(algorithm) or {}).get("overrides") or {}
        settings = train.resolve_settings(algorithm, setting["dataset"], setting["ways"], setting["shots"],
                                          {**overrides, "iterations": BUDGET["iterations"]})
        run_dir = tmp_path / "runs" / EXPERIMENT / f"{setting['dataset']}_{setting['ways']}w{setting['shots']}s" / \
            algorithm / f"seed{seed}"
        train.train(settings, seed, run_dir, train.RunOptions(**RUN_OPTIONS), data_dir=data_dir, progress=False,
                    train_images=train_images)
        evaluate.evaluate_run(run_dir, tuple(SMOKE["grid"]["eval_modes"]), tasks=BUDGET["eval_tasks"],
                              data_dir=data_dir, progress=False)
        assert cli_main(["track", str(run_dir), "--experiment", EXPERIMENT, "--tracking-uri", uri]) == 0
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory, request) -> Path:
    given = os.environ.get("REPTILE_TF_UI_STORE")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"REPTILE_TF_UI_STORE={given} is not a file (an MLflow SQLite store, e.g. "
                        ".cache/smoke/results/mlflow/mlflow.db after `make smoke`)")
        return Path(given).resolve()
    data_dir = request.getfixturevalue("omniglot_data_dir")
    train_images = request.getfixturevalue("omniglot_train_images")
    return smoke_store(tmp_path_factory.mktemp("ui-smoke"), data_dir, train_images)


@pytest.fixture(scope="module")
def server(store, tmp_path_factory, free_port, stop_process_group):
    """`make ui` on the store, at a free port; stopped after the module."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("ui-server") / "server.log"
    log = open(log_path, "w+")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # `-o venv`: the virtualenv the tests run in is taken as it is (no pip install from here).
    cmd = ["make", "--no-print-directory", "-o", "venv", "ui", f"UI_STORE={store}", f"UI_PORT={port}",
           f"BIN={Path(sys.executable).parent}"]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"`{' '.join(cmd)}` exited ({process.returncode}): {log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the MLflow UI did not answer within {SERVER_START_TIMEOUT} s: "
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        stop_process_group(process)
        log.close()


def mlflow_duration(milliseconds: int) -> str:
    """A run's duration as the MLflow UI writes it (its Utils.formatDuration: 850ms, 28.7s, 1.1min,
    2.0h, 1.5d; JavaScript's toFixed rounds the exact binary value half up)."""
    from decimal import ROUND_HALF_UP, Decimal

    def fixed(value: float) -> str:
        return str(Decimal(value).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))

    if milliseconds < 500:
        return f"{milliseconds}ms"
    seconds = milliseconds / 1e3  # the same float divisions, in the same order, as the UI
    if milliseconds < 60_000:
        return fixed(seconds) + "s"
    if milliseconds < 3_600_000:
        return fixed(seconds / 60) + "min"
    if milliseconds < 86_400_000:
        return fixed(seconds / 60 / 60) + "h"
    return fixed(seconds / 60 / 60 / 24) + "d"


def js_number(value: float) -> str:
    """How JavaScript prints a float (shortest round trip, as Python's repr; no ".0" on integers)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


# ------------------------------------------------------------------------------- the test


def test_mlflow_ui_shows_the_experiment_its_runs_metrics_and_artifacts(store, server, tmp_path):
    browser = chromium()
    client = tracking.make_client(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no experiment {EXPERIMENT!r} in {store}"
    eid = experiment.experiment_id

    def runs(kind: str):
        return client.search_runs([eid], filter_string=f"tags.`{tracking.KIND_TAG}` = '{kind}'")

    parents, seeds = runs("setting"), runs("seed")
    assert len(parents) == len(SMOKE["grid"]["algorithms"]) == len(seeds)
    profile = tmp_path / "chromium-profile"

    # The experiment's runs page: the experiment, its description, every setting run.
    render(browser, f"{server}/#/experiments/{eid}/runs", "experiment_runs",
           [EXPERIMENT, "Training runs", "one parent run per setting", "every accuracy is in percent",
            *(p.info.run_name for p in parents)], profile)

    # A seed run: the training's duration, source commit, data set, metrics and model.
    seed = next(r for r in seeds if r.data.tags["algorithm"] == "reptile")
    parent = next(p for p in parents if p.info.run_id == seed.data.tags[tracking.PARENT_TAG])
    info = seed.info
    assert info.end_time and info.start_time
    duration = mlflow_duration(info.end_time - info.start_time)
    train_set = next(i.dataset for i in seed.inputs.dataset_inputs
                     if any(t.value == "training" for t in i.tags))
    commit = seed.data.tags["mlflow.source.git.commit"]
    text = render(browser, f"{server}/#/experiments/{eid}/runs/{info.run_id}", "seed_run",
                  [info.run_name, "Duration", duration, "Parent run", parent.info.run_name,
                   tracking.SOURCE_NAME, commit[:7], f"{train_set.name} ({train_set.digest})",
                   "test_accuracy_transductive", "test_ci95_non_transductive", "train_wall_time_s",
                   "train/accuracy", "Logged models", "test_tasks_transductive"], profile)
    # the training's duration: metrics.jsonl's wall times, not the tracking job's
    run_dir = Path(seed.data.tags[tracking.RUN_DIR_TAG])
    if run_dir.is_dir():
        walls = [json.loads(line)["wall_time"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert info.end_time == int(1000 * walls[-1])
    assert seed.data.metrics["train_wall_time_s"] == pytest.approx((info.end_time - info.start_time) / 1000, abs=0.01)
    accuracy = seed.data.metrics["test_accuracy_transductive"]
    assert 0 <= accuracy <= 100 and js_number(accuracy) in text  # in percent, as logged

    # Its artifacts.
    render(browser, f"{server}/#/experiments/{eid}/runs/{info.run_id}/artifacts", "seed_run_artifacts",
           ["config.json", "eval.json", "metrics.jsonl", "learning_curve.png", "checkpoint", "per_task"], profile)
