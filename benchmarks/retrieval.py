"""Retrieval benchmark on Vaswani: the engine against the raw libraries it wraps.

Side by side, in one process, on the same index and the same queries:
- BM25 batch search: the engine's BM25 stage vs pyserini's LuceneSearcher.batch_search
  (raw side reads each hit's docid and score, which any consumer must do), and
  the bulk search alone (BM25.search, the same (docid, score) lists) vs the same,
  checked identical;
- dense search: the engine's Dense stage (encode + search + hits) vs
  SentenceTransformer.encode + FAISS search, and the search step alone
  (engine search_vectors vs faiss index.search);
- encoding: the engine's index-build encoding path vs one SentenceTransformer.encode call;
- indexing: wall time and peak resident memory of building each index, in a
  child process (the JVM runs inside it), on a 2,000-document subset and on
  the whole corpus;
- effectiveness: MAP and nDCG@10 of BM25, dense and hybrid (RRF) runs.

With ``--encoder-backends``, only the encoder backends instead: documents/s of
torch, onnx and onnx-int8 encoding the same documents, each one's embeddings'
cosine to torch's, and nDCG@10 / Recall@100 of a dense index built with each.

Timings are medians over interleaved repeats. Prints a table, then one JSON
line with every figure.

    python benchmarks/retrieval.py [--data ../shared/data/vaswani] [--repeats 5]
    python benchmarks/retrieval.py --encoder-backends [--backend-sample 1000] [--backend-docs N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(engine_fn, raw_fn, repeats: int) -> tuple[float, float, float, float, float]:
    """Run the two alternately, so drift and neighbours' load hit both alike.
    Returns median engine seconds, median raw seconds, and the median, lowest
    and highest of the per-pair throughput ratios (raw time / engine time)."""
    engine_fn(), raw_fn()  # warm caches, JIT, thread pools
    engine_times, raw_times = [], []
    for _ in range(repeats):
        engine_times.append(timed(engine_fn))
        raw_times.append(timed(raw_fn))
    ratios = sorted(r / e for e, r in zip(engine_times, raw_times))
    return statistics.median(engine_times), statistics.median(raw_times), statistics.median(ratios), ratios[0], ratios[-1]


def record(figures: dict, name: str, timing: tuple, count: int, unit: str = "qps") -> None:
    engine_s, raw_s, ratio, low, high = timing
    figures[f"{name}_engine_{unit}"] = round(count / engine_s, 1)
    figures[f"{name}_raw_{unit}"] = round(count / raw_s, 1)
    figures[f"{name}_throughput_ratio"] = round(ratio, 3)
    figures[f"{name}_ratio_range"] = [round(low, 3), round(high, 3)]


def build_in_child(corpus: Path, out: Path, components: dict) -> tuple[float, float]:
    """Build an index in a fresh process (the JVM and the encoder live inside
    it); return (seconds, the child's own peak RSS in MiB)."""
    code = (
        "import json, resource, sys; from ragline.engine.index.build import build_index; "
        "build_index(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", code, str(corpus), str(out), json.dumps(components)],
                           capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"index build failed:\n{child.stderr}")
    peak_kib = int(child.stdout.strip().splitlines()[-1])
    return seconds, peak_kib / 1024


ENCODER_BACKENDS = ("torch", "onnx", "onnx-int8")
PASSAGE_LENGTHS = {32: 384, 128: 128, 256: 64}  # tokens per passage: passages timed per backend and round


