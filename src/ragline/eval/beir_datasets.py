"""BEIR datasets: the folder layout, the official downloads, and BM25
reference figures to compare a run against.

A BEIR folder holds ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
A dataset name (``scifact``) maps to the official zip, whose MD5 is checked
before it is unpacked; offline, the error says where to put the data instead.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ragline.engine.errors import InputError, RaglineError

BASE_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"

# Archive MD5s as published in the BEIR repository's dataset table.
DATASET_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}

# nDCG@10 of BM25 over flat Lucene indexes (pyserini's reproductions, "2CR").
BM25_FLAT_NDCG10 = {
    "scifact": 0.6789,
    "nfcorpus": 0.3218,
    "fiqa": 0.2361,
    "arguana": 0.3970,
    "trec-covid": 0.5947,
    "scidocs": 0.1490,
}

# Datasets whose queries are themselves corpus documents: a hit on the query's
# own id is dropped, as pyserini's --remove-query does.
SELF_RETRIEVING = {"arguana", "quora"}


@dataclass(frozen=True)
class BeirDataset:
    root: Path
    name: str
    split: str

    @property
    def corpus(self) -> Path:
        return self.root / "corpus.jsonl"

    @property
    def queries(self) -> Path:
        return self.root / "queries.jsonl"

    @property
    def qrels(self) -> Path:
        return self.root / "qrels" / f"{self.split}.tsv"


def open_dataset(name_or_path: str, split: str = "test", cache: Path | None = None) -> BeirDataset:
    """A BEIR folder from a path, or from a dataset name (downloaded into ``cache``)."""
    path = Path(name_or_path)
    if not path.exists() and name_or_path in DATASET_MD5:
        cache = cache or Path.home() / ".cache" / "ragline" / "beir"
        path = cache / name_or_path
        if not path.exists():
            download(name_or_path, cache)
    if not path.is_dir():
        known = ", ".join(sorted(DATASET_MD5))
        raise InputError(f"no BEIR folder here, and not a known dataset name ({known})", path=path)
    dataset = BeirDataset(path, path.name, split)
    for required in (dataset.corpus, dataset.queries):
        if not required.is_file():
            raise InputError(f"a BEIR folder needs {required.name}", path=path)
    if not dataset.qrels.is_file():
        splits = sorted(p.stem for p in (path / "qrels").glob("*.tsv")) or ["none"]
        raise InputError(f"no qrels for split {split!r} (found: {', '.join(splits)})", path=path / "qrels")
    return dataset


def download(name: str, cache: Path) -> Path:
    """Fetch and unpack the official zip; verify its MD5 before unpacking.
    Nothing is left behind on failure."""
    url = f"{BASE_URL}/{name}.zip"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{name}-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as err:
            raise RaglineError(
                f"cannot download BEIR dataset {name!r} from {url} ({err}). "
                f"Offline, download it elsewhere, unzip it, and put the folder at {cache / name} "
                "or pass the folder's path instead of the name."
            ) from None
        digest = hashlib.md5(archive.read_bytes()).hexdigest()
        if digest != DATASET_MD5[name]:
            raise RaglineError(f"{url} has MD5 {digest}, expected {DATASET_MD5[name]}; not unpacked")
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp)
        shutil.move(str(Path(tmp) / name), cache / name)
    return cache / name
