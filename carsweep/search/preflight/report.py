"""The report every pre-flight check fills: lines to show, failures and warnings, one line each."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    """Lines to show (each check's result) and failures (one line each)."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def passed(self, check: str, detail: str) -> None:
        self.lines.append(f"  ok    {check}: {detail}")

    def failed(self, check: str, problem: str) -> None:
        self.lines.append(f"  FAIL  {check}: {problem}")
        self.failures.append(f"{check}: {problem}")

    def warned(self, check: str, text: str) -> None:
        """A line worth reading that does not stop the sweep."""
        self.lines.append(f"  warn  {check}: {text}")
        self.warnings.append(f"{check}: {text}")

    def text(self) -> str:
        return "\n".join(self.lines)
