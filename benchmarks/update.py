"""Updating an index against rebuilding it (BM25 + dense MiniLM, flat FAISS).

1. Build an index over Vaswani less its last 1% of documents (the base).
2. Add that 1% with ``update_index`` (a corpus of just those documents);
   time it against a full rebuild over the whole corpus.
3. Delete 1% of the documents with ``Index.delete``; time it against a full
   rebuild over what remains.
4. Check that the updated indexes rank the 93 queries like the rebuilt ones
   (top-10 ids identical, largest score difference).

Everything runs in one process, after the base build has started the JVM and
loaded the encoder, so both sides are timed warm. Progress goes to stderr;
the last line is one JSON object with every figure.

    python benchmarks/update.py [--docs 2000]   # default: all 11,429 documents
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "vaswani"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_jsonl(path: Path, documents) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for doc in documents:
            f.write(json.dumps({"id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    return path


def timed(label: str, action) -> float:
    say(f"{label} ...")
    start = time.perf_counter()
    action()
    seconds = time.perf_counter() - start
    say(f"{label}: {seconds:.1f} s")
    return seconds


def ranking_difference(updated: Path, rebuilt: Path, texts: list[str]) -> dict[str, float]:
    from ragline.retrievers.bm25 import BM25
    from ragline.retrievers.dense import Dense

    figures = {}
    for retriever in (BM25, Dense):
        got = retriever(str(updated), k=10).search(texts)
        want = retriever(str(rebuilt), k=10).search(texts)
        same = sum([p for p, _ in g] == [p for p, _ in w] for g, w in zip(got, want))
        worst = max((abs(a - b) for g, w in zip(got, want) for (_, a), (_, b) in zip(g, w)), default=0.0)
        figures[f"{retriever.name}_queries_with_identical_top10"] = same
        figures[f"{retriever.name}_max_score_difference"] = float(f"{worst:.2e}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--docs", type=int, default=None, help="Use only the first N documents (default: all).")
    parser.add_argument("--work", type=Path, default=None, help="Folder for the indexes (default: a temp folder).")
    args = parser.parse_args()

    from ragline.engine.data.corpus import read_corpus
    from ragline.engine.data.topics import read_topics
    from ragline.engine.index.build import build_index
    from ragline.engine.index.index import Index
    from ragline.engine.index.update import update_index

    work = args.work or Path(tempfile.mkdtemp(prefix="ragline-update-"))
    work.mkdir(parents=True, exist_ok=True)
    documents = list(itertools.islice(read_corpus(args.data / "doc-text.trec"), args.docs))
    share = max(1, len(documents) // 100)
    base, added = documents[:-share], documents[-share:]
    deleted = [doc.id for doc in documents[::100][:share]]
    remaining = [doc for doc in documents if doc.id not in set(deleted)]
    corpus = {name: write_jsonl(work / f"{name}.jsonl", docs)
              for name, docs in (("base", base), ("added", added), ("full", documents), ("remaining", remaining))}
    components = {"bm25": {}, "dense": {}}
    texts = [text for _, text in read_topics(args.data / "query-text.trec")]
    figures: dict[str, object] = {"documents": len(documents), "changed_documents": share}

    figures["base_build_s"] = timed(f"building the base index ({len(base):,} documents)",
                                    lambda: build_index(corpus["base"], work / "idx", components))
    figures["add_update_s"] = timed(f"adding {share} documents with an update",
                                    lambda: update_index(corpus["added"], work / "idx"))
    figures["add_rebuild_s"] = timed(f"rebuilding over {len(documents):,} documents",
                                     lambda: build_index(corpus["full"], work / "rebuilt-full", components))
    figures.update({f"add_{k}": v for k, v in ranking_difference(work / "idx", work / "rebuilt-full", texts).items()})
    figures["delete_update_s"] = timed(f"deleting {share} documents with an update",
                                       lambda: Index(work / "idx").delete(deleted))
    figures["delete_rebuild_s"] = timed(f"rebuilding over {len(remaining):,} documents",
                                        lambda: build_index(corpus["remaining"], work / "rebuilt-remaining", components))
    figures.update({f"delete_{k}": v for k, v in ranking_difference(work / "idx", work / "rebuilt-remaining", texts).items()})
    for change in ("add", "delete"):
        figures[f"{change}_speedup"] = round(figures[f"{change}_rebuild_s"] / figures[f"{change}_update_s"], 1)
    for key, value in figures.items():
        if key.endswith("_s"):
            figures[key] = round(value, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