def encoder_backend_figures(corpus: Path, topics, qrels, work: Path, sample: int, limit: int | None,
                            repeats: int) -> dict:
    """The encoder backends side by side, all on the CPU. Speed: the first
    ``sample`` documents encoded as an index build encodes them, in rounds
    that take every backend in turn (neighbours' load hits all alike); a
    speedup is the median of the per-round ratios to torch. Quality: each
    backend's embeddings against torch's, and nDCG@10 / Recall@100 of a dense
    index built with each over the first ``limit`` documents (None: all)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ragline.engine import terminal
    from ragline.engine.data.corpus import read_corpus
    from ragline.engine.index.build import build_index
    from ragline.engine.lm.encoders import load_sentence_encoder
    from ragline.engine.types import Query
    from ragline.eval.metrics import mean_scores
    from ragline.retrievers.dense import Dense

    figures: dict = {"load_average_at_start": [round(load, 2) for load in os.getloadavg()]}
    models = {}
    for backend in ENCODER_BACKENDS:
        start = time.perf_counter()  # the onnx backends export once into the model cache on first use
        models[backend] = load_sentence_encoder("all-MiniLM-L6-v2", "cpu", backend)
        figures[f"load_{backend}_seconds"] = round(time.perf_counter() - start, 1)

    documents = [d.text for d in itertools.islice(read_corpus(corpus), sample)]
    # Vaswani's abstracts are short (~60 tokens); RAG chunks are longer, and a
    # backend's speed-up need not carry over: the same words cut into passages
    # of 32, 128 and 256 tokens too (fewer passages as they grow, ~equal work).
    tokenizer = models["torch"].tokenizer
    words = " ".join(documents).split()
    counted = documents[:200]
    tokens_per_word = (sum(len(ids) for ids in tokenizer(counted, add_special_tokens=False)["input_ids"])
                       / sum(len(text.split()) for text in counted))
    sets = {"abstracts": documents}
    for tokens, count in PASSAGE_LENGTHS.items():
        size = max(1, round((tokens - 2) / tokens_per_word))  # [CLS] and [SEP] are two of the tokens
        sets[f"{tokens}tok"] = [" ".join(words[i * size:(i + 1) * size]) for i in range(min(count, len(words) // size))]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=terminal.stderr(), disable=not sys.stderr.isatty(), transient=True) as bar:
        task = bar.add_task("encoding", total=(repeats + 1) * len(models) * sum(map(len, sets.values())))
        for name, texts in sets.items():
            seconds, vectors = _encode_in_rounds(models, texts, repeats, bar, task, name)
            suffix = "" if name == "abstracts" else f"_{name}"
            figures[f"encode{suffix}_documents"] = len(texts)
            figures[f"encode{suffix}_mean_tokens"] = round(statistics.mean(len(tokenizer(t)["input_ids"]) for t in texts), 1)
            for backend in ENCODER_BACKENDS:
                figures[f"encode{suffix}_{backend}_docs_per_s"] = round(len(texts) / statistics.median(seconds[backend]), 1)
                if backend == "torch":
                    continue
                ratios = sorted(t / b for t, b in zip(seconds["torch"], seconds[backend]))
                figures[f"encode{suffix}_{backend}_speedup"] = round(statistics.median(ratios), 2)
                figures[f"encode{suffix}_{backend}_speedup_range"] = [round(ratios[0], 2), round(ratios[-1], 2)]
                cosine = (vectors[backend] * vectors["torch"]).sum(axis=1)
                figures[f"encode{suffix}_{backend}_cosine_min"] = round(float(cosine.min()), 5)
                figures[f"encode{suffix}_{backend}_cosine_mean"] = round(float(cosine.mean()), 5)

    source = corpus
    if limit is not None:
        source = work / f"first-{limit}.jsonl"
        with open(source, "w") as f:
            for doc in itertools.islice(read_corpus(corpus), limit):
                f.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
    for backend in ENCODER_BACKENDS:
        index = work / f"idx-dense-{backend}"
        start = time.perf_counter()
        meta = build_index(source, index, {"dense": {"backend": backend, "device": "cpu"}}, progress=sys.stderr.isatty())
        figures[f"index_{backend}_docs_per_s"] = round(meta["documents"] / (time.perf_counter() - start), 1)
        results = Dense(str(index), k=1000).run([Query(qid, text) for qid, text in topics])
        scores = mean_scores(qrels, {q.id: {h.id: h.score for h in q.ranking} for q in results}, ["ndcg_cut_10", "recall_100"])
        figures[f"dense_{backend}_ndcg10"] = round(scores["ndcg_cut_10"], 4)
        figures[f"dense_{backend}_recall100"] = round(scores["recall_100"], 4)
    figures["backend_index_documents"] = meta["documents"]
    for backend in ENCODER_BACKENDS[1:]:
        for metric in ("ndcg10", "recall100"):
            figures[f"dense_{backend}_{metric}_delta"] = round(figures[f"dense_{backend}_{metric}"] - figures[f"dense_torch_{metric}"], 4)
    return figures


def _encode_in_rounds(models: dict, texts: list[str], repeats: int, bar, task, name: str):
    """Seconds per round for each backend, in rounds that take every backend
    in turn (neighbours' load hits all alike; round 0 warms up), and each
    backend's vectors."""
    import numpy as np

    from ragline.engine.lm.encoders import encode_texts

    chunks = [texts[i : i + 256] for i in range(0, len(texts), 256)]  # a moving bar
    seconds: dict[str, list[float]] = {backend: [] for backend in models}
    vectors = {}
    for round_number in range(repeats + 1):
        for backend, model in models.items():
            bar.update(task, description=f"{name}: encoding with {backend}, round {round_number}/{repeats}")
            start, parts = time.perf_counter(), []
            for chunk in chunks:
                parts.append(encode_texts(model, chunk))
                bar.advance(task, len(chunk))
            if round_number:
                seconds[backend].append(time.perf_counter() - start)
            vectors[backend] = np.concatenate(parts)
    return seconds, vectors


def report(figures: dict) -> None:
    """A table for people, then one JSON line of every figure (the last line)."""
    figures["cpu_count"] = os.cpu_count()
    figures["load_average"] = [round(load, 2) for load in os.getloadavg()]  # at the end: was the machine quiet?
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "vaswani")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the indexes (default: a temp folder).")
    parser.add_argument("--reuse", action="store_true", help="Reuse indexes already in --work (no indexing figures).")
    parser.add_argument("--encoder-backends", action="store_true",
                        help="Only compare the encoder backends (torch, onnx, onnx-int8): speed and effectiveness.")
    parser.add_argument("--backend-sample", type=int, default=1000, help="Documents timed per backend and round.")
    parser.add_argument("--backend-docs", type=int, default=None,
                        help="Index only the first N documents for the backends' effectiveness (default: all).")
    args = parser.parse_args()

    from ragline.engine.data.corpus import read_corpus
    from ragline.engine.data.topics import read_qrels, read_topics
    from ragline.engine.retrieval_pipeline import retrieval_pipeline
    from ragline.engine.types import Query
    from ragline.eval.metrics import mean_scores

    work = args.work or Path(tempfile.mkdtemp(prefix="ragline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = args.data / "doc-text.trec"
    topics = read_topics(args.data / "query-text.trec")
    qrels = read_qrels(args.data / "qrels")
    texts = [t for _, t in topics]
    figures: dict[str, float] = {"queries": len(topics)}
    if args.encoder_backends:
        figures.update(encoder_backend_figures(corpus, topics, qrels, work, args.backend_sample, args.backend_docs,
                                               max(2, args.repeats // 2)))
        report(figures)
        return

    # --- indexing: time and peak memory, small subset and whole corpus -------------
    subset = work / "subset.jsonl"
    with open(subset, "w") as f:
        for doc in itertools.islice(read_corpus(corpus), 2000):
            f.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
    for name, source in (("subset2000", subset), ("full", corpus)):
        if args.reuse and (work / f"idx-{name}" / "meta.json").exists():
            continue
        seconds, peak = build_in_child(source, work / f"idx-{name}", {"bm25": {}, "dense": {}})
        figures[f"index_{name}_seconds"] = round(seconds, 1)
        figures[f"index_{name}_peak_rss_mib"] = round(peak)
    index = str(work / "idx-full")
    figures["documents"] = json.loads((work / "idx-full" / "meta.json").read_text())["documents"]

    # --- BM25: engine stage vs pyserini batch_search ------------------------------
    from ragline.retrievers.bm25 import BM25

    bm25 = BM25(index, k=1000)
    bm25.warm_up()
    from ragline.retrievers.lucene_runtime import import_pyserini

    LuceneSearcher = import_pyserini("pyserini.search.lucene").LuceneSearcher

    raw_searcher = LuceneSearcher(str(Path(index) / "bm25"))
    raw_searcher.set_bm25(0.9, 0.4)
    threads = os.cpu_count() or 1
    qids = [str(i) for i in range(len(texts))]

    def raw_bm25(depth):
        results = raw_searcher.batch_search(texts, qids, k=depth, threads=threads)
        return [[(h.docid, h.score) for h in results[q]] for q in qids]

    # Most of the raw side's time is pyjnius turning each Java hit into a Python
    # object, which the engine's bulk searcher avoids (retrievers/java/); the
    # timings are noisy, hence twice the repeats.
    figures["bm25_bulk_identical_k1000"] = bm25.search(texts, k=1000) == raw_bm25(1000)
    timing = side_by_side(lambda: bm25.search(texts, k=1000), lambda: raw_bm25(1000), args.repeats * 2)
    record(figures, "bm25_bulk_k1000", timing, len(texts))
    for depth in (1000, 100):
        bm25.k = depth
        timing = side_by_side(
            lambda: bm25.run([Query(str(i), t) for i, t in enumerate(texts)]),
            lambda depth=depth: raw_bm25(depth),
            args.repeats * 2,
        )
        record(figures, f"bm25_k{depth}", timing, len(texts))

    # --- dense: engine stage vs SentenceTransformer + FAISS ------------------------
    import faiss

    from ragline.engine.lm.encoders import load_sentence_encoder
    from ragline.retrievers.dense import Dense

    dense = Dense(index, k=100)
    dense.warm_up()
    model = load_sentence_encoder("all-MiniLM-L6-v2")
    raw_index = faiss.read_index(str(Path(index) / "dense" / "faiss.index"))

    def raw_dense():
        vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        return raw_index.search(vectors, 100)

    timing = side_by_side(lambda: dense.run([Query(str(i), t) for i, t in enumerate(texts)]), raw_dense, args.repeats * 2)
    record(figures, "dense", timing, len(texts))

    vectors = dense.encode(texts)
    timing = side_by_side(lambda: dense.search_vectors(vectors, 100), lambda: raw_index.search(vectors, 100), args.repeats * 4)
    record(figures, "faiss_search", timing, len(texts))

    # --- encoding: the index-build path vs one SentenceTransformer.encode call -----
    from ragline.engine.types import Passage
    from ragline.retrievers.dense import DenseIndexBuilder

    passages = [Passage(d.id, d.id, d.text) for d in itertools.islice(read_corpus(corpus), 2000)]
    builder = DenseIndexBuilder()
    shutil.rmtree(work / "encode-bench", ignore_errors=True)
    builder.open(work / "encode-bench")

    def engine_encode():
        for start in range(0, len(passages), 4096):
            builder.add(passages[start : start + 4096])

    doc_texts = [p.text for p in passages]
    timing = side_by_side(
        engine_encode,
        lambda: model.encode(doc_texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True),
        max(3, args.repeats // 2),
    )
    builder.abort()
    shutil.rmtree(work / "encode-bench", ignore_errors=True)
    record(figures, "encode", timing, len(passages), unit="docs_per_s")

    # --- effectiveness -------------------------------------------------------------
    for retriever in ("bm25", "dense", "hybrid"):
        pipeline = retrieval_pipeline(index, retriever, k=1000, top_k=0)
        results = pipeline.run([Query(qid, text) for qid, text in topics])
        run = {q.id: {h.id: h.score for h in q.ranking} for q in results}
        scores = mean_scores(qrels, run, ["map", "ndcg_cut_10", "recall_100"])
        figures[f"{retriever}_map"] = round(scores["map"], 4)
        figures[f"{retriever}_ndcg10"] = round(scores["ndcg_cut_10"], 4)
        figures[f"{retriever}_recall100"] = round(scores["recall_100"], 4)

    report(figures)


if __name__ == "__main__":
    main()
