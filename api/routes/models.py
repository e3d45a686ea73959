"""/v1/models: list, read, delete, download the artifact, extract with a model."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

import core
from api.convert import model_read
from api.deps import CallerDep, SessionDep, SettingsDep, TransactionalRoute, end_transaction
from api.errors import ErrorDetail, NotFound, ServiceUnavailable, ValidationFailed, errors
from api.routes.common import After, Limit
from api.routes.jobs import unknown_cursor
from api.schemas import ExtractRequest, ExtractResponse, ModelRead, Page
from store.artifacts import ArtifactNotFound, ArtifactStore
from store.models import Model
from store.repositories import ModelRepo, UnknownCursor

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/models", tags=["models"], route_class=TransactionalRoute)

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own cap on its JSON header


async def _owned_model(model_id: str, session: SessionDep, caller: CallerDep) -> Model:
    # Async with one explicit hop: a sync dependency would cost one too, and this way the
    # routes that need nothing else from the database (read, extract) can be async.
    model = await anyio.to_thread.run_sync(ModelRepo(session).get, caller.project_id, model_id)
    if model is None:
        raise NotFound(f"no model {model_id!r}")
    return model


ModelDep = Annotated[Model, Depends(_owned_model, scope="function")]


@router.get("", response_model=Page[ModelRead], responses=errors(), summary="List models, newest first")
def list_models(
    session: SessionDep, caller: CallerDep, limit: Limit = 20, after: After = None
) -> Page[ModelRead]:
    try:
        page = ModelRepo(session).page(caller.project_id, after, limit)
    except UnknownCursor:
        raise unknown_cursor(after or "") from None
    return Page[ModelRead](data=[model_read(m) for m in page.items], has_more=page.has_more)


@router.get("/{model_id}", response_model=ModelRead, responses=errors(), summary="Read a model")
async def get_model(model: ModelDep) -> ModelRead:
    return model_read(model)


@router.delete(
    "/{model_id}", status_code=204, response_class=Response, responses=errors(), summary="Delete a model"
)
def delete_model(model: ModelDep, session: SessionDep, request: Request) -> Response:
    ModelRepo(session).delete(model)
    serving = getattr(request.app.state, "serving", None)
    if serving is not None:
        serving.evict(model.id)
    artifacts: ArtifactStore = request.app.state.artifacts
    key = model.artifact_key

    def drop_artifact() -> None:
        try:
            artifacts.delete(key)
        except Exception:
            log.warning("could not delete artifact %s", key, exc_info=True)

    from api.deps import after_commit

    after_commit(session, drop_artifact)  # the file goes only once the row is surely gone
    return Response(status_code=204)


def read_safetensors_metadata(chunks: Iterator[bytes]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, reading only its header."""
    buf = b""
    need = 8
    for chunk in chunks:
        buf += chunk
        if len(buf) >= 8:
            (header_len,) = struct.unpack("<Q", buf[:8])
            if header_len > MAX_HEADER_BYTES:
                raise ValueError("safetensors header too large")
            need = 8 + header_len
        if len(buf) >= need and need > 8:
            break
    if len(buf) < need or need <= 8:
        raise ValueError("truncated safetensors file")
    header = json.loads(buf[8:need])
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def manifest_from_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """The manifest is JSON under one metadata key; failing that, every entry decoded."""
    for key in ("manifest", "fishdip_manifest", "fishdip.manifest"):
        if key in metadata:
            value = json.loads(metadata[key])
            if isinstance(value, dict):
                return value
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@router.get(
    "/{model_id}/artifact",
    responses={
        **errors(),
        200: {
            "description": "the sparse delta (safetensors, manifest in its metadata), "
            "or with ?manifest=1 the manifest as JSON",
            "content": {"application/octet-stream": {}, "application/json": {}},
        },
    },
    summary="Download the model's sparse delta",
)
def get_artifact(
    model: ModelDep,
    request: Request,
    manifest: Annotated[bool, Query(description="return the JSON manifest instead of the file")] = False,
) -> Response:
    artifacts: ArtifactStore = request.app.state.artifacts
    try:
        if manifest:
            return JSONResponse(
                manifest_from_metadata(read_safetensors_metadata(artifacts.open_stream(model.artifact_key)))
            )
        size = artifacts.size(model.artifact_key)
        stream = artifacts.open_stream(model.artifact_key)
    except ArtifactNotFound:
        raise NotFound(f"the artifact of model {model.id!r} is missing from the store") from None
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f'attachment; filename="{model.id}.safetensors"',
        "X-Checksum-Sha256": model.sha256,
    }
    return StreamingResponse(stream, media_type="application/octet-stream", headers=headers)


@router.post(
    "/{model_id}/extract",
    response_model=ExtractResponse,
    responses=errors(503),
    summary="Extract with a fine-tuned model",
    description="Long texts are split into windows and merged back; offsets index the texts as sent.",
)
async def extract(
    model: ModelDep, body: ExtractRequest, request: Request, session: SessionDep, settings: SettingsDep
) -> ExtractResponse:
    inputs: list[Any] = list(body.texts if body.texts is not None else body.inputs or [])
    field = "texts" if body.texts is not None else "inputs"
    if not inputs:
        raise ValidationFailed(
            "nothing to extract", [ErrorDetail(loc=f"/{field}", message="give at least one input")]
        )
    if len(inputs) > settings.max_extract_texts:
        raise ValidationFailed(
            "too many inputs",
            [ErrorDetail(loc=f"/{field}", message=f"at most {settings.max_extract_texts} per request")],
        )
    task = core.get_task(str(model.task.get("type")))
    problems = task.validate_inputs(inputs, settings.max_text_chars)
    if problems:
        details = [ErrorDetail(loc=f"/{field}{p.loc}", message=p.message) for p in problems]
        raise ValidationFailed("the extraction inputs are invalid", details)
    serving = getattr(request.app.state, "serving", None)
    if serving is None:
        raise ServiceUnavailable("extraction is not available on this server")
    # End the transaction first: an extraction can take seconds, and meanwhile the request
    # must hold neither a connection (idle in transaction) nor an admission slot, or long
    # extractions would make every other request (job polling) wait. ``model`` keeps its
    # loaded attributes (expire_on_commit=False).
    await end_transaction(session)
    results = await serving.extract(model, inputs)
    return ExtractResponse(model_id=model.id, results=results)
