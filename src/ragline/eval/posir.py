"""PosIR: does a retriever find evidence equally well wherever it sits in a document?

Layout: ``<root>/<lang-Script>/<domain>/`` with ``queries.parquet`` (``_id``,
``text``, ``pos_char_span`` [start, end], ``pos_char_length``,
``pos_token_length``), ``corpus.parquet`` (``_id``, ``text``) and
``qrels/test.parquet`` (``query-id``, ``corpus-id``, ``score``). Cross-lingual
mode searches queries of each language against the English corpus of the domain.

Each domain is searched exhaustively (exact inner product over every document)
with a sentence-transformers encoder; per-query nDCG@10 comes from pytrec_eval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragline.engine.errors import InputError
from ragline.engine.optional import import_optional
from ragline.eval.metrics import per_query
from ragline.eval.posir_metrics import length_bucket, position_report, relative_position

ENGLISH = "eng-Latn"
QUERY_COLUMNS = ("_id", "text", "pos_char_span", "pos_char_length", "pos_token_length")
CORPUS_COLUMNS = ("_id", "text")
QRELS_COLUMNS = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class Domain:
    language: str
    name: str
    path: Path


def discover(root: Path, languages: Sequence[str] | None = None) -> list[Domain]:
    if not root.is_dir():
        raise InputError("PosIR root folder not found", path=root)
    domains = [
        Domain(lang.name, domain.name, domain)
        for lang in sorted(root.iterdir()) if lang.is_dir()
        for domain in sorted(lang.iterdir()) if (domain / "queries.parquet").exists()
    ]
    if languages:
        missing = set(languages) - {d.language for d in domains}
        if missing:
            raise InputError(f"no PosIR data for language(s) {sorted(missing)}", path=root)
        domains = [d for d in domains if d.language in languages]
    if not domains:
        raise InputError("no <lang-Script>/<domain>/queries.parquet found", path=root)
    return domains


def read_table(path: Path, columns: Sequence[str]):
    pd = import_optional("pandas", needed_for="PosIR")
    import_optional("pyarrow", needed_for="PosIR's parquet files")
    if not path.is_file():
        raise InputError("missing file", path=path)
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise InputError(f"not a readable parquet file ({err.__class__.__name__}: {err})", path=path) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"missing column(s) {missing}", path=path)
    if frame.empty:
        raise InputError("the table is empty", path=path)
    return frame


def query_rows(domain_path: Path) -> list[dict]:
    path = domain_path / "queries.parquet"
    frame = read_table(path, QUERY_COLUMNS)
    rows = []
    for i, record in enumerate(frame.itertuples(index=False)):
        values = dict(zip(frame.columns, record))
        span = values["pos_char_span"]
        try:
            start, end = int(span[0]), int(span[1])
            relpos = relative_position(start, end, int(values["pos_char_length"]))
            bucket = length_bucket(int(values["pos_token_length"]))
        except (TypeError, ValueError, IndexError) as err:
            raise InputError(f"row {i}: bad position fields ({err})", path=path) from None
        if not str(values["text"]).strip():
            raise InputError(f"row {i}: empty query text", path=path)
        rows.append({"qid": str(values["_id"]), "text": str(values["text"]), "relpos": relpos, "bucket": bucket})
    return rows


def evaluate_domain(domain: Domain, model, corpus_path: Path, batch_size: int = 32) -> list[dict]:
    """Per-query rows with ``ndcg`` added, for one domain (and corpus)."""
    from ragline.engine.lm.encoders import encode_texts

    queries = query_rows(domain.path)
    corpus = read_table(corpus_path / "corpus.parquet", CORPUS_COLUMNS)
    qrels_frame = read_table(domain.path / "qrels" / "test.parquet", QRELS_COLUMNS)
    qrels: dict[str, dict[str, int]] = {}
    for qid, did, score in qrels_frame[list(QRELS_COLUMNS)].itertuples(index=False):
        qrels.setdefault(str(qid), {})[str(did)] = int(score)
    doc_ids = [str(x) for x in corpus["_id"]]
    doc_vectors = encode_texts(model, [str(t) for t in corpus["text"]], batch_size)
    query_vectors = encode_texts(model, [q["text"] for q in queries], batch_size)
    scores = query_vectors @ doc_vectors.T
    k = min(100, len(doc_ids))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    run = {q["qid"]: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(queries)}
    ndcg = per_query(qrels, run, ["ndcg_cut_10"])
    return [{**q, "ndcg": ndcg.get(q["qid"], {}).get("ndcg_cut_10", 0.0)} for q in queries if q["qid"] in qrels]


def evaluate_posir(root: Path, encoder: str, languages: Sequence[str] | None = None, cross_lingual: bool = False,
                   batch_size: int = 32, max_seq_length: int | None = None) -> dict:
    """``{"rows": {lang: [...]}, "report": {lang: position_report}}``."""
    from ragline.engine.lm.encoders import load_sentence_encoder

    model = load_sentence_encoder(encoder)
    # The encoder is shared with the rest of the process: change its length
    # limit for this evaluation only.
    default_length = model.max_seq_length
    rows: dict[str, list[dict]] = {}
    try:
        if max_seq_length:
            model.max_seq_length = max_seq_length
        for domain in discover(root, languages):
            corpus_path = root / ENGLISH / domain.name if cross_lingual else domain.path
            for row in evaluate_domain(domain, model, corpus_path, batch_size):
                rows.setdefault(domain.language, []).append({**row, "domain": domain.name})
    finally:
        model.max_seq_length = default_length
    return {
        "encoder": encoder,
        "max_seq_length": max_seq_length or default_length,
        "cross_lingual": cross_lingual,
        "rows": rows,
        "report": {lang: position_report(lang_rows) for lang, lang_rows in rows.items()},
    }
