"""TDX quotes from real machines: signatures, PCK chain, offline collateral, event log."""

from __future__ import annotations

import json

import pytest
from tests.attestation.vendor_vectors import TDX, at, flip, read

from chiron.core.attestation.hardware_policy import HardwarePolicy
from chiron.core.attestation.hardware_verifier import HardwareInputs, verify_hardware_evidence
from chiron.core.attestation.tdx import HEADER_BYTES, parse_quote
from chiron.core.errors import InputError, UsageError

COLLATERAL_2023 = TDX / "gotdxguest/collateral_v3_dcapqvl_format_2023-06.json"
UP_TO_DATE = (TDX / "dcapqvl/tdx_quote", TDX / "dcapqvl/tdx_quote_collateral.json", "2025-06-20")
CCEL = TDX / "gotdxguest/ccel"


def verify(quote: bytes, collateral=None, when="2026-01-01", event_log=None, policy=None):
    return verify_hardware_evidence(
        HardwareInputs(
            "tdx",
            quote,
            collateral=collateral.read_bytes() if collateral else None,
            event_log=event_log,
        ),
        at=at(when),
        policy=policy,
    )


def failed(result) -> dict[str, str]:
    return {check.name: check.reason for check in result.checks if not check.passed}


def test_up_to_date_quote_with_collateral_is_accepted():
    quote, collateral, when = UP_TO_DATE
    result = verify(read(quote), collateral, when)
    assert failed(result) == {}
    assert result.ok
    assert result.claims.tcb_status == "UpToDate"
    assert result.claims.fmspc == "b0c06f000000"
    names = {c.name for c in result.checks}
    assert {
        "quote signature",
        "attestation key",
        "certificate chain",
        "qe report signature",
        "tcbInfo signature",
        "enclaveIdentity signature",
        "collateral validity",
        "revocation",
        "tcb level",
        "qe identity",
        "tdx module",
        "tcb status",
        "debug",
    } <= names


@pytest.mark.parametrize(
    ("quote", "collateral", "when"),
    [
        ("dcapqvl/tdx_quote_outdated", "dcapqvl/tdx_quote_outdated_collateral.json", "2026-02-19"),
        ("gotdxguest/tdx_prod_quote_SPR_E4.dat", COLLATERAL_2023.name, "2023-07-01"),
    ],
)
def test_no_matching_tcb_level_is_refused(quote, collateral, when):
    path = TDX / collateral if "/" in collateral else COLLATERAL_2023
    result = verify(read(TDX / quote), path, when)
    assert list(failed(result)) == ["tcb level"]
    assert "no matching TCB level" in failed(result)["tcb level"]
    assert not result.ok and result.claims.tcb_status is None


def test_v5_quote_is_read():
    quote = parse_quote(read(TDX / "dcapqvl/tdx_quote_outdated"))
    assert quote.version == 5
    assert len(quote.body) == 648


def test_debug_td_is_refused():
    result = verify(read(TDX / "trustee/tdx_quote_4.dat"), COLLATERAL_2023, "2023-07-01")
    assert result.claims.debug
    assert list(failed(result)) == ["debug"]
    allowed = verify(
        read(TDX / "trustee/tdx_quote_4.dat"),
        COLLATERAL_2023,
        "2023-07-01",
        policy=HardwarePolicy(UNSAFE_allow_debug=True),
    )
    assert allowed.ok
    assert "DEBUG" in allowed.check("debug").reason


@pytest.mark.parametrize(
    ("quote", "when"),
    [
        ("trustee/tdx_quote_6.dat", "2025-11-01"),
        ("dcapqvl/tdx-quote.hex", "2026-01-01"),
        ("dcapqvl/quote-from-tappd.hex", "2026-01-01"),
        ("gotdxguest/ccel/cos-113-tdx-quote.dat", "2026-01-01"),
    ],
)
def test_signature_and_chain_without_collateral(quote, when):
    result = verify(read(TDX / quote), when=when)
    assert failed(result) == {}
    assert result.claims.tcb_status is None
    for name in ("quote signature", "attestation key", "certificate chain", "qe report signature"):
        assert result.check(name).passed
    # Without collateral the TCB is unknown: a policy may insist on knowing it.
    strict = verify(read(TDX / quote), when=when, policy=HardwarePolicy(require_tcb_status=True))
    assert list(failed(strict)) == ["tcb status"]


def test_event_log_reproduces_the_rtmrs():
    log = (CCEL / "ccel_data.dat").read_bytes()
    result = verify(read(CCEL / "cos-113-tdx-quote.dat"), event_log=log)
    assert result.check("event log").passed
    assert "reproduce RTMR0..3" in result.check("event log").reason
    assert len(result.claims.rtmrs) == 4


