"""The client's attestation flow: fresh nonces, refusals, replay, services, enclave processes."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from chiron.client.attestation import (
    service_sim_roots,
    trust_sim_root_on_first_use,
    verify_enclave,
)
from chiron.client.remote import ServiceClient
from chiron.core.attestation import Policy
from chiron.core.encoding import b64encode
from chiron.core.errors import AttestationError, EnclaveError, ServiceError
from chiron.core.measurement import measure_runtime
from chiron.enclave.boundary import EnclaveProcess
from chiron.enclave.platforms.sim import SimFault, SimPlatform

from .conftest import MEASUREMENT


def test_verify_enclave_uses_a_fresh_nonce_and_returns_the_attested_keys(sim, sim_policy):
    nonces = []

    def source(nonce: bytes) -> bytes:
        nonces.append(nonce)
        return sim.evidence(nonce)

    first = verify_enclave(source, sim_policy, state_dir=sim.state_dir)
    second = verify_enclave(source, sim_policy, state_dir=sim.state_dir)
    assert first.identity == second.identity == sim.identity.public
    assert first.report.ok
    assert len(nonces) == 2 and nonces[0] != nonces[1] and len(nonces[0]) == 32


def test_a_replayed_report_is_refused(sim, sim_policy):
    recorded = sim.evidence(os.urandom(32))
    with pytest.raises(AttestationError, match=r"report data: .* replayed") as caught:
        verify_enclave(lambda nonce: recorded, sim_policy, state_dir=sim.state_dir)
    assert "\n" not in str(caught.value)


def test_simulated_evidence_is_refused_with_advice(sim):
    policy = Policy(measurements=(MEASUREMENT,))
    with pytest.raises(AttestationError) as caught:
        verify_enclave(sim.evidence, policy, state_dir=sim.state_dir)
    message = str(caught.value)
    assert "simulated" in message and "protects nothing against the host" in message
    assert "--allow-simulation" in message and "also failed" not in message


def test_the_refusal_lists_every_failing_check(sim):
    policy = Policy(measurements=("ab" * 32,), min_tcb=5)
    with pytest.raises(AttestationError) as caught:
        verify_enclave(lambda n: sim.evidence(n, SimFault.DEBUG), policy, state_dir=sim.state_dir)
    message = str(caught.value)
    for name in ("simulation", "measurement:", "debug:", "tcb:"):
        assert name in message


def test_local_roots_come_from_the_state_directory(sim, sim_policy, tmp_path):
    elsewhere = tmp_path / "another-installation"
    elsewhere.mkdir()
    with pytest.raises(AttestationError, match="root of trust: unknown root"):
        verify_enclave(sim.evidence, sim_policy, state_dir=elsewhere)


def test_the_sim_root_is_private_to_the_installation_and_shared_within_it(sim, sim_policy):
    directory = sim.state_dir / "sim-platform"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / "root.key").stat().st_mode & 0o777 == 0o600
    again = SimPlatform(sim.state_dir)  # e.g. a second enclave process

    def source(nonce: bytes) -> bytes:
        return again.evidence(
            measurement=MEASUREMENT,
            identity=sim.identity.public,
            nonce=nonce,
            role="train",
            binding="",
        )

    assert verify_enclave(source, sim_policy, state_dir=sim.state_dir).report.ok


class FakeService:
    """The service's attestation endpoints, answered by the sim platform."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.requests: list[httpx.Request] = []
        self.root_document = sim.root.to_document()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v1/attestation/evidence":
            nonce = bytes.fromhex(request.url.params["nonce"])
            return httpx.Response(200, json={"evidence": b64encode(self.sim.evidence(nonce))})
        if request.url.path == "/v1/attestation/sim-root":
            return httpx.Response(200, json=self.root_document)
        return httpx.Response(404, json={"detail": "not found"})


def attest_service(fake, state_dir, policy):
    with ServiceClient("http://chiron.test/", transport=httpx.MockTransport(fake)) as service:
        return verify_enclave(
            service.attestation_evidence,
            policy,
            state_dir=state_dir,
            sim_roots=service_sim_roots(service, state_dir, policy),
        )


