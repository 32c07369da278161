"""reptile_tf.cpu: reading /proc/cpuinfo and naming the CPU class."""

from reptile_tf import cpu

ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni avx_vnni
processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu
"""

ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes
CPU implementer\t: 0x41
"""


def test_parse_cpuinfo_reads_the_first_cpu():
    name, ids, flags = cpu.parse_cpuinfo(ZEN5)
    assert name == "AMD EPYC"
    assert ids == {"cpu family": "26", "model": "2", "stepping": "1"}
    assert {"avx512f", "avx512_bf16", "avx2"} <= flags


def test_model_string_tells_apart_cpus_with_the_same_bare_name():
    # Zen 4 and Zen 5 EPYCs both report "AMD EPYC": the autotuner's cache must not mix them.
    zen4 = cpu.with_cpu_ids("AMD EPYC", {"cpu family": "25", "model": "17", "stepping": "1"})
    zen5 = cpu.with_cpu_ids("AMD EPYC", cpu.parse_cpuinfo(ZEN5)[1])
    assert zen5 == "AMD EPYC (family 26 model 2 stepping 1)"
    assert zen4 != zen5


def test_without_ids_the_name_stays_bare():
    name, ids, flags = cpu.parse_cpuinfo(ARM)
    assert name is None and ids == {}
    assert "asimd" in flags
    assert cpu.with_cpu_ids("aarch64", ids) == "aarch64"


def test_cpu_class_follows_the_flags(monkeypatch):
    for flags, expected in ((["avx2", "avx512f", "amx_bf16"], "amx"), (["avx2", "avx512f"], "avx512"),
                            (["avx2", "fma"], "avx2"), ([], "aarch64")):
        monkeypatch.setattr(cpu, "cpu_info", lambda flags=flags: {"model": "m", "flags": flags,
                                                                   "machine": "aarch64", "cores": 2})
        assert cpu.cpu_class() == expected
