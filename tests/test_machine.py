"""engine.machine: the CPU model, ISA features, CPUs and load average every benchmark prints."""

from __future__ import annotations

from engine.machine import MachineInfo, describe_machine, parse_cpuinfo

# Abbreviated /proc/cpuinfo of a two-core AMD Zen 3 VM: AVX2 and FMA, no AVX-512, no VNNI.
ZEN3_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
stepping\t: 0
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 \
ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid \
tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand \
hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext \
invpcid_single ssbd \
ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb \
sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr arat npt nrip_save umip vaes vpclmulqdq rdpid fsrm
bugs\t\t: sysret_ss_attrs null_seg spectre_v1 spectre_v2 spec_store_bypass srso
bogomips\t: 4899.99

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2
"""

# Abbreviated /proc/cpuinfo of an Intel Cascade Lake VM: AVX-512F and AVX-512 VNNI, no AVX-VNNI, no AMX.
CASCADE_LAKE_VNNI = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) CPU @ 2.80GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse \
sse2 ss \
ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni \
pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm \
abm 3dnowprefetch invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 hle avx2 \
smep bmi2 \
erms invpcid rtm mpx avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl xsaveopt \
xsavec xgetbv1 xsaves arat avx512_vnni md_clear arch_capabilities
"""

# An ARM kernel: no "model name", features under "Features".
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_avx2_cpu_without_vnni() -> None:
    model, flags = parse_cpuinfo(ZEN3_AVX2)
    assert model == "AMD EPYC 7B13"
    assert flags is not None and {"avx2", "fma"} <= flags and "avx512f" not in flags
    info = describe_machine(ZEN3_AVX2)
    assert info.cpu == "AMD EPYC 7B13"
    assert info.isa == ("avx2", "fma")
    assert not info.has_vnni
    assert info.isa_text == "ISA AVX2 FMA no VNNI"
    assert "AMD EPYC 7B13" in info.line() and "ISA AVX2 FMA no VNNI" in info.line()
    assert info.as_dict()["vnni"] is False


def test_vnni_cpu() -> None:
    info = describe_machine(CASCADE_LAKE_VNNI)
    assert info.cpu == "Intel(R) Xeon(R) CPU @ 2.80GHz"
    assert info.isa == ("avx2", "fma", "avx512f", "avx512_vnni")
    assert info.has_vnni
    assert info.isa_text == "ISA AVX2 FMA AVX-512F AVX-512 VNNI"
    assert "no VNNI" not in info.line()
    assert info.as_dict()["vnni"] is True


def test_first_processor_only() -> None:
    # The second processor block of ZEN3_AVX2 has fewer flags: the first one is read.
    _, flags = parse_cpuinfo(ZEN3_AVX2)
    assert flags is not None and "avx2" in flags


def test_no_flags_known() -> None:
    info = describe_machine("")
    assert not info.flags_known and info.isa == ()
    assert info.isa_text == "ISA unknown"
    assert info.as_dict()["vnni"] is None
    assert info.cpu  # the platform's word for the CPU, never empty


def test_arm_features_and_no_model_name() -> None:
    model, flags = parse_cpuinfo(ARM)
    assert model is None and flags is not None and "asimd" in flags
    info = describe_machine(ARM)
    assert info.flags_known and info.isa == ()
    assert info.isa_text == "ISA no VNNI"


def test_this_machine_line_and_round_trip() -> None:
    info = describe_machine()
    line = info.line()
    assert line.startswith("machine: ") and "logical CPUs" in line and "load average" in line
    assert info.logical_cpus >= 1 and 1 <= info.usable_cpus <= info.logical_cpus
    again = MachineInfo.from_dict(info.as_dict())
    assert again.isa == info.isa and again.cpu == info.cpu and again.has_vnni == info.has_vnni
