"""/v1/datasets: upload (JSON, JSONL or a multipart file), list, read, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.convert import dataset_read
from api.deps import CallerDep, SessionDep, SettingsDep, TransactionalRoute
from api.errors import NotFound, errors
from api.routes.common import After, Limit
from api.routes.jobs import unknown_cursor
from api.schemas import DatasetCreate, DatasetRead, Page
from api.services import datasets as service
from api.services.validation import Problems
from store.repositories import DatasetRepo, UnknownCursor

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=TransactionalRoute)

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DatasetCreate.model_json_schema()},
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "one example per line; task type in ?task_type="}
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JSONL, or CoNLL for ner",
                        },
                        "task_type": {"type": "string"},
                    },
                }
            },
        },
    }
}


async def _read_upload(request: Request, task_type: str | None) -> tuple[service.Upload, Problems]:
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    service.require_task_type(media_type)
    problems = Problems()
    if media_type == "application/json":
        upload = service.parse_json_body(await request.body())
        upload.task_type = upload.task_type or task_type
        return upload, problems
    if media_type == "multipart/form-data":
        form = await request.form()
        file = form.get("file")
        if not isinstance(file, UploadFile):
            problems.add("/file", "a multipart field 'file' with the dataset is required")
            return service.Upload(task_type, None, [], None), problems
        form_type = form.get("task_type")
        task_type = form_type if isinstance(form_type, str) and form_type else task_type
        text = service.decode_text(await file.read())
        examples, lines = service.parse_text_file(text, task_type, problems)
        return service.Upload(task_type, None, examples, lines), problems
    text = service.decode_text(await request.body())
    examples, lines = service.parse_jsonl(text, problems)
    return service.Upload(task_type, None, examples, lines), problems


@router.post(
    "",
    status_code=201,
    response_model=DatasetRead,
    responses=errors(415),
    openapi_extra=_UPLOAD_BODY,
    summary="Upload a dataset",
    description="JSON {task_type, task?, examples}, a JSONL body (application/x-ndjson, ?task_type=), or a "
    "multipart file (JSONL, or CoNLL columns for ner). 422 lists every bad line or example.",
)
async def create_dataset(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    settings: SettingsDep,
    task_type: Annotated[str | None, Query(description="task type for JSONL and file uploads")] = None,
) -> DatasetRead:
    upload, problems = await _read_upload(request, task_type)
    dataset = await run_in_threadpool(
        service.store_dataset, session, caller.project_id, upload, settings, problems
    )
    return dataset_read(dataset)


@router.get("", response_model=Page[DatasetRead], responses=errors(), summary="List datasets, newest first")
def list_datasets(
    session: SessionDep, caller: CallerDep, limit: Limit = 20, after: After = None
) -> Page[DatasetRead]:
    try:
        page = DatasetRepo(session).page(caller.project_id, after, limit)
    except UnknownCursor:
        raise unknown_cursor(after or "") from None
    return Page[DatasetRead](data=[dataset_read(d) for d in page.items], has_more=page.has_more)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=errors(), summary="Read a dataset")
def get_dataset(
    dataset_id: str,
    session: SessionDep,
    caller: CallerDep,
    include_examples: Annotated[bool, Query(description="also return the stored examples")] = False,
) -> DatasetRead:
    dataset = DatasetRepo(session).get(caller.project_id, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return dataset_read(dataset, include_examples)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    response_class=Response,
    responses=errors(),
    summary="Delete a dataset (jobs keep their own copy of the examples)",
)
def delete_dataset(dataset_id: str, session: SessionDep, caller: CallerDep) -> Response:
    repo = DatasetRepo(session)
    dataset = repo.get(caller.project_id, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    repo.delete(dataset)
    return Response(status_code=204)
