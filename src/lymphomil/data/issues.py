"""What is wrong with one input (a row, an image file) and what to do about it: stop at once,
or leave it out and list it (``--on-error raise|skip``). The loaders report each problem here;
the skipped ones end up in the cohort (``Cohort.issues``) and in ``skipped.json``."""

from __future__ import annotations

from dataclasses import dataclass, field

from lymphomil.runtime.errors import LymphomilError


@dataclass(frozen=True)
class DataIssue:
    """One problem found while reading a cohort; becomes an error or a recorded skip."""

    problem: str
    fix: str
    file: str | None = None
    row: int | None = None
    patient_id: str | None = None

    def to_error(self) -> LymphomilError:
        return LymphomilError(self.problem, file=self.file, row=self.row, fix=self.fix)

    def to_dict(self) -> dict:
        return {"patient_id": self.patient_id, "file": self.file, "row": self.row,
                "problem": self.problem, "fix": self.fix}


@dataclass
class IssueLog:
    """Collects problems under ``on_error='skip'``; raises at once under ``'raise'``."""

    on_error: str = "raise"
    issues: list[DataIssue] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise LymphomilError(f"unknown on_error policy {self.on_error!r}",
                                 fix="use --on-error raise or --on-error skip")

    def report(self, issue: DataIssue) -> None:
        if self.on_error == "raise":
            raise issue.to_error()
        self.issues.append(issue)
