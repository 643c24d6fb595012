"""Evaluation verbs of the ``ragline`` command: ``eval``, ``convert`` and
``build``. The CLI loads this through the ``ragline.cli`` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ragline.engine import terminal

eval_app = typer.Typer(help="Evaluate pipelines on BEIR, PosIR and QA data.", no_args_is_help=True)
convert_app = typer.Typer(help="Convert collections between formats.", no_args_is_help=True)
build_app = typer.Typer(help="Build evaluation sets.", no_args_is_help=True)
out = terminal.stdout()
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray", metavar="auto|local|HOST:PORT", help="Run the pipeline's batches on a Ray actor pool (needs ray): auto, local, or a cluster head's HOST:PORT.")]
RayWorkers = Annotated[Optional[int], typer.Option(
    "--workers", min=1, help="With --ray: actors in the pool (default: one per GPU, else one per CPU slot).")]
# What `eval qa --out` writes, and `eval compare` reads.
QA_ROWS, QA_SUMMARY = "per_question.jsonl", "summary.json"


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.add_typer(eval_app, name="eval")
    app.add_typer(convert_app, name="convert")
    app.add_typer(build_app, name="build")


def _pipeline(index: Optional[Path], pipeline: Optional[Path], retriever: str, k: int, corpus: Path | None,
              ray: Optional[str] = None, workers: Optional[int] = None):
    """A pipeline from YAML, or a named retriever over ``index`` (built from
    ``corpus`` first when the folder does not exist yet, on Ray with ``ray``)."""
    from ragline.engine.errors import InputError
    from ragline.engine.pipeline import Pipeline
    from ragline.engine.retrieval_pipeline import retrieval_pipeline

    if pipeline is not None:
        return Pipeline.load(pipeline)
    if index is None:
        raise InputError("give --index DIR (built if absent) or --pipeline CONFIG.yaml")
    if not index.exists() and corpus is not None:
        from ragline.engine.index.build import build_index
        from ragline.engine.index.component import index_component

        # A component's builder defaults are its defaults here too; hybrid
        # (and auto's first choice) builds the two built-in components.
        wanted = {"hybrid": ["bm25", "dense"], "auto": ["bm25"]}.get(retriever, [retriever])
        components = {name: {} for name in wanted if index_component(name)}
        out.print(f"building {', '.join(wanted)} index at {index}")
        build_index(corpus, index, components, ray=ray, workers=workers)
    return retrieval_pipeline(str(index), retriever, k=k, top_k=0)


@eval_app.command("beir")
def eval_beir(
    data: Annotated[str, typer.Argument(help="BEIR folder, or a dataset name (scifact, nfcorpus, ...) to download.")],
    index: Annotated[Optional[Path], typer.Option(help="Index folder; built from the corpus if absent.")] = None,
    pipeline: Annotated[Optional[Path], typer.Option(help="Pipeline YAML (instead of --index/--retriever).")] = None,
    retriever: Annotated[str, typer.Option(help="auto, hybrid (every component of the index, fused), or one component: bm25, dense, or any registered.")] = "auto",
    split: Annotated[str, typer.Option(help="qrels split.")] = "test",
    k: Annotated[int, typer.Option("--k", min=1, help="Results per query.")] = 1000,
    metrics: Annotated[str, typer.Option(help="Comma-separated, e.g. nDCG@10,Recall@100,MAP@100.")] = "nDCG@10,Recall@100,MAP@100",
    remove_query: Annotated[Optional[bool], typer.Option("--remove-query/--keep-query", help="Drop hits on the query's own id (default: on for arguana, quora).")] = None,
    results: Annotated[Optional[Path], typer.Option("--out", help="Folder for run.trec, per_query.jsonl, summary.json.")] = None,
    ray: RayAddress = None,
    workers: RayWorkers = None,
) -> None:
    """Score a retriever or pipeline on a BEIR dataset (with --ray: its batches on a Ray actor pool)."""
    from ragline.eval.beir_datasets import open_dataset
    from ragline.eval.beir_runner import evaluate_beir
    from ragline.eval.report import check_results_folder, print_metrics

    if results:
        check_results_folder(results)
    dataset = open_dataset(data, split)
    if workers is not None and ray is None:
        raise typer.BadParameter("only with --ray", param_hint="'--workers'")
    pipe = _pipeline(index, pipeline, retriever, k, dataset.corpus, ray, workers)
    if ray is not None:
        import sys

        from ragline.engine.batch_run import OnRay

        pipe = OnRay(pipe, ray, workers, progress=sys.stderr.isatty())
    names = [m for m in metrics.split(",") if m.strip()]
    evaluation, summary = evaluate_beir(dataset, pipe, names, results, remove_query)
    print_metrics(out, f"{dataset.name} ({split}, {summary['queries']} queries)", evaluation.means, summary["reference"])
    if results:
        out.print(f"[green]wrote[/] {results}/run.trec, per_query.jsonl, summary.json")


@convert_app.command("trec-to-beir")
def convert_trec_to_beir(
    docs: Annotated[Path, typer.Option(help="TREC documents (file or folder).")],
    topics: Annotated[Path, typer.Option(help="TREC topics.")],
    qrels: Annotated[Path, typer.Option(help="TREC qrels.")],
    folder: Annotated[Path, typer.Option("--out", help="BEIR folder to write.")],
    split: Annotated[str, typer.Option(help="Name of the qrels split.")] = "test",
) -> None:
    """Write a TREC collection in the BEIR layout."""
    from ragline.eval.convert import trec_to_beir

    counts = trec_to_beir(docs, topics, qrels, folder, split)
    out.print(f"[green]wrote[/] {folder}: {counts['documents']:,} documents, {counts['queries']} queries, "
              f"{counts['judgements']:,} judgements")


@eval_app.command("posir")
def eval_posir(
    root: Annotated[Path, typer.Argument(help="PosIR root: <lang-Script>/<domain>/{queries,corpus}.parquet, qrels/test.parquet.")],
    encoder: Annotated[Optional[list[str]], typer.Option(help="Encoder (hub id, path, packaged name); repeat to compare (default all-MiniLM-L6-v2).")] = None,
    langs: Annotated[Optional[str], typer.Option(help="Comma-separated languages, e.g. eng-Latn,deu-Latn.")] = None,
    cross_lingual: Annotated[bool, typer.Option(help="Search every language's queries against the English corpus.")] = False,
    max_seq_length: Annotated[Optional[int], typer.Option(min=1, help="Override the encoder's input length limit.")] = None,
    results: Annotated[Optional[Path], typer.Option("--out", help="Folder for per_query.jsonl, summary.json, position.png.")] = None,
) -> None:
    """Retrieval quality against the position of the evidence in the document."""
    from rich.table import Table

    from ragline.eval.posir import evaluate_posir
    from ragline.eval.posir_plot import plot_position_bias
    from ragline.eval.report import check_results_folder, results_folder, write_json, write_jsonl

    if results:
        check_results_folder(results)  # before the evaluation, not after it
    languages = [x.strip() for x in langs.split(",")] if langs else None
    runs = {name: evaluate_posir(root, name, languages, cross_lingual, max_seq_length=max_seq_length) for name in encoder or ["all-MiniLM-L6-v2"]}
    table = Table(title="PosIR position bias")
    for column in ("encoder", "language", "set", "queries", "nDCG@10", "binned", "PSI", "slope"):
        table.add_column(column, justify="left" if column in ("encoder", "language", "set") else "right")
    for name, result in runs.items():
        for lang, report in result["report"].items():
            for part, stats in report.items():
                table.add_row(name, lang, part, str(stats["queries"]), f"{stats['mean_ndcg10']:.4f}",
                              f"{stats['binned_ndcg10']:.4f}", f"{stats['psi']:.3f}", f"{stats['slope']:+.3f}")
    out.print(table)
    if results:
        with results_folder(results) as folder:
            write_jsonl(folder / "per_query.jsonl", (
                {"encoder": name, "language": lang, **row}
                for name, result in runs.items() for lang, rows in result["rows"].items() for row in rows
            ))
            write_json(folder / "summary.json", {name: {k: v for k, v in result.items() if k != "rows"} for name, result in runs.items()})
            panels = {f"{name} · {lang}": report for name, result in runs.items() for lang, report in result["report"].items()}
            plot_position_bias(panels, folder / "position.png")
        out.print(f"[green]wrote[/] {results}/per_query.jsonl, summary.json, position.png")


@build_app.command("posir")
def build_posir_command(
    source: Annotated[Path, typer.Option("--from", help="HotpotQA-format JSONL with supporting facts.")],
    folder: Annotated[Path, typer.Option("--out", help="PosIR root folder to write.")],
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N questions.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the choice of filler text.")] = 0,
) -> None:
    """Build a position-controlled PosIR benchmark from QA data with evidence labels."""
    from ragline.eval.posir_build import build_posir

    counts = build_posir(source, folder, seed=seed, limit=limit)
    out.print(f"[green]wrote[/] {folder}: " + ", ".join(f"{d} ({n} queries)" for d, n in counts.items()))


@eval_app.command("qa")
def eval_qa(
    data: Annotated[Path, typer.Argument(help="HotpotQA-format JSONL.")],
    pipeline: Annotated[Optional[Path], typer.Option(help="Pipeline YAML; without one the raw candidates are scored.")] = None,
    setting: Annotated[str, typer.Option(help="distractor (own 10 paragraphs), gold (only the gold ones) or open (shared index).")] = "distractor",
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N questions.")] = None,
    complete_only: Annotated[bool, typer.Option(help="Only questions whose supporting facts are all in their context.")] = False,
    results: Annotated[Optional[Path], typer.Option("--out", help="Folder for per_question.jsonl and summary.json.")] = None,
    ray: RayAddress = None,
    workers: RayWorkers = None,
) -> None:
    """Score a RAG pipeline on QA data: answers, the gold answer's likelihood, evidence kept, context size, latency.
    With --ray the pipeline's batches run on a Ray actor pool; the gold answers are scored here."""
    import sys

    from rich.table import Table

    from ragline.engine.data.hotpotqa import read_hotpotqa
    from ragline.engine.pipeline import Pipeline
    from ragline.eval.qa import evaluate_qa
    from ragline.eval.report import (
        check_results_folder,
        package_versions,
        pipeline_provenance,
        results_folder,
        write_json,
        write_jsonl,
    )

    if results:
        check_results_folder(results)
    if (workers is not None and ray is None) or (ray is not None and pipeline is None):
        raise typer.BadParameter("only with --ray and a --pipeline", param_hint="'--ray' / '--workers'")
    questions = read_hotpotqa(data, limit)
    pipe = Pipeline.load(pipeline) if pipeline else None
    if ray is not None:
        from ragline.engine.batch_run import OnRay

        pipe = OnRay(pipe, ray, workers, progress=sys.stderr.isatty())
    rows, summary = evaluate_qa(questions, pipe, setting, complete_only, progress=sys.stderr.isatty())
    intervals = summary["intervals"]
    table = Table(title=f"QA ({setting}, {summary['questions']} questions)", caption=summary["interval_method"])
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("95% interval", justify="right")
    for key in ("em", "f1", "answer_nll", "support_recall", "gold_paragraph_recall", "tokens_before", "tokens_after",
                "compression_ratio", "ttft"):
        value = summary[key]
        table.add_row(key, "n/a (no answers generated)" if value is None and key in ("em", "f1") else _number(value),
                      _interval(intervals.get(key)))
    for stage, seconds in summary["stage_seconds"].items():
        table.add_row(f"{stage} s/question", _number(seconds), _interval(intervals["stage_seconds"].get(stage)))
    out.print(table)
    if results:
        with results_folder(results) as folder:
            write_jsonl(folder / QA_ROWS, rows)
            write_json(folder / QA_SUMMARY, {**summary, "data": str(data.resolve()), "setting": setting,
                                              "config": pipeline_provenance(pipe) if pipe else None,
                                              "versions": package_versions()})
        out.print(f"[green]wrote[/] {results}/{QA_ROWS}, {QA_SUMMARY}")


