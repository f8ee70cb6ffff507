"""Where the owner's enclaves run, built once from options, and the flows that use them.

The `chiron` command line and the Python SDK (`chiron.connect`) share this module: both
turn their options into a `Target` (enclave processes on this machine, a Chiron
service, or node agents behind a torchrun rendezvous) and train or open a model through
the same code, so a check added here holds for both. Nothing here prints: progress
reaches the caller as (step, total), failures as one-line `ChironError`s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chiron.client import options
from chiron.client.attestation import SimRootSource, load_policy, service_sim_roots
from chiron.client.distributed import (
    train_locally,
    train_through_rendezvous,
)
from chiron.client.job_inputs import check_dataset_key, load_local_recipe
from chiron.client.jobs import train_on_host
from chiron.client.key_release import AgentShareSource
from chiron.client.querying import UnlockedModel, unlock_model
from chiron.client.remote import RemoteQuerySession, ServiceClient
from chiron.client.sessions import EnclaveSession, EventHandler, JobHost, LocalEnclaveSession
from chiron.client.statements import load_statement
from chiron.client.training import TrainOutcome, check_provider
from chiron.core.attestation import Policy
from chiron.core.errors import JobFailed, UsageError
from chiron.core.fileio import read_input_file
from chiron.core.keys import PublicIdentity, load_identity
from chiron.core.limits import CALL_SILENCE_SECONDS
from chiron.core.manifest import Plan
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.core.roles import Role

if TYPE_CHECKING:  # the host's code loads only when this machine runs a job
    from chiron.host.enclaves import ManagedEnclave
    from chiron.host.local import LocalHost

ProgressHandler = Callable[[int, int], None]


@dataclass(frozen=True)
class Target:
    """Where enclaves run and how their evidence is judged; close it when done.

    `service` is set for a Chiron service (`--url`), `rendezvous` for node agents
    (`--rendezvous`); with neither, enclaves are processes on this machine (`--local`).
    """

    policy: Policy
    state_dir: Path
    service: ServiceClient | None = None
    rendezvous: str | None = None
    # A training enclave this machine started with the target (`open_target(
    # train_ahead=True)`), for the one job about to be sent; taken by that job.
    _ahead: list[LocalEnclaveSession] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    @property
    def local(self) -> bool:
        return self.service is None and self.rendezvous is None

    def take_training_enclave(self) -> LocalEnclaveSession | None:
        """The training enclave started with the target, once; None after that."""
        return self._ahead.pop() if self._ahead else None

    def sim_roots(self) -> SimRootSource | None:
        """A service's simulation root (trusted on first use); local roots otherwise."""
        if self.service is None:
            return None
        return service_sim_roots(self.service, self.state_dir, self.policy)

    def close(self) -> None:
        # Nothing was sent to an enclave never taken: stopped at once, not asked to shut
        # down (it would answer only once it has measured itself and started its child).
        while self._ahead:
            self._ahead[-1].kill()
            self._ahead.pop()
        if self.service is not None:
            self.service.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_target(
    *,
    local: bool,
    url: str | None,
    token: str | None,
    allow_simulation: bool,
    policy_file: Path | None,
    state_dir: Path | None,
    rendezvous: str | None = None,
    train_ahead: bool = False,
) -> Target:
    """The one target the options name; a UsageError unless they name exactly one.

    `train_ahead`: a local target starts the training enclave for the job about to be
    sent before anything else, even before it loads the policy (which measures this
    installation), so that the enclave measures itself and its sandbox imports torch
    meanwhile. Nothing reaches the enclave before the policy has judged its evidence.
    """
    require_one_target(local, url, rendezvous)
    state = state_dir or options.default_state_dir()
    ahead = None
    if train_ahead and url is None and rendezvous is None:
        ahead = LocalEnclaveSession(Role.TRAIN, state, sandbox_at_start=True)
    try:
        policy = load_policy(policy_file, allow_simulation=allow_simulation)
        service = ServiceClient(url, token) if url is not None else None
    except BaseException:
        if ahead is not None:
            ahead.kill()
        raise
    target = Target(policy, state, service, rendezvous)
    if ahead is not None:
        target._ahead.append(ahead)
    return target


def require_one_target(local: bool, url: str | None, rendezvous: str | None = None) -> None:
    """Exactly one of --local, --url and (for training) --rendezvous."""
    if rendezvous is None:
        options.require_one_target(local, url)
    elif local or url is not None:
        raise UsageError("give exactly one of --local, --url URL or --rendezvous HOST:PORT")


