"""The `[hardware]` table of a policy file and the rules it builds."""

from __future__ import annotations

import pytest
from tests.attestation.vendor_vectors import SNP, at

from chiron.core.attestation.hardware_policy import HardwarePolicy
from chiron.core.attestation.hardware_verifier import HardwareInputs, verify_hardware_evidence
from chiron.core.attestation.policy import Policy
from chiron.core.errors import PolicyError

MEASUREMENT = "a" * 64


def parse(text: str) -> HardwarePolicy:
    return Policy.from_toml(text, default_measurement=MEASUREMENT, source="p.toml").hardware


def milan(policy: HardwarePolicy):
    return verify_hardware_evidence(
        HardwareInputs(
            "sev-snp",
            (SNP / "virtee_milan_v2/report.bin").read_bytes(),
            chain=(SNP / "virtee_milan_v2/vcek.der").read_bytes(),
        ),
        at=at("2024-01-01"),
        policy=policy,
    )


def test_defaults_are_safe():
    policy = parse("")
    assert policy == HardwarePolicy()
    assert not policy.UNSAFE_allow_debug and not policy.UNSAFE_allow_migration_agent
    assert policy.tcb_statuses == ("UpToDate",)


def test_full_table_parses():
    policy = parse(
        "[hardware]\n"
        f'launch_measurements = ["{"AB" * 48}"]\n'
        f'rtmr2 = ["{"01" * 48}"]\n'
        "min_snp_tcb = { snp = 8, microcode = 115 }\n"
        'tcb_statuses = ["UpToDate", "SWHardeningNeeded"]\n'
        "require_tcb_status = true\n"
        'chip_ids = ["d49554ec"]\n'
        'fmspcs = ["B0C06F000000"]\n'
        "max_collateral_age_seconds = 86400\n"
        "vmpls = [0]\n"
        "forbid_smt = true\n"
        "allow_debug = true\n"
    )
    assert policy.launch_measurements == ("ab" * 48,)
    assert policy.rtmrs[2] == ("01" * 48,)
    assert dict(policy.min_snp_tcb) == {"snp": 8, "microcode": 115}
    assert policy.fmspcs == ("b0c06f000000",)
    assert policy.UNSAFE_allow_debug


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hardware]\nalow_debug = true\n", "unknown key hardware.alow_debug"),
        ("hardware = 1\n", "hardware must be a table"),
        ('[hardware]\nlaunch_measurements = ["abcd"]\n', "96 lowercase hex digits"),
        ('[hardware]\nrtmr0 = ["zz"]\n', "not hex"),
        ("[hardware]\nmin_snp_tcb = { firmware = 1 }\n", "min_snp_tcb"),
        ('[hardware]\ntcb_statuses = ["Revoked"]\n', "tcb_statuses"),
        ("[hardware]\ntcb_statuses = []\n", "must not be empty"),
        ('[hardware]\nfmspcs = ["b0c06f"]\n', "12 lowercase hex digits"),
        ("[hardware]\nmax_collateral_age_seconds = 0\n", "positive"),
        ("[hardware]\nvmpls = [4]\n", "vmpls"),
        ('[hardware]\nallow_debug = "yes"\n', "true or false"),
    ],
)
def test_bad_tables_are_refused_naming_the_file(text, message):
    with pytest.raises(PolicyError, match=message) as error:
        parse(text)
    assert "p.toml" in str(error.value)


def test_snp_rules_on_a_real_report():
    assert milan(HardwarePolicy()).ok
    failing = HardwarePolicy(
        min_snp_tcb=(("snp", 9),),
        chip_ids=("00" * 64,),
        vmpls=(1,),
        launch_measurements=("00" * 48,),
    )
    result = milan(failing)
    assert {c.name for c in result.failures} == {
        "minimum tcb",
        "chip id allowed",
        "vmpl",
        "launch measurement",
    }
    claims = result.claims
    passing = HardwarePolicy(
        min_snp_tcb=(("snp", 8), ("microcode", 115)),
        chip_ids=(claims.chip_id,),
        vmpls=(0,),
        launch_measurements=(claims.measurement,),
    )
    assert milan(passing).ok


def test_migration_agent_refused_unless_unsafely_allowed():
    report = bytearray((SNP / "virtee_milan_v2/report.bin").read_bytes())
    report[0x08 + 2] |= 1 << 2  # POLICY.MIGRATE_MA (bit 18); breaks the signature too
    result = verify_hardware_evidence(
        HardwareInputs(
            "sev-snp", bytes(report), chain=(SNP / "virtee_milan_v2/vcek.der").read_bytes()
        ),
        at=at("2024-01-01"),
    )
    assert {c.name for c in result.failures} == {"signature", "migration agent"}
    unsafe = verify_hardware_evidence(
        HardwareInputs(
            "sev-snp", bytes(report), chain=(SNP / "virtee_milan_v2/vcek.der").read_bytes()
        ),
        at=at("2024-01-01"),
        policy=HardwarePolicy(UNSAFE_allow_migration_agent=True),
    )
    assert "unsafe policy" in unsafe.check("migration agent").reason