@eval_app.command("compare")
def eval_compare(
    run_a: Annotated[Path, typer.Argument(help="An `eval qa --out` folder: the baseline (A).")],
    run_b: Annotated[Path, typer.Argument(help="Another `eval qa --out` folder (B), compared against A.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Compare two `eval qa` runs question by question: mean difference B−A with a paired
    bootstrap 95% interval, sign-test p-value, and B's wins/ties/losses for every metric."""
    import json

    from rich.table import Table

    from ragline.eval.qa import compare_runs

    comparison = compare_runs(_qa_rows(run_a), _qa_rows(run_b))
    settings = [_qa_setting(run) for run in (run_a, run_b)]
    comparison.update(run_a=str(run_a), run_b=str(run_b))
    if None not in settings and settings[0] != settings[1]:
        comparison["warning"] = f"the runs used different settings ({settings[0]} and {settings[1]})"
    if as_json:
        out.print(json.dumps(comparison, indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title=f"B = {run_b} against A = {run_a}", caption=comparison["interval_method"] + "; sign test, ties dropped")
    for column in ("metric", "better", "n", "mean A", "mean B", "B−A", "95% interval", "p (sign)", "B wins/ties/losses"):
        table.add_column(column, justify="left" if column in ("metric", "better") else "right")
    for name, m in comparison["metrics"].items():
        table.add_row(name, m["better"] or "?", str(m["n"]), _number(m["mean_a"]), _number(m["mean_b"]),
                      _number(m["difference"], signed=True), _interval(m["interval"], signed=True), _p_value(m["p"]),
                      f"{m['wins']}/{m['ties']}/{m['losses']}")
    out.print(f"paired {comparison['paired']} questions by id; {comparison['only_a']} only in A, "
              f"{comparison['only_b']} only in B", highlight=False)
    if "warning" in comparison:
        out.print(f"[yellow]note:[/] {comparison['warning']}", highlight=False)
    out.print(table)


def _qa_rows(folder: Path) -> list[dict]:
    """The per-question rows of an ``eval qa --out`` folder."""
    from ragline.engine.errors import InputError
    from ragline.eval.report import read_jsonl

    if not folder.is_dir():
        raise InputError("no such run folder (give an `eval qa --out` folder)", folder)
    if not (folder / QA_ROWS).is_file():
        raise InputError(f"not an `eval qa --out` folder: it has no {QA_ROWS}", folder)
    return read_jsonl(folder / QA_ROWS)


def _qa_setting(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / QA_SUMMARY).read_text(encoding="utf-8")).get("setting")
    except (OSError, ValueError, AttributeError):  # the summary is optional here
        return None


def _number(value: float | None, signed: bool = False) -> str:
    return "n/a" if value is None else f"{value:+.4f}" if signed else f"{value:.4f}"


def _p_value(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _interval(interval, signed: bool = False) -> str:
    return "" if interval is None else f"[{_number(interval[0], signed)}, {_number(interval[1], signed)}]"


@convert_app.command("hotpotqa-corpus")
def convert_hotpotqa_corpus(
    data: Annotated[Path, typer.Argument(help="HotpotQA-format JSONL.")],
    corpus: Annotated[Path, typer.Option("--out", help="JSONL corpus to write (one paragraph per title; id = title with _ for spaces).")],
) -> None:
    """Every distinct paragraph of a HotpotQA file as a corpus, for the open QA setting."""
    from ragline.engine.data.hotpotqa import paragraph_corpus, read_hotpotqa
    from ragline.eval.report import write_jsonl

    records = paragraph_corpus(read_hotpotqa(data))
    write_jsonl(corpus, records)
    out.print(f"[green]wrote[/] {corpus}: {len(records):,} paragraphs")
