"""An index component, declared once: the builder that writes its folder of an
index and the retriever stage that reads it.

Components are registered by name in the ``ragline.index_components``
entry-point group (or with ``register(INDEX_COMPONENTS, name, component)``
from code). Everything that offers a choice of components takes it from
there: ``ragline index --component NAME``, the retrievers ``ragline
query/search/ask/eval --retriever`` accept (``hybrid`` fuses every component
an index has), building, updating and resuming.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ragline.engine.registry import INDEX_COMPONENTS, available, lookup
from ragline.engine.stage import Stage
from ragline.engine.types import Passage


class IndexBuilder(abc.ABC):
    """Writes one component's folder while an index is built or updated.

    The build calls ``open(folder)`` before the first passage, ``add(passages)``
    a batch at a time — it returns once the component's share of the batch is
    durable or cheap to redo, then the document store commits the batch —
    ``close()`` to finish (its dict is recorded in meta.json) and ``abort()``
    to release resources after a failure. An update rebuilds the component
    with the constructor arguments ``settings_from_meta(recorded)`` gives.

    Optional abilities are declared, not discovered: a builder that can reuse
    the previous index's work in an update sets ``can_reuse`` and is then fed
    ``add(passages, previous_rows)`` (each passage's row in the previous
    index when it is unchanged, else None); one that can continue a killed
    build sets ``can_resume`` (any other is opened afresh and fed the
    committed passages again); one that encodes passages says how in
    ``encoder_settings()`` (Ray builds encode on workers and hand it vectors).
    """

    #: The component's name: its folder in the index and its retriever's stage name.
    name: ClassVar[str]
    can_reuse: ClassVar[bool] = False
    can_resume: ClassVar[bool] = False

    @staticmethod
    def settings_from_meta(recorded: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments that rebuild the component as it was built."""
        return {}

    @classmethod
    def canonical_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """The constructor's arguments with one spelling per meaning (a model's
        short name and its hub id are one encoder): a resumed build compares
        its settings with the killed build's in this form."""
        return settings

    @abc.abstractmethod
    def open(self, directory: Path) -> None: ...

    @abc.abstractmethod
    def add(self, passages: list[Passage], previous_rows: list[int | None] | None = None) -> None: ...

    @abc.abstractmethod
    def close(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def abort(self) -> None: ...

    def reuse(self, previous: Path) -> None:
        """With ``can_reuse``: the component's folder in the previous index."""
        raise NotImplementedError

    def resume(self, directory: Path, committed: int) -> None:
        """With ``can_resume``: continue in ``directory`` from ``committed`` passages."""
        raise NotImplementedError

    def encoder_settings(self) -> dict[str, Any] | None:
        """How this component encodes passages, for encoding elsewhere; None if it does not."""
        return None


@dataclass(frozen=True)
class IndexComponent:
    """A builder and the retriever stage that reads what it wrote. The
    retriever takes ``index``, ``k`` and ``filter`` like every retriever; a
    component without one is built and updated but never searched."""

    builder: type[IndexBuilder]
    retriever: type[Stage] | None = None

    @property
    def name(self) -> str:
        return self.builder.name


def index_component(name: str) -> IndexComponent:
    """The component registered as ``name`` (``ConfigError`` listing the known ones)."""
    return lookup(INDEX_COMPONENTS, name)


def component_names(searchable: bool = False) -> list[str]:
    """Every registered component (with ``searchable``: those with a
    retriever), in name order: the order ``hybrid`` fuses them in."""
    names = available(INDEX_COMPONENTS)
    return [n for n in names if index_component(n).retriever is not None] if searchable else names
