"""Dataset uploads: JSON, JSONL (``application/x-ndjson``) or a multipart file holding
JSONL or, for ``ner``, CoNLL columns. Every bad line or example is reported at once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

import core
from api.errors import ErrorDetail, UnsupportedMediaType, ValidationFailed, details_from_pydantic
from api.schemas import DatasetCreate
from api.services.validation import Problems, check_examples, infer_spec, parse_task
from store.models import Dataset, new_id, utcnow
from store.repositories import DatasetRepo
from store.settings import Settings

JSONL_TYPES = (
    "application/x-ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "application/json-lines",
)


@dataclass
class Upload:
    task_type: str | None
    task: dict[str, Any] | None
    examples: list[Any]
    # For line-based formats, the 1-based line each example started on (for messages).
    lines: list[int] | None


def parse_json_body(raw: bytes) -> Upload:
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationFailed(
            "the request body is not valid JSON", [_detail("", f"malformed JSON: {exc}")]
        ) from exc
    try:
        body = DatasetCreate.model_validate(payload)
    except ValidationError as exc:
        raise ValidationFailed(
            "the dataset request is invalid", details_from_pydantic(exc.errors(), prefixed=False)
        ) from exc
    return Upload(body.task_type, body.task, list(body.examples), None)


def parse_jsonl(text: str, problems: Problems) -> tuple[list[Any], list[int]]:
    examples: list[Any] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            examples.append(json.loads(line))
            lines.append(lineno)
        except json.JSONDecodeError as exc:
            problems.add(
                f"/lines/{lineno}", f"line {lineno} is not valid JSON: {exc.msg} (column {exc.colno})"
            )
    return examples, lines


def parse_conll(text: str, problems: Problems) -> tuple[list[Any], list[int]]:
    """Whitespace-separated columns, the token first and the BIO tag last; a blank line ends
    a sentence; ``-DOCSTART-`` lines are skipped."""
    examples: list[Any] = []
    lines: list[int] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for lineno, line in enumerate([*text.splitlines(), ""], start=1):
        cols = line.split()
        if cols and cols[0] == "-DOCSTART-":
            continue
        if not cols:
            if tokens:
                examples.append({"tokens": tokens, "tags": tags})
                lines.append(start)
            tokens, tags = [], []
            continue
        if len(cols) < 2:
            problems.add(f"/lines/{lineno}", f"line {lineno}: expected a token and a tag column")
            continue
        if not tokens:
            start = lineno
        tokens.append(cols[0])
        tags.append(cols[-1])
    return examples, lines


def parse_text_file(text: str, task_type: str | None, problems: Problems) -> tuple[list[Any], list[int]]:
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.lstrip().startswith("{") or task_type != "ner":
        return parse_jsonl(text, problems)
    return parse_conll(text, problems)


def decode_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed("the upload is not UTF-8 text", [_detail("", str(exc))]) from exc


def _detail(loc: str, message: str) -> ErrorDetail:
    return ErrorDetail(loc=loc, message=message)


def store_dataset(
    session: Session, project_id: str, upload: Upload, settings: Settings, problems: Problems
) -> Dataset:
    """Validate every example and store the normalised examples; 422 lists every problem."""
    if not _known_task_type(upload.task_type, problems):
        raise ValidationFailed("the dataset is invalid", problems.items)
    assert upload.task_type is not None
    if upload.task is not None and upload.task.get("type", upload.task_type) != upload.task_type:
        problems.add("/task/type", "task.type must match task_type")
    spec_dict = upload.task if upload.task is not None else infer_spec(upload.task_type, upload.examples)
    spec = parse_task({"type": upload.task_type, **spec_dict}, settings, problems)
    checked = None
    if spec is not None:
        checked = check_examples(spec, upload.examples, settings, problems, "/examples")
    if problems or checked is None:
        _mention_lines(problems, upload.lines)
        raise ValidationFailed("the dataset is invalid", problems.items)
    dataset = Dataset(
        id=new_id("ds"),
        project_id=project_id,
        task_type=upload.task_type,
        n_examples=len(checked.examples),
        label_counts=checked.label_counts,
        warnings=checked.warnings,
        examples=checked.examples,
        created_at=utcnow(),
    )
    return DatasetRepo(session).add(dataset)


def _known_task_type(task_type: str | None, problems: Problems) -> bool:
    if not task_type:
        problems.add("/task_type", "task_type is required (a field, or ?task_type= for JSONL and files)")
        return False
    try:
        core.get_task(task_type)
    except core.UnknownTask as exc:
        problems.add("/task_type", str(exc) or f"unknown task type {task_type!r}")
        return False
    return True


def _mention_lines(problems: Problems, lines: list[int] | None) -> None:
    """Example locs index the parsed examples; name the source line too, for JSONL/CoNLL."""
    if not lines:
        return
    for item in problems.items:
        parts = item.loc.split("/")
        if len(parts) > 2 and parts[1] == "examples" and parts[2].isdigit() and int(parts[2]) < len(lines):
            item.message = f"{item.message} (line {lines[int(parts[2])]})"


def require_task_type(media_type: str) -> None:
    if media_type not in ("application/json", "multipart/form-data", *JSONL_TYPES):
        raise UnsupportedMediaType(
            f"unsupported Content-Type {media_type!r}: send application/json, application/x-ndjson "
            "or multipart/form-data"
        )
