"""Query parameters shared by list routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

Limit = Annotated[int, Query(ge=1, le=100, description="page size, 1..100")]
After = Annotated[str | None, Query(description="cursor: the id of the last item of the previous page")]
