"""Hardware rules: what a vendor-verified TDX quote or SEV-SNP report may say.

A policy file's `[hardware]` table becomes a `HardwarePolicy` (launch measurement,
RTMRs, TCB levels and statuses, debug, chip or platform family, collateral age,
migration agent, VMPL, SMT); its `checks()` is a tree of `HardwareCheck`s over
`HardwareClaims`, composed like every other policy (`checks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.core.attestation.checks import AllOf, AnyOf, Check, DebugDisabled, UNSAFE_DebugAllowed
from chiron.core.attestation.event_log import RTMR_COUNT
from chiron.core.attestation.hardware_checks import (
    ChipIdIs,
    FmspcIs,
    LaunchMeasurementIs,
    MaxCollateralAge,
    MigrationAgentRefused,
    MinimumSnpTcb,
    RtmrIs,
    SmtDisabled,
    TcbStatusIn,
    UNSAFE_MigrationAgentAllowed,
    VmplIn,
)
from chiron.core.attestation.policy_fields import boolean, string_list
from chiron.core.attestation.tdx_collateral import (
    MAX_COLLATERAL_BYTES,
    STATUS_ORDER,
    parse_collateral,
)
from chiron.core.attestation.vendor_crypto import MAX_CERTIFICATE_FILE_BYTES, load_certificates
from chiron.core.errors import InputError, PolicyError
from chiron.core.fileio import read_input_file

# Intel's TCB statuses. "Revoked" is never acceptable; the rest describe a platform
# whose TCB Intel knows, from current to one with published, unmitigated weaknesses.
TCB_STATUSES = tuple(status for status in STATUS_ORDER if status != "Revoked")
DEFAULT_TCB_STATUSES = ("UpToDate",)
SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


_HARDWARE_KEYS = {
    "launch_measurements",
    *(f"rtmr{index}" for index in range(RTMR_COUNT)),
    "min_snp_tcb",
    "tcb_statuses",
    "require_tcb_status",
    "chip_ids",
    "fmspcs",
    "max_collateral_age_seconds",
    "vmpls",
    "forbid_smt",
    "allow_debug",
    "allow_migration_agent",
    "chain",
    "collateral",
}


@dataclass(frozen=True)
class HardwarePolicy:
    """Rules on a TDX quote or SEV-SNP report once its vendor signature verified.

    Empty tuples mean "any". The defaults refuse debug guests, SNP guests with a
    migration agent, and TDX platforms whose TCB status is not UpToDate.
    """

    launch_measurements: tuple[str, ...] = ()
    rtmrs: tuple[tuple[str, ...], ...] = ((), (), (), ())  # accepted values per RTMR
    min_snp_tcb: tuple[tuple[str, int], ...] = ()
    tcb_statuses: tuple[str, ...] = DEFAULT_TCB_STATUSES
    require_tcb_status: bool = False
    chip_ids: tuple[str, ...] = ()
    fmspcs: tuple[str, ...] = ()
    max_collateral_age_seconds: int | None = None
    vmpls: tuple[int, ...] = ()
    forbid_smt: bool = False
    UNSAFE_allow_debug: bool = False
    UNSAFE_allow_migration_agent: bool = False
    # Vendor material for `chiron attest` (read from the files the table names): SNP
    # certificates used when the evidence brings no VCEK/VLEK of its own, and the TDX
    # collateral (QuoteCollateralV3 JSON) quotes are judged by.
    chain: bytes | None = field(default=None, repr=False)
    collateral: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for value in self.launch_measurements:
            _check_hex(value, 48, "launch_measurements")
        if len(self.rtmrs) != RTMR_COUNT:
            raise PolicyError(f"rtmrs must list {RTMR_COUNT} registers")
        for index, values in enumerate(self.rtmrs):
            for value in values:
                _check_hex(value, 48, f"rtmr{index}")
        for name, level in self.min_snp_tcb:
            if name not in SNP_TCB_COMPONENTS or not 0 <= level <= 255:
                raise PolicyError(
                    f"min_snp_tcb: {name} must be one of {', '.join(SNP_TCB_COMPONENTS)}, 0 to 255"
                )
        if not self.tcb_statuses or not set(self.tcb_statuses) <= set(TCB_STATUSES):
            raise PolicyError(
                f"tcb_statuses must be a non-empty subset of {', '.join(TCB_STATUSES)}"
            )
        for value in self.chip_ids:
            _check_hex(value, None, "chip_ids")
        for value in self.fmspcs:
            _check_hex(value, 6, "fmspcs")
        if self.max_collateral_age_seconds is not None and self.max_collateral_age_seconds <= 0:
            raise PolicyError("max_collateral_age_seconds must be positive")
        if not set(self.vmpls) <= {0, 1, 2, 3}:
            raise PolicyError("vmpls must be among 0, 1, 2, 3")

    def rules(self, *, debug: bool = True) -> AllOf:
        """The rule tree this policy stands for.

        `debug=False` leaves out the debug rule, for a caller whose own policy already
        judges the same bit (`chiron attest`: the top-level `allow_debug`).
        """
        checks: list[Check] = []
        if debug:
            checks.append(UNSAFE_DebugAllowed() if self.UNSAFE_allow_debug else DebugDisabled())
        checks += [
            UNSAFE_MigrationAgentAllowed()
            if self.UNSAFE_allow_migration_agent
            else MigrationAgentRefused(),
            TcbStatusIn(self.tcb_statuses, self.require_tcb_status),
        ]
        if self.launch_measurements:
            checks.append(
                AnyOf(
                    "launch measurement",
                    *(LaunchMeasurementIs(value) for value in self.launch_measurements),
                )
            )
        for index, values in enumerate(self.rtmrs):
            if values:
                checks.append(AnyOf(f"rtmr{index}", *(RtmrIs(index, value) for value in values)))
        if self.min_snp_tcb:
            checks.append(MinimumSnpTcb(self.min_snp_tcb))
        if self.chip_ids:
            checks.append(AnyOf("chip id allowed", *(ChipIdIs(value) for value in self.chip_ids)))
        if self.fmspcs:
            checks.append(AnyOf("fmspc allowed", *(FmspcIs(value) for value in self.fmspcs)))
        if self.max_collateral_age_seconds is not None:
            checks.append(MaxCollateralAge(self.max_collateral_age_seconds))
        if self.vmpls:
            checks.append(VmplIn(self.vmpls))
        if self.forbid_smt:
            checks.append(SmtDisabled())
        return AllOf(*checks)

    def pins_anything(self) -> bool:
        """True if the policy restricts more than the defaults (debug, migration, status)."""
        return bool(
            self.launch_measurements
            or any(self.rtmrs)
            or self.min_snp_tcb
            or self.require_tcb_status
            or self.chip_ids
            or self.fmspcs
            or self.max_collateral_age_seconds is not None
            or self.vmpls
            or self.forbid_smt
        )

    @classmethod
    def from_table(
        cls, table: object, source: str, *, base_dir: Path | None = None
    ) -> HardwarePolicy:
        """Parse the `[hardware]` table of a policy file; unknown keys are errors.

        `chain` and `collateral` name files, relative to `base_dir`; they are read and
        checked for form here, so a wrong path or a foreign file fails at load.
        """
        if not isinstance(table, dict):
            raise PolicyError(f"{source}: hardware must be a table")
        unknown = sorted(set(table) - _HARDWARE_KEYS)
        if unknown:
            raise PolicyError(
                f"{source}: unknown key {', '.join('hardware.' + key for key in unknown)} "
                f"(known: {', '.join(sorted(_HARDWARE_KEYS))})"
            )
        where = f"{source}: hardware"
        min_tcb = table.get("min_snp_tcb", {})
        if not isinstance(min_tcb, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in min_tcb.values()
        ):
            raise PolicyError(f"{where}.min_snp_tcb must be a table of integers")
        vmpls = table.get("vmpls", [])
        if not isinstance(vmpls, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in vmpls
        ):
            raise PolicyError(f"{where}.vmpls must be a list of integers")
        max_age = table.get("max_collateral_age_seconds")
        if max_age is not None and (not isinstance(max_age, int) or isinstance(max_age, bool)):
            raise PolicyError(f"{where}.max_collateral_age_seconds must be an integer")
        chain = _vendor_file(table, "chain", where, base_dir)
        collateral = _vendor_file(table, "collateral", where, base_dir)
        try:
            return cls(
                launch_measurements=_hex_list(table, "launch_measurements", where),
                rtmrs=tuple(_hex_list(table, f"rtmr{i}", where) for i in range(RTMR_COUNT)),
                min_snp_tcb=tuple(sorted(min_tcb.items())),
                tcb_statuses=tuple(string_list(table, "tcb_statuses", where, DEFAULT_TCB_STATUSES)),
                require_tcb_status=boolean(table, "require_tcb_status", where),
                chip_ids=_hex_list(table, "chip_ids", where),
                fmspcs=_hex_list(table, "fmspcs", where),
                max_collateral_age_seconds=max_age,
                vmpls=tuple(vmpls),
                forbid_smt=boolean(table, "forbid_smt", where),
                UNSAFE_allow_debug=boolean(table, "allow_debug", where),
                UNSAFE_allow_migration_agent=boolean(table, "allow_migration_agent", where),
                chain=chain,
                collateral=collateral,
            )
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None


def _vendor_file(
    table: dict[str, Any], key: str, where: str, base_dir: Path | None
) -> bytes | None:
    """The bytes of the vendor file `key` names, checked for form (certificates, collateral)."""
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{where}.{key} must be a file path")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    limit = MAX_CERTIFICATE_FILE_BYTES if key == "chain" else MAX_COLLATERAL_BYTES
    try:
        data = read_input_file(path, what=f"{key} file", limit=limit)
        if key == "chain":
            load_certificates(data, source=str(path))
        else:
            parse_collateral(data, source=str(path))
    except InputError as exc:
        raise PolicyError(f"{where}.{key}: {exc}") from None
    return data


def _hex_list(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    if key not in table:
        return ()
    return tuple(value.lower() for value in string_list(table, key, where, ()))


def _check_hex(value: str, size: int | None, key: str) -> None:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise PolicyError(f"{key}: {value!r} is not hex") from None
    if value != value.lower() or not raw or (size is not None and len(raw) != size):
        expected = f"{size * 2} lowercase hex digits" if size else "lowercase hex"
        raise PolicyError(f"{key}: {value!r} is not {expected}")
