"""Exception types of the core library; they know nothing of HTTP."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with user input; ``loc`` is a JSON pointer relative to what was checked."""

    loc: str
    message: str


class CoreError(Exception):
    """Parent of every error the core library raises on purpose."""


class UnknownTask(CoreError):
    """A task type name that is not in the registry."""


class UnknownBase(CoreError):
    """A base-model name that is neither registered nor a local directory."""


class BaseMismatch(CoreError):
    """A delta applied to a base model other than the one it was trained on."""


class FitCancelled(CoreError):
    """Training stopped because the caller's ``should_stop`` returned True."""


class ConfigError(CoreError):
    """A configuration with one or more problems, all listed."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        summary = "; ".join(f"{p.loc or '/'}: {p.message}" for p in self.problems[:5])
        more = len(self.problems) - 5
        if more > 0:
            summary += f"; and {more} more"
        super().__init__(summary or "invalid configuration")


def pointer(*parts: str | int) -> str:
    """A JSON pointer built from path parts, escaping '~' and '/' as RFC 6901 requires."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)
