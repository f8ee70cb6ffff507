"""The composable check: one rule that explains itself, and the ways to combine rules.

Every policy in Chiron (the owner's attestation policy, its hardware rules, a
provider's release policy) is a tree of `Check`s: `AllOf` reports every one of its
checks (it never stops at the first failure); `AnyOf` passes when one alternative does.
A check is generic over what it reads, so each tree is typed by its facts. The debug
rules live here because they read both the appraised claims and a hardware report.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from chiron.core.attestation.report import CheckResult, Claims, HardwareClaims

# What a check reads: the appraised `Claims`, or a hardware report's `HardwareClaims`. A
# check of either (`Check[Claims | HardwareClaims]`) composes into a tree of each.
ClaimsT = TypeVar("ClaimsT", contravariant=True)


class Check(ABC, Generic[ClaimsT]):
    """One composable part of a policy."""

    @abstractmethod
    def evaluate(self, claims: ClaimsT) -> list[CheckResult]:
        """Every result this check produces for `claims` (leaves produce one)."""


class AllOf(Check[ClaimsT]):
    """Every check must pass; all of their results are reported."""

    def __init__(self, *checks: Check[ClaimsT]) -> None:
        self.checks = checks

    def evaluate(self, claims: ClaimsT) -> list[CheckResult]:
        return [result for check in self.checks for result in check.evaluate(claims)]


class AnyOf(Check[ClaimsT]):
    """One alternative must pass; reported as a single result named `name`."""

    def __init__(self, name: str, *checks: Check[ClaimsT]) -> None:
        if not checks:
            raise ValueError("AnyOf needs at least one alternative")
        self.name = name
        self.checks = checks

    def evaluate(self, claims: ClaimsT) -> list[CheckResult]:
        results = [result for check in self.checks for result in check.evaluate(claims)]
        for result in results:
            if result.passed:
                return [CheckResult(self.name, True, result.reason)]
        if len(results) == 1:
            return [CheckResult(self.name, False, results[0].reason)]
        return [
            CheckResult(
                self.name,
                False,
                f"none of {len(results)} alternatives holds: "
                + "; ".join(result.reason for result in results),
            )
        ]


class DebugDisabled(Check[Claims | HardwareClaims]):
    """A debug enclave's memory is readable by the host: refuse it."""

    def evaluate(self, claims: Claims | HardwareClaims) -> list[CheckResult]:
        if claims.debug:
            return [CheckResult("debug", False, "debug enclave: the host can read its memory")]
        return [CheckResult("debug", True, "not a debug enclave")]


class UNSAFE_DebugAllowed(Check[Claims | HardwareClaims]):
    """Accept debug enclaves, for diagnosing a platform; never with real data."""

    def evaluate(self, claims: Claims | HardwareClaims) -> list[CheckResult]:
        if claims.debug:
            return [
                CheckResult(
                    "debug",
                    True,
                    "DEBUG enclave accepted by an unsafe policy: the host can read it",
                )
            ]
        return [CheckResult("debug", True, "not a debug enclave")]
