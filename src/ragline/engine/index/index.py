"""``Index``: an index folder to change from Python, one atomic update a call."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ragline.engine.index.update import Changes, apply_changes
from ragline.engine.types import Document


class Index:
    """An index folder to change from Python; each call is one atomic update,
    e.g. ``Index("idx").add([Document("d9", "new text")])``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def add(self, documents: Iterable[Document]) -> dict[str, Any]:
        """Add documents whose ids are new (a known id is an error)."""
        return apply_changes(self.path, Changes(documents, only_new=True))

    def update(self, documents: Iterable[Document]) -> dict[str, Any]:
        """Replace documents by id (an unknown id is an error); unchanged texts cost nothing."""
        return apply_changes(self.path, Changes(documents, only_known=True))

    def upsert(self, documents: Iterable[Document]) -> dict[str, Any]:
        """Add new documents and replace known ones."""
        return apply_changes(self.path, Changes(documents))

    def delete(self, ids: Iterable[str]) -> dict[str, Any]:
        """Remove documents (all passages of each) by id; unknown ids are logged and skipped."""
        return apply_changes(self.path, Changes(delete=set(ids)))
