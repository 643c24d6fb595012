"""A corpus as a Ray Data source: the passages a build indexes, in corpus
order, in blocks of rows.

The corpus is read by one read task on the driver's node (where the corpus
is), with the very function a single-process build reads it with
(``build.corpus_passages``: the same readers, chunking and document hashes),
so ids, order and errors are those of a build without Ray. Each row holds a
passage with its origin (pickled, so it comes back exactly), the document
hashes read before it, its row number, and the text encoders see.

Imported only once Ray is (engine/scale/ray_session.py): it subclasses Ray's
``Datasource``.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable, Iterator

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ragline.engine.scale.encode_actor import TEXT_COLUMN
from ragline.engine.types import Passage

# (passage, origin) pairs of a corpus, noting each document's (id, hash, origin) in the list it is given
PassageReader = Callable[[list], Iterator[tuple[Passage, str]]]

SCHEMA = pa.schema([("row", pa.int64()), ("record", pa.binary()), ("documents", pa.binary()), (TEXT_COLUMN, pa.string())])


class CorpusSource(Datasource):
    """``read`` the corpus, leaving out its first ``skip`` passages (those a
    resumed build committed before), in blocks of ``block_rows`` passages."""

    def __init__(self, read: PassageReader, skip: int = 0, block_rows: int = 256):
        super().__init__()
        self.read = read
        self.skip = skip
        self.block_rows = block_rows

    @property
    def supports_distributed_reads(self) -> bool:
        return False  # the corpus is on the driver's node

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        # One task: a corpus is one ordered stream (a TREC file, a JSONL file).
        metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(lambda: _blocks(self.read, self.skip, self.block_rows), metadata, schema=SCHEMA)]


def _blocks(read: PassageReader, skip: int, block_rows: int) -> Iterator[pa.Table]:
    hashes: list[tuple[str, str, str]] = []
    passages = read(hashes)
    for _ in itertools.islice(passages, skip):
        pass
    hashes.clear()  # documents recorded by the build that is resumed
    row = skip
    while True:
        records, documents, texts = [], [], []
        for passage, origin in itertools.islice(passages, block_rows):
            # Pulling a passage reads its document when it is the first one of
            # it: each row carries exactly the documents read for it, so the
            # driver commits a document with its first passage, as it does without Ray.
            records.append(pickle.dumps((passage, origin), protocol=pickle.HIGHEST_PROTOCOL))
            documents.append(pickle.dumps(hashes[:], protocol=pickle.HIGHEST_PROTOCOL))
            hashes.clear()
            texts.append(passage.indexed_text())
        if not records:
            return
        yield pa.table({"row": range(row, row + len(records)), "record": records, "documents": documents,
                        TEXT_COLUMN: texts}, schema=SCHEMA)
        row += len(records)


def passages_from(batch: dict) -> tuple[list[tuple[Passage, str]], list[tuple[str, str, str]]]:
    """The (passage, origin) pairs of a batch of rows, and the documents read with them."""
    pairs = [pickle.loads(record) for record in batch["record"]]
    documents = [document for read in batch["documents"] for document in pickle.loads(read)]
    return pairs, documents