@dataclass(frozen=True)
class Trained:
    """A verified training result (and, with several workers, what their wires carried)."""

    outcome: TrainOutcome
    wire_traces: dict[str, list[dict[str, Any]]] | None = None


def train(
    target: Target,
    *,
    recipe: str | None,
    statement_path: Path | None,
    dataset: Path,
    data_key_path: Path,
    owner_key: Path,
    provider: PublicIdentity | None,
    plan: Plan,
    on_progress: ProgressHandler | None = None,
    upload_progress: bool = False,
) -> Trained:
    """Train on `target`: attest, sign the manifest, release the key, check the result.

    `recipe` is a file on this machine, a recipe registered with the service, or None
    with a rendezvous (the node agents hold it; `statement_path` names its statement).
    A single-enclave job runs on a host, the service's or this process's own
    (`LocalHost`); training again what an unfinished job trains continues that job.
    """
    if recipe is None and target.rendezvous is None:
        raise UsageError("a recipe is required (only node agents behind a rendezvous hold it)")
    if plan.distributed and target.service is not None:
        raise UsageError("several workers run locally or through a rendezvous, not on a service")
    if target.rendezvous is not None and not plan.distributed:
        raise UsageError("with --rendezvous, --workers N names the training enclaves (2 or more)")
    if target.rendezvous is not None and statement_path is None:
        raise UsageError("with --rendezvous, --statement names the recipe's signed statement")
    if plan.distributed:
        # A group starts enclaves of its own: one started ahead for a single job is
        # stopped (nothing was sent to it).
        unused = target.take_training_enclave()
        if unused is not None:
            unused.kill()
    owner = load_identity(owner_key)
    dataset_ref, data_key = check_dataset_key(dataset, data_key_path, group=plan.distributed)
    common: dict[str, Any] = {
        "data_key": data_key,
        "dataset": dataset_ref,
        "owner": owner,
        "plan": plan,
        "policy": target.policy,
        "state_dir": target.state_dir,
        "on_event": _progress_events(on_progress),
    }
    try:
        if target.rendezvous is not None:
            assert statement_path is not None
            statement = load_statement(statement_path)
            check_provider(statement, provider)
            result = train_through_rendezvous(target.rendezvous, statement=statement, **common)
            return Trained(result.training, result.wire_traces)
        if target.service is None and plan.distributed:
            recipe_source, statement = load_local_recipe(Path(str(recipe)), statement_path)
            check_provider(statement, provider)
            result = train_locally(
                recipe_path=Path(str(recipe)),
                recipe_source=recipe_source,
                dataset_path=dataset,
                statement=statement,
                **common,
            )
            return Trained(result.training, result.wire_traces)
        with ExitStack() as stack:
            first_enclave = None
            if target.local:
                # Started before the recipe is read, the host opened and the data set
                # uploaded (if the target has not started it already), so that the
                # enclave measures itself and its sandbox imports torch meanwhile;
                # closed at the end whatever happens (a job that took it has closed it
                # already).
                first_enclave = target.take_training_enclave() or LocalEnclaveSession(
                    Role.TRAIN, target.state_dir, sandbox_at_start=True
                )
                stack.callback(first_enclave.close)
            host, recipe_name, statement = _host_with_recipe(
                target, stack, str(recipe), statement_path, first_enclave
            )
            check_provider(statement, provider)
            uploaded = host.upload_dataset(dataset, progress=upload_progress)
            outcome = train_on_host(
                host,
                recipe=recipe_name,
                dataset=uploaded["id"],
                data_key=data_key,
                dataset_ref=dataset_ref,
                owner=owner,
                statement=statement,
                plan=plan,
                policy=target.policy,
                state_dir=target.state_dir,
                sim_roots=target.sim_roots(),
                on_event=common["on_event"],
            )
            return Trained(outcome)
    except JobFailed as exc:
        raise JobFailed(exc.reason_class, f"training failed: {exc.reason_class}") from None


