"""`reptile-tf theory` end to end at the smoke budget on the synthetic parts, and small helpers."""

from __future__ import annotations

import csv

import pytest

from reptile_tf import runtime
from reptile_tf.cli import main
from reptile_tf.errors import UserError
from reptile_tf.theory.cli import parse_parts
from reptile_tf.theory.combinations import CombinationConfig, combination_weights, runs


def _read(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_cli_smoke_synthetic(tmp_path):
    out = tmp_path / "theory"
    code = main(["theory", "--out", str(out), "--budget", "smoke", "--seed", "0", "--synthetic-only",
                 "--parts", "taylor,coefficients,manifold"])
    assert code == 0
    readme = (out / "README.md").read_text()
    lines = readme.splitlines()
    fence = lines.index("```")
    assert fence < 6  # the exact command comes first
    assert f"Machine: {runtime.machine_summary()}." in readme
    assert lines[fence + 1] == (f"reptile-tf theory --out {out} --budget smoke --data-dir data/tfds --seed 0 "
                                "--parts taylor,coefficients,manifold --synthetic-only")
    taylor = _read(out / "taylor.csv")
    assert {"problem", "algorithm", "k", "slope", "zeroth_order_slope"} <= set(taylor[0])
    assert all(abs(float(r["slope"]) - 2) < 0.25 for r in taylor)
    coefficients = _read(out / "coefficients.csv")
    assert {"algorithm", "k", "alpha", "coef_avggrad", "coef_avggradinner", "expected_avggrad",
            "expected_avggradinner", "coef_avggrad_ci_low", "coef_avggradinner_ci_high"} <= set(coefficients[0])
    manifold = _read(out / "manifold.csv")
    assert [int(r["k"]) for r in manifold][0] == 1 and "distance_to_minimiser" in manifold[0]
    for name in ("taylor.png", "coefficients.png", "manifold.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_cli_rejects_unknown_parts():
    with pytest.raises(UserError):
        parse_parts("taylor,bogus")


def test_combination_weights():
    assert combination_weights("g1", 3) == [1.0, 0.0, 0.0]
    assert combination_weights("gk", 3) == [0.0, 0.0, 1.0]
    assert combination_weights("sum", 3) == [1.0, 1.0, 1.0]
    assert combination_weights("mean", 4) == [0.25] * 4
    with pytest.raises(UserError):
        combination_weights("median", 3)
    assert runs(CombinationConfig(ks=(2, 3)))[0] == ("g1", 1)
    assert len(runs(CombinationConfig(ks=(2, 3, 4)))) == 10
    with pytest.raises(UserError):
        runs(CombinationConfig(ks=(1, 2)))


def test_cli_combinations_checkpoint_into_the_state_and_remove_it_when_finished(tmp_path, omniglot_data_dir,
                                                                                monkeypatch):
    from reptile_tf.theory import cli as theory_cli

    out, state = tmp_path / "theory", tmp_path / "state"
    removed = []
    monkeypatch.setattr(theory_cli.shutil, "rmtree", lambda path, **_: removed.append(path))
    assert main(["theory", "--out", str(out), "--budget", "smoke", "--data-dir", str(omniglot_data_dir),
                 "--parts", "combinations", "--state", str(state)]) == 0
    curves = _read(out / "gradient_combinations.csv")
    assert sorted({(r["combination"], r["k"]) for r in curves}) == [("g1", "1"), ("gk", "2"), ("mean", "2"), ("sum", "2")]
    assert sorted(p.name for p in state.iterdir()) == ["g1_k1.json", "gk_k2.json", "mean_k2.json", "settings.json",
                                                      "sum_k2.json"]
    assert removed == [state]  # finished: the state goes, and a rerun measures anew
    readme = (out / "README.md").read_text()
    assert "| run | start | final | gain | mean |" in readme
    assert "| g1 alone (joint training) fails to learn" in readme  # the paper's claims, each checked
