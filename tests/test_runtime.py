"""reptile_tf.runtime: the bfloat16 note on CPUs and the precision policy."""

import tensorflow as tf

from reptile_tf import runtime


def _cpu(monkeypatch, flags):
    monkeypatch.setattr(runtime, "cpu_info", lambda: {"model": "test CPU", "flags": list(flags), "machine": "x86_64",
                                                      "cores": 2})


def test_bfloat16_note_with_bf16_instructions_says_measured_no_faster(monkeypatch):
    _cpu(monkeypatch, ["avx2", "avx512f", "avx512_bf16"])
    note = runtime.bfloat16_cpu_note()
    assert "avx512_bf16" in note and "at most about 1.2x the float32 speed" in note
    assert "mixed_precision.md" in note and "within the seed spread" in note


def test_bfloat16_note_without_bf16_instructions_says_slower(monkeypatch):
    _cpu(monkeypatch, ["avx2", "fma"])
    note = runtime.bfloat16_cpu_note()
    assert "without bfloat16 instructions" in note and "expect it slower than float32" in note


def test_precision_policy_sets_and_restores_bfloat16_and_says_why_once(monkeypatch, capsys):
    _cpu(monkeypatch, ["avx2"])
    runtime._say_once.cache_clear()
    before = tf.keras.mixed_precision.global_policy().name
    for _ in range(2):
        with runtime.precision_policy(True):
            assert tf.keras.mixed_precision.global_policy().compute_dtype == "bfloat16"
        assert tf.keras.mixed_precision.global_policy().name == before
    assert capsys.readouterr().err.count("without bfloat16 instructions") == 1


def test_float32_policy_says_nothing(capsys):
    with runtime.precision_policy(False):
        pass
    assert capsys.readouterr().err == ""


def test_machine_summary_names_cpu_class_and_onednn_state():
    info = {"cpu_model": "AMD EPYC (family 25 model 1 stepping 1)", "cpu_class": "avx2", "onednn": False,
            "device": "CPU"}
    assert runtime.machine_summary(info) == "AMD EPYC (family 25 model 1 stepping 1), class avx2, oneDNN off, CPU"
    assert runtime.machine_summary(info | {"onednn": None}).endswith("oneDNN n/a, CPU")