def test_a_service_is_attested_and_its_sim_root_trusted_on_first_use(sim, sim_policy, tmp_path):
    client_state = tmp_path / "client"
    fake = FakeService(sim)
    attested = attest_service(fake, client_state, sim_policy)
    assert attested.identity == sim.identity.public
    assert [r.url.path for r in fake.requests] == [
        "/v1/attestation/evidence",
        "/v1/attestation/sim-root",
    ]
    assert len(list((client_state / "known-sim-roots").iterdir())) == 1
    # Second time: same root, accepted.
    assert attest_service(fake, client_state, sim_policy).report.ok
    # The service's root changes: refused until the user deletes the remembered one.
    fake.sim = type(sim)(tmp_path / "other-service")
    fake.root_document = fake.sim.root.to_document()
    with pytest.raises(AttestationError, match="changed since first use"):
        attest_service(fake, client_state, sim_policy)


def test_without_simulation_the_service_root_is_not_fetched(sim, tmp_path):
    fake = FakeService(sim)
    with pytest.raises(AttestationError, match=r"simulated .* \(also failed: root of trust"):
        attest_service(fake, tmp_path / "client", Policy(measurements=(MEASUREMENT,)))
    assert [r.url.path for r in fake.requests] == ["/v1/attestation/evidence"]


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(503), ServiceError),
        (httpx.Response(200, text="<html>"), ServiceError),
        (httpx.Response(200, json={"evidence": "***"}), ServiceError),
        (httpx.Response(200, json={"evidence": b64encode(b"junk")}), AttestationError),
    ],
)
def test_bad_service_answers_are_one_line_errors(tmp_path, sim_policy, response, error):
    transport = httpx.MockTransport(lambda request: response)
    with ServiceClient("http://chiron.test", transport=transport) as service:
        with pytest.raises(error) as caught:
            verify_enclave(service.attestation_evidence, sim_policy, state_dir=tmp_path)
    assert str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_service_sim_root_is_refused(sim, sim_policy, tmp_path):
    fake = FakeService(sim)
    fake.root_document = {"type": "something else"}
    with pytest.raises(AttestationError, match="not a valid simulation root"):
        attest_service(fake, tmp_path / "client", sim_policy)


def test_a_corrupt_remembered_root_is_reported(sim, tmp_path):
    state = tmp_path / "client"
    trust_sim_root_on_first_use(state, "http://a", sim.root)
    (remembered,) = (state / "known-sim-roots").iterdir()
    remembered.write_text("{")
    with pytest.raises(AttestationError, match="not a valid simulation root"):
        trust_sim_root_on_first_use(state, "http://a", sim.root)


def test_a_real_enclave_process_is_attested(tmp_path):
    policy = Policy(measurements=(measure_runtime().hex,), UNSAFE_allow_simulation=True)
    with EnclaveProcess.start(role="train", state_dir=tmp_path) as enclave:
        attested = verify_enclave(
            lambda nonce: enclave.call("attest", {"nonce": nonce})["evidence"],
            policy,
            state_dir=tmp_path,
        )
        # The enclave checks the nonce it is given.
        with pytest.raises(AttestationError, match="16 to 64 bytes"):
            enclave.call("attest", {"nonce": b"x" * 65})
    assert attested.report.ok and attested.report.simulated


def test_an_enclave_on_an_unknown_platform_says_so(tmp_path):
    with EnclaveProcess.start(role="train", state_dir=tmp_path, platform="sgx9") as enclave:
        with pytest.raises(EnclaveError, match="unknown enclave platform 'sgx9'"):
            enclave.call("attest", {"nonce": os.urandom(16)})


def test_an_enclave_that_does_not_answer_is_a_one_line_error(tmp_path, sim_policy):
    enclave = EnclaveProcess.start(role="train", state_dir=tmp_path)
    try:
        os.kill(enclave.pid, signal.SIGSTOP)
        with pytest.raises(EnclaveError, match="did not answer") as caught:
            verify_enclave(
                lambda nonce: enclave.call("attest", {"nonce": nonce}, timeout=0.5)["evidence"],
                sim_policy,
                state_dir=tmp_path,
            )
        assert "\n" not in str(caught.value)
    finally:
        enclave.kill()