def test_event_log_of_another_td_is_refused():
    log = (CCEL / "ccel_data.dat").read_bytes()
    result = verify(read(TDX / "dcapqvl/tdx-quote.hex"), event_log=log)
    assert list(failed(result)) == ["event log"]


def test_tampered_event_log_is_refused():
    log = bytearray((CCEL / "ccel_data.dat").read_bytes())
    first_event = 32 + int.from_bytes(log[28:32], "little")
    digest = first_event + 4 + 4 + 4 + 2  # MR index, type, count, algorithm id
    log[digest] ^= 1
    result = verify(read(CCEL / "cos-113-tdx-quote.dat"), event_log=bytes(log))
    assert "event log" in failed(result)


def _body(quote: bytes) -> int:
    return HEADER_BYTES + (6 if quote[0] == 5 else 0)


@pytest.mark.parametrize(
    ("what", "where", "check"),
    [
        ("MRTD", lambda q: _body(q) + 136, "quote signature"),
        ("RTMR0", lambda q: _body(q) + 328, "quote signature"),
        ("report data", lambda q: _body(q) + 520, "quote signature"),
        ("signature", lambda q: _body(q) + 584 + 4, "quote signature"),
        ("QE report", lambda q: _body(q) + 584 + 4 + 128 + 6 + 10, "qe report signature"),
    ],
)
def test_one_flipped_bit_is_refused_by_the_named_check(what, where, check):
    quote, collateral, when = UP_TO_DATE
    data = read(quote)
    result = verify(flip(data, where(data)), collateral, when)
    assert check in failed(result), what
    assert not result.ok


def test_flipped_bit_in_the_pck_certificate_breaks_the_chain():
    quote, collateral, when = UP_TO_DATE
    data = read(quote)
    pem = data.index(b"-----BEGIN CERTIFICATE-----")
    mutated = bytearray(data)
    # A base64 letter inside the PCK's signature, swapped for another valid one.
    spot = data.index(b"-----END CERTIFICATE-----") - 10
    mutated[spot] = ord("A") if data[spot] != ord("A") else ord("B")
    assert pem < spot
    result = verify(bytes(mutated), collateral, when)
    assert "certificate chain" in failed(result)


def test_altered_tcb_info_is_refused(tmp_path):
    quote, collateral, when = UP_TO_DATE
    document = json.loads(collateral.read_text())
    document["tcb_info"] = document["tcb_info"].replace('"OutOfDate"', '"UpToDate"')
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps(document))
    result = verify(read(quote), altered, when)
    assert "tcbInfo signature" in failed(result)
    assert result.claims.tcb_status is None


def test_collateral_out_of_date_at_the_verification_time():
    quote, collateral, _ = UP_TO_DATE
    result = verify(read(quote), collateral, "2025-09-01")
    assert "collateral validity" in failed(result)
    assert result.claims.tcb_status is None


def test_collateral_age_limit():
    quote, collateral, when = UP_TO_DATE
    ok = verify(
        read(quote), collateral, when, policy=HardwarePolicy(max_collateral_age_seconds=2 * 86400)
    )
    assert ok.ok
    stale = verify(
        read(quote), collateral, when, policy=HardwarePolicy(max_collateral_age_seconds=3600)
    )
    assert list(failed(stale)) == ["collateral age"]


def test_policy_pins_mrtd_rtmrs_and_fmspc():
    quote, collateral, when = UP_TO_DATE
    first = verify(read(quote), collateral, when)
    claims = first.claims
    pinned = HardwarePolicy(
        launch_measurements=(claims.measurement,),
        rtmrs=tuple((value,) for value in claims.rtmrs),
        fmspcs=(claims.fmspc,),
    )
    assert verify(read(quote), collateral, when, policy=pinned).ok
    other = HardwarePolicy(
        launch_measurements=("00" * 48,), rtmrs=((), (), (), ("11" * 48,)), fmspcs=("00606a000000",)
    )
    assert set(failed(verify(read(quote), collateral, when, policy=other))) == {
        "launch measurement",
        "rtmr3",
        "fmspc allowed",
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated TDX quote"),
        (b"garbage" * 10, "not a TDX quote"),
        (bytes.fromhex("0300020081000000") + bytes(1000), "unsupported TDX quote version 3"),
    ],
)
def test_malformed_quotes_are_refused(data, message):
    with pytest.raises(InputError, match=message):
        verify(data)


def test_chain_option_is_for_snp_only():
    with pytest.raises(UsageError):
        verify_hardware_evidence(
            HardwareInputs("tdx", read(UP_TO_DATE[0]), chain=b"x"), at=at("2025-06-20")
        )
