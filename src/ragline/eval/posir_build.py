"""A position-controlled retrieval benchmark in the PosIR layout, built from
QA data with labelled evidence sentences (HotpotQA).

For every question, one document is assembled from real text: its first
supporting sentence (the evidence) among filler sentences drawn from the
distractor paragraphs of other questions, never a sentence that contains the
answer, so the evidence is the document's only link to the question. Four domains differ only in document
length (about 400, 900, 1400 and 1900 tokens, one per PosIR bucket); within a
domain, questions cycle through 20 evidence positions, so every position bin
is filled about equally. Each question appears once per domain, so no other
document repeats its evidence.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ragline.engine.atomic import atomic_directory, refuse_overlap
from ragline.engine.data.hotpotqa import HotpotQuestion, read_hotpotqa
from ragline.engine.lm.encoders import DEFAULT_ENCODER
from ragline.engine.lm.packaged import resolve_model_source
from ragline.eval.posir_metrics import BINS

LENGTHS = {"q1": 400, "q2": 900, "q3": 1400, "q4": 1900}
LANGUAGE = "eng-Latn"


def build_posir(source: Path, out: Path, tokenizer_name: str = DEFAULT_ENCODER, seed: int = 0,
                limit: int | None = None) -> dict:
    import pandas as pd
    from transformers import AutoTokenizer

    refuse_overlap(out, source)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(tokenizer_name))
    tokenizer.model_max_length = 1_000_000  # only counting tokens; no model sees these
    questions = [q for q in read_hotpotqa(source, limit) if q.supporting_sentences()]
    pool = _filler_pool(questions)
    counts = {}
    with atomic_directory(out, "PosIR set", recognise=lambda p: (p / LANGUAGE).is_dir()) as tmp:
        for domain, target in LENGTHS.items():
            rng = random.Random(f"{seed}-{domain}")
            positions = [(b + 0.5) / BINS for b in range(BINS)]  # bin centres
            queries, corpus, qrels = [], [], []
            for i, question in enumerate(questions):
                wanted = positions[i % BINS]
                doc, span = _assemble(i, question, pool, target, wanted, tokenizer, rng)
                doc_id, qid = f"{domain}-d{i}", f"{domain}-q{i}"
                corpus.append({"_id": doc_id, "text": doc})
                queries.append({
                    "_id": qid, "text": question.question, "pos_char_span": list(span),
                    "pos_char_length": len(doc), "pos_token_length": len(tokenizer.tokenize(doc)),
                    "source_id": question.id,
                })
                qrels.append({"query-id": qid, "corpus-id": doc_id, "score": 1})
            folder = tmp / LANGUAGE / f"hotpotqa-{domain}"
            (folder / "qrels").mkdir(parents=True)
            pd.DataFrame(queries).to_parquet(folder / "queries.parquet", index=False)
            pd.DataFrame(corpus).to_parquet(folder / "corpus.parquet", index=False)
            pd.DataFrame(qrels).to_parquet(folder / "qrels" / "test.parquet", index=False)
            counts[f"hotpotqa-{domain}"] = len(queries)
        (tmp / "build.json").write_text(json.dumps({
            "source": str(Path(source).resolve()), "tokenizer": tokenizer_name, "seed": seed,
            "target_tokens": LENGTHS, "bins": BINS, "domains": counts,
        }, indent=2) + "\n")
    return counts


def _filler_pool(questions: list[HotpotQuestion]) -> list[tuple[int, str]]:
    """Every distractor sentence, tagged with the index of its question."""
    pool = []
    for i, question in enumerate(questions):
        gold = set(question.gold_titles)
        pool.extend((i, s.strip()) for p in question.paragraphs if p.title not in gold for s in p.sentences if s.strip())
    return pool


def _assemble(index: int, question: HotpotQuestion, pool, target_tokens: int, relpos: float, tokenizer, rng) -> tuple[str, tuple[int, int]]:
    evidence = question.supporting_sentences()[0]
    answer = question.answer.lower().strip()
    budget = target_tokens - len(tokenizer.tokenize(evidence))
    filler: list[str] = []
    used = 0
    # Filler comes from other questions only: the question's own distractors
    # share its topic and would make the document findable without the evidence.
    for owner, sentence in rng.sample(pool, min(len(pool), 600)):
        if used >= budget:
            break
        if owner == index or (answer and answer in sentence.lower()):
            continue
        filler.append(sentence)
        used += len(tokenizer.tokenize(sentence))
    # Insert the evidence at the sentence boundary that puts its centre nearest the wanted position.
    total = sum(len(s) + 1 for s in filler) + len(evidence)
    best, best_error, prefix = 0, float("inf"), 0
    for j in range(len(filler) + 1):
        error = abs((prefix + len(evidence) / 2) / total - relpos)
        if error < best_error:
            best, best_error = j, error
        if j < len(filler):
            prefix += len(filler[j]) + 1
    before = " ".join(filler[:best])
    start = len(before) + (1 if before else 0)
    doc = " ".join(filler[:best] + [evidence] + filler[best:])
    return doc, (start, start + len(evidence))
