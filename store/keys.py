"""API keys: the secret is shown once at creation; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import ApiKey, Project, new_id, utcnow

SECRET_PREFIX = "fdk_"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    project_id: str
    project_name: str
    secret: str


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalars(select(Project).where(Project.name == name)).first()
    if project is None:
        project = Project(id=new_id("proj"), name=name, created_at=utcnow())
        session.add(project)
        session.flush()
    return project


def create_key(session: Session, project_name: str, name: str = "") -> CreatedKey:
    """Create a key for ``project_name`` (creating the project if needed). Flushes only."""
    project = get_or_create_project(session, project_name)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), project_id=project.id, name=name, key_hash=hash_secret(secret))
    session.add(key)
    session.flush()
    return CreatedKey(key_id=key.id, project_id=project.id, project_name=project.name, secret=secret)


def revoke_key(session: Session, key_id: str, when: datetime | None = None) -> bool:
    """Mark a key revoked; False when there is no such key. Revoking twice keeps the first time."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = when or utcnow()
        session.flush()
    return True


def authenticate(session: Session, secret: str) -> ApiKey | None:
    """The active key whose hash matches ``secret``, or None."""
    if not secret.startswith(SECRET_PREFIX):
        return None
    stmt = select(ApiKey).where(ApiKey.key_hash == hash_secret(secret), ApiKey.revoked_at.is_(None))
    return session.scalars(stmt).first()


def list_keys(session: Session) -> list[tuple[ApiKey, Project]]:
    stmt = select(ApiKey, Project).join(Project, Project.id == ApiKey.project_id).order_by(ApiKey.created_at)
    return [(k, p) for k, p in session.execute(stmt).all()]
