"""Converting collections to the BEIR layout, so one runner serves them all."""

from __future__ import annotations

import json
from pathlib import Path

from ragline.engine.atomic import atomic_directory, refuse_overlap
from ragline.engine.data.corpus import read_corpus
from ragline.engine.data.topics import read_qrels, read_topics


def trec_to_beir(docs: Path, topics: Path, qrels: Path, out: Path, split: str = "test") -> dict[str, int]:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from a
    TREC collection (documents, topics, qrels). Returns the counts."""
    refuse_overlap(out, docs, topics, qrels)
    queries = read_topics(topics)
    judgements = read_qrels(qrels)
    counts = {"documents": 0, "queries": len(queries), "judgements": 0}
    with atomic_directory(out, "BEIR folder", recognise=lambda p: (p / "corpus.jsonl").is_file()) as tmp:
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
            for doc in read_corpus(docs, "trec"):
                f.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}, ensure_ascii=False) + "\n")
                counts["documents"] += 1
        with open(tmp / "queries.jsonl", "w", encoding="utf-8") as f:
            for qid, text in queries:
                f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
        (tmp / "qrels").mkdir()
        with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, judged in judgements.items():
                for docid, rel in judged.items():
                    f.write(f"{qid}\t{docid}\t{rel}\n")
                    counts["judgements"] += 1
    return counts
