"""Labels <-> natural words, one bijection per label set."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..errors import Problem, pointer
from .augmented import MARKERS, key_string

DEFAULT_WORDS: Mapping[str, str] = {
    "PER": "person",
    "LOC": "location",
    "ORG": "organization",
    "MISC": "miscellaneous",
    "GPE": "geopolitical entity",
    "Peop": "person",
    "Loc": "location",
    "Org": "organization",
    "Other": "other",
    "Work_For": "works for",
    "Kill": "kills",
    "OrgBased_In": "organization based in",
    "Live_In": "lives in",
    "Located_In": "located in",
    "ARG0": "first argument",
    "ARG1": "second argument",
    "ARG2": "third argument",
    "ARG3": "fourth argument",
    "ARG4": "fifth argument",
    "ARG5": "sixth argument",
    "ARGM-TMP": "temporal",
    "ARGM-LOC": "location",
    "ARGM-MNR": "manner",
    "ARGM-NEG": "negation",
    "ARGM-MOD": "modal",
    "ARGM-ADV": "adverbial",
    "ARGM-DIS": "discourse",
    "ARGM-CAU": "cause",
    "ARGM-PRP": "purpose",
    "ARGM-DIR": "direction",
    "ARGM-EXT": "extent",
    "ARGM-PNC": "purpose not cause",
    "ARGM-PRD": "secondary predication",
    "ARGM-REC": "reciprocal",
    "ARGM-GOL": "goal",
    "ARGM-COM": "comitative",
    "ARGM-ADJ": "adjectival",
    "ARGM-LVB": "light verb",
    "ARGM-PRR": "predicating relation",
    "NORP": "nationality religious or political group",
    "FAC": "facility",
    "WORK_OF_ART": "work of art",
    "creative-work": "creative work",
}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\s_\-" + re.escape(MARKERS) + r"]+")


def default_words(label: str) -> str:
    """The words for a label without an override: the table, else a de-camelled lowercase form."""
    if label in DEFAULT_WORDS:
        return DEFAULT_WORDS[label]
    spaced = _SEPARATORS.sub(" ", _CAMEL.sub(" ", label))
    return spaced.strip().lower()


class Verbaliser:
    """A bijection between a label set and their words; words are matched case-insensitively."""

    def __init__(self, labels: Sequence[str], overrides: Mapping[str, str] | None = None) -> None:
        overrides = overrides or {}
        self.labels = tuple(labels)
        self._words = {label: overrides.get(label, default_words(label)).strip() for label in self.labels}
        self._by_key: dict[str, str] = {}
        for label in self.labels:
            self._by_key.setdefault(key_string(self._words[label]), label)

    def words(self, label: str) -> str:
        return self._words[label]

    def label(self, words: str) -> str | None:
        """The label whose words these are (ignoring case, accents and spacing), or None."""
        return self._by_key.get(key_string(words))

    def problems(self, labels_loc: str, overrides: Mapping[str, str] | None = None) -> list[Problem]:
        """Empty words, marker characters and two labels sharing words; ``labels_loc`` e.g. '/labels'."""
        overrides = overrides or {}
        problems: list[Problem] = []
        seen: dict[str, str] = {}
        for index, label in enumerate(self.labels):
            words = self._words[label]
            loc = pointer("label_words", label) if label in overrides else f"{labels_loc}/{index}"
            key = key_string(words)
            if not key:
                problems.append(Problem(loc, f"label {label!r} has no usable words; give it label_words"))
            elif any(m in words for m in MARKERS):
                problems.append(
                    Problem(loc, f"words {words!r} for {label!r} contain one of {' '.join(MARKERS)}")
                )
            elif key in seen:
                problems.append(
                    Problem(
                        loc, f"labels {seen[key]!r} and {label!r} both read {words!r}; give one label_words"
                    )
                )
            else:
                seen[key] = label
        return problems