def local_host(
    state_dir: Path, *, view_only: bool = False, first_enclave: LocalEnclaveSession | None = None
) -> LocalHost:
    """This machine's own host for `--local` jobs, kept in `state_dir/host`.

    Its training enclaves are the client's own local enclave processes, sharing the
    state (and, simulated, the root) that `chiron attest --local` checks; their sealed
    checkpoints are kept in `state_dir/jobs/<job id>` until the job ends. `view_only`:
    to look at its jobs even while another process runs them.
    """
    from chiron.host.enclaves import ManagedEnclave
    from chiron.host.local import LocalHost

    started = [first_enclave] if first_enclave is not None else []

    def start_enclave(job_id: str) -> ManagedEnclave:
        # The first job takes the enclave its command started as it began, if any.
        session = started.pop() if started else LocalEnclaveSession(Role.TRAIN, state_dir)
        return ManagedEnclave(
            Role.TRAIN, state_dir, platform="sim", log_path=None, channel=_Channel(session)
        )

    return LocalHost(
        state_dir / "host",
        enclave_dir=state_dir,
        checkpoints_dir=state_dir / "jobs",
        start_enclave=start_enclave,
        view_only=view_only,
    )


class _Channel:
    """A local enclave session as the channel a host drives (it picks its own timeouts)."""

    def __init__(self, session: LocalEnclaveSession) -> None:
        self._session = session

    def call(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        on_event: EventHandler | None = None,
        timeout: float = CALL_SILENCE_SECONDS,
    ) -> dict[str, Any]:
        return self._session.call(name, dict(args or {}), on_event)

    def close(self) -> None:
        self._session.close()

    def kill(self) -> None:
        self._session.kill()


def _host_with_recipe(
    target: Target,
    stack: ExitStack,
    recipe: str,
    statement_path: Path | None,
    first_enclave: LocalEnclaveSession | None = None,
) -> tuple[JobHost, str, SignedRecipeStatement]:
    """The target's host, the recipe's name there, and its provider's signed statement.

    A service holds its providers' registered recipes: `recipe` names one, whose
    statement the service relays (verified here). This machine's host registers the
    recipe file with its statement, as its provider would on a service.
    """
    if target.service is not None:
        statement = (
            load_statement(statement_path)
            if statement_path
            else SignedRecipeStatement.from_bytes(target.service.recipe_statement(recipe))
        )
        return target.service, recipe, statement
    source, statement = load_local_recipe(Path(recipe), statement_path)
    host = stack.enter_context(local_host(target.state_dir, first_enclave=first_enclave))
    return host, host.add_recipe(source, statement), statement


@contextmanager
def hosted_jobs(target: Target) -> Iterator[JobHost]:
    """The host a target's single-enclave jobs run on: its service, or this machine's."""
    if target.service is not None:
        yield target.service
    else:
        with local_host(target.state_dir) as host:
            yield host


def _progress_events(
    on_progress: ProgressHandler | None,
) -> Callable[[dict[str, Any]], None] | None:
    if on_progress is None:
        return None

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "progress":
            on_progress(int(event["step"]), int(event["total"]))

    return on_event


def provider_agent(stack: ExitStack, provider_url: str | None) -> AgentShareSource:
    """The provider's agent: the only way the provider's share reaches a query enclave."""
    if provider_url is None:
        raise UsageError(
            "the provider's share comes from its key-release agent: pass --provider URL "
            "(the provider runs `chiron keys serve`)"
        )
    source = AgentShareSource(provider_url)
    stack.callback(source.close)
    return source


def unlock(
    target: Target,
    stack: ExitStack,
    *,
    model_path: Path,
    owner_key: Path,
    provider_url: str | None,
    upload_progress: bool = False,
) -> UnlockedModel:
    """A query enclave on `target` holding both shares of the model; closed with `stack`.

    The owner's share comes from the owner's key, the provider's from the provider's
    key-release agent at `provider_url`, which checks the attested enclave itself.
    """
    if target.rendezvous is not None:
        raise UsageError("models are queried with --local or --url, not through a rendezvous")
    provider = provider_agent(stack, provider_url)
    model = read_input_file(model_path, what="model file")
    owner = load_identity(owner_key)
    session: EnclaveSession
    if target.service is not None:
        session = stack.enter_context(
            RemoteQuerySession.for_model_file(target.service, model_path, progress=upload_progress)
        )
    else:
        session = stack.enter_context(LocalEnclaveSession("query", target.state_dir))
    return unlock_model(
        session,
        model=model,
        owner=owner,
        provider=provider,
        policy=target.policy,
        state_dir=target.state_dir,
        sim_roots=target.sim_roots(),
    )
