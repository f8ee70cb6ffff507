"""Resource attacks: memory, CPU and time are bounded, and exhaustion is a reason class."""

from __future__ import annotations

from tests.sandbox.conftest import recipe

from chiron.enclave.sandbox import SandboxLimits

GIB = 1 << 30


def test_reserve_more_address_space_than_allowed(run_attack):
    outcome = run_attack(
        recipe(f"blocks = [torch.empty({GIB}, dtype=torch.uint8) for _ in range(64)]"),
        limits=SandboxLimits(memory_bytes=3 * GIB, threads=1),
    )
    assert outcome.reason == "resource_limit"


def test_fill_memory(run_attack):
    outcome = run_attack(
        recipe(
            """
            def train_step(model, optimizer, x, y, hp):
                hoard = []
                while True:
                    hoard.append(b"x" * (64 << 20))
            """
        ),
        limits=SandboxLimits(memory_bytes=2 * GIB, threads=1),
    )
    assert outcome.reason == "resource_limit"


def test_spin_past_the_cpu_limit(run_attack):
    outcome = run_attack(
        recipe(
            """
            def train_step(model, optimizer, x, y, hp):
                while True:
                    pass
            """
        ),
        limits=SandboxLimits(cpu_seconds=2, threads=1, wall_timeout_seconds=120),
    )
    assert outcome.reason == "resource_limit"


def test_spin_in_many_threads(run_attack):
    # CPU time counts across threads.
    outcome = run_attack(
        recipe(
            """
            def spin():
                while True:
                    pass

            for _ in range(4):
                threading.Thread(target=spin, daemon=True).start()
            time.sleep(600)
            """
        ),
        limits=SandboxLimits(cpu_seconds=2, threads=1, wall_timeout_seconds=120),
    )
    assert outcome.reason == "resource_limit"


def test_sleep_past_the_wall_timeout(run_attack):
    outcome = run_attack(
        recipe(
            """
            def train_step(model, optimizer, x, y, hp):
                time.sleep(3600)
            """
        ),
        limits=SandboxLimits(threads=1, wall_timeout_seconds=3),
    )
    assert outcome.reason == "timeout"


def test_crash_the_interpreter(run_attack):
    outcome = run_attack(recipe("ctypes.string_at(0)"))  # SIGSEGV
    assert outcome.reason == "recipe_error"
