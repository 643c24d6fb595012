"""The ``ragline`` command line: index, query, search, run, ask, serve.

Stage families add their verbs through the ``ragline.cli`` entry-point group:
each entry is ``register(app, groups)``, where ``groups`` maps ``train`` and
``calibrate`` to the sub-commands they may extend. Families never import this
module (imports point from the CLI to them, not back)."""

from __future__ import annotations

import json
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ragline.engine import terminal
from ragline.engine.errors import RaglineError

app = typer.Typer(
    help="ragline: retrieval and RAG pipelines (BM25, dense, hybrid, and more).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Commands that make models (``ragline train cross-encoder``) are added here by plugins.
train_app = typer.Typer(help="Train the models a pipeline uses.", no_args_is_help=True)
app.add_typer(train_app, name="train")
# Commands that measure a model for a stage (``ragline calibrate attnrank``), also added by plugins.
calibrate_app = typer.Typer(help="Measure a model for the stages that need a profile of it.", no_args_is_help=True)
app.add_typer(calibrate_app, name="calibrate")
out = terminal.stdout()
err = terminal.stderr()

EncodingErrors = Annotated[str, typer.Option(
    "--encoding-errors", help="Input bytes that are not UTF-8: 'strict' (an error naming file:line) or 'replace' (read as U+FFFD).")]
Filters = Annotated[Optional[list[str]], typer.Option(
    "--filter", help="Metadata filter, e.g. 'year>=2020', 'lang in (en, de) and not draft=true'; repeatable (all must hold).")]
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray", metavar="auto|local|HOST:PORT", help="Spread the work over a Ray actor pool (needs ray): auto (RAY_ADDRESS, else the cluster started on this machine, else a new local one), local, or a cluster head's HOST:PORT.")]
ShardsRay = Annotated[Optional[str], typer.Option(
    "--ray", metavar="auto|local|HOST:PORT", help="A sharded index: search its shards on Ray, one actor per shard, one per node where there are several (needs ray).")]
MissingShards = Annotated[Optional[str], typer.Option(
    "--missing-shards", metavar="flag|fail", help="A sharded index: a shard that does not answer makes the results partial, flagged as such (flag, the default), or the command an error (fail).")]
RayWorkers = Annotated[Optional[int], typer.Option(
    "--workers", min=1, help="With --ray: actors in the pool (default: one per GPU, else one per CPU slot).")]


def _ray_workers(ray: Optional[str], workers: Optional[int]) -> Optional[int]:
    if workers is not None and ray is None:
        raise typer.BadParameter("only with --ray", param_hint="'--workers'")
    return workers


def _encoding_errors(value: str) -> str:
    if value not in ("strict", "replace"):
        raise typer.BadParameter(f"{value!r} is not 'strict' or 'replace'", param_hint="'--encoding-errors'")
    return value


@app.callback()
def options(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Say what is skipped, retried or falls back (-v); everything (-vv).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="Only errors.")] = False,
) -> None:
    """ragline: retrieval and RAG pipelines (BM25, dense, hybrid, and more)."""
    if quiet:
        level = logging.ERROR
    else:
        level = (logging.WARNING, logging.INFO)[verbose] if verbose < 2 else logging.DEBUG
    _log_to_stderr(level)


_LOG_HANDLER_NAME = "ragline-cli"


def _log_to_stderr(level: int) -> None:
    """ragline's library loggers to stderr at ``level`` (the library itself
    never configures logging; the command is the application that does)."""
    logger = logging.getLogger("ragline")
    for handler in [h for h in logger.handlers if h.get_name() == _LOG_HANDLER_NAME]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_LOG_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


@app.command()
def index(
    corpus: Annotated[Path, typer.Argument(help="Corpus file or folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Index folder to create; an existing ragline index there is replaced atomically, anything else is refused.")],
    bm25: Annotated[bool, typer.Option("--bm25", help="Build a BM25 (Lucene) component.")] = False,
    dense: Annotated[Optional[str], typer.Option("--dense", help="Build a dense component with this encoder (hub id, path, or 'default').")] = None,
    component: Annotated[Optional[list[str]], typer.Option("--component", help="Build this registered index component with its default settings (repeatable; any in the ragline.index_components entry-point group).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, beir, trec, jsonl or dir.")] = "auto",
    faiss: Annotated[str, typer.Option("--faiss", help="FAISS preset (flat, hnsw, ivfpq) or index_factory string.")] = "flat",
    encoder_backend: Annotated[Optional[str], typer.Option("--encoder-backend", help="What runs the dense encoder, for indexing and queries alike: torch (default), onnx or onnx-int8 (ONNX Runtime on the CPU, exported once; int8 is faster and slightly less exact).")] = None,
    window: Annotated[Optional[int], typer.Option(min=1, help="Chunk documents into passages of this many words.")] = None,
    overlap: Annotated[int, typer.Option(min=0, help="Words shared by consecutive chunks.")] = 0,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Lucene indexing threads.")] = None,
    encoding_errors: EncodingErrors = "strict",
    update: Annotated[bool, typer.Option("--update", help="Update the index at --out from CORPUS: add new ids, replace changed documents, keep unchanged ones (not re-encoded); built with its recorded settings.")] = False,
    delete: Annotated[Optional[Path], typer.Option("--delete", help="With --update: also remove the document ids in this file (one a line).")] = None,
    delete_missing: Annotated[bool, typer.Option("--delete-missing", help="With --update: CORPUS is the whole collection; remove documents it lacks.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a build of --out that was killed part-way (same corpus and settings) from its last committed batch; with none to continue, build from the start.")] = False,
    shards: Annotated[Optional[int], typer.Option("--shards", min=1, help="Build a sharded index: this many complete indexes, each over the documents whose id hashes to it, searched together as one (equal results).")] = None,
    ray: RayAddress = None,
    workers: RayWorkers = None,
) -> None:
    """Build an index over a corpus: BM25, dense, both (default), or any registered component; or update one (--update)."""
    from ragline.engine.index.build import build_index
    from ragline.engine.index.component import index_component
    from ragline.engine.lm.encoders import DEFAULT_ENCODER

    workers = _ray_workers(ray, workers)
    if update and ray is not None:
        raise typer.BadParameter("an update runs in one process (it encodes only new and changed passages)", param_hint="'--ray'")
    if update and resume:
        raise typer.BadParameter("an update is all or nothing; there is no build to resume", param_hint="'--resume'")
    if update and shards is not None:
        raise typer.BadParameter("an update keeps the index's shards (documents go to the shard that holds their id)",
                                 param_hint="'--shards'")
    if update:
        _update_index(corpus, out_dir, fmt, delete, delete_missing, _encoding_errors(encoding_errors),
                      settings_given=bm25 or dense is not None or bool(component) or window is not None or overlap
                      or faiss != "flat" or encoder_backend is not None)
        return
    if delete is not None or delete_missing:
        raise typer.BadParameter("only with --update", param_hint="'--delete' / '--delete-missing'")
    if window is not None and overlap >= window:
        raise typer.BadParameter(f"{overlap} must be smaller than --window ({window})", param_hint="'--overlap'")
    components: dict[str, dict] = {name: {} for name in component or [] if index_component(name)}
    if not bm25 and dense is None and not components:
        bm25, dense = True, "default"
    if encoder_backend is not None and dense is None:
        raise typer.BadParameter("only with a dense component (--dense)", param_hint="'--encoder-backend'")
    if bm25:
        components["bm25"] = {"threads": threads}
    if dense is not None:
        components["dense"] = {"encoder": DEFAULT_ENCODER if dense == "default" else dense, "factory": faiss,
                               "backend": encoder_backend or "torch"}
    options = dict(window=window, overlap=overlap, progress=sys.stderr.isatty(),
                   encoding_errors=_encoding_errors(encoding_errors), resume=resume, ray=ray, workers=workers)
    if shards is not None:
        from ragline.engine.index.sharded_build import build_sharded_index

        meta = build_sharded_index(corpus, out_dir, components, shards, fmt=fmt, **options)
    else:
        meta = build_index(corpus, out_dir, components, fmt=fmt, **options)
    out.print(
        f"[green]indexed[/] {meta['documents']:,} documents ({meta['passages']:,} passages) "
        f"into {out_dir}{f' as {shards} shards' if shards else ''} with {', '.join(meta['components'])}"
    )


def _update_index(corpus: Path, out_dir: Path, fmt: str, delete: Optional[Path], delete_missing: bool,
                  encoding_errors: str, settings_given: bool) -> None:
    from ragline.engine.index.update import read_ids, update_index

    if settings_given:
        raise typer.BadParameter("an update uses the settings the index was built with; leave out --bm25, --dense, --component, "
                                 "--faiss, --encoder-backend, --window and --overlap (or rebuild without --update)",
                                 param_hint="'--update'")
    ids = read_ids(delete, encoding_errors) if delete is not None else []
    meta = update_index(corpus, out_dir, fmt=fmt, delete=ids, delete_missing=delete_missing,
                        progress=sys.stderr.isatty(), encoding_errors=encoding_errors)
    change = meta["last_update"]
    out.print(
        f"[green]updated[/] {out_dir}: {change['added']:,} added, {change['replaced']:,} replaced, "
        f"{change['unchanged']:,} unchanged, {change['deleted']:,} deleted; now {meta['documents']:,} documents "
        f"({meta['passages']:,} passages, {change['passages_indexed']:,} indexed anew)"
    )


@app.command()
def query(
    index_dir: Annotated[Path, typer.Argument(help="Index folder.")],
    text: Annotated[str, typer.Argument(help="The query.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="How many passages to show.")] = 10,
    retriever: Annotated[str, typer.Option(help="auto, hybrid (every component of the index, fused), or one component: bm25, dense, or any registered.")] = "auto",
    filters: Filters = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ray: ShardsRay = None,
    missing_shards: MissingShards = None,
) -> None:
    """Retrieve passages for one query."""
    from ragline.engine.retrieval_pipeline import retrieval_pipeline

    if not text.strip():
        raise RaglineError("the query is empty")
    pipeline = retrieval_pipeline(str(index_dir), retriever, k=k, filter=filters, ray=ray,
                                  missing_shards=_missing_shards(missing_shards))
    result = pipeline.run([text])[0]
    _say_if_partial([result])
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return
    table = Table(title=f"{' + '.join(s.name for s in pipeline.stages)}: {text}", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("score", justify="right")
    table.add_column("passage")
    by_id = {p.id: p for p in result.passages}
    for hit in result.ranking[:k]:
        passage = by_id.get(hit.id)
        snippet = "" if passage is None else " ".join(passage.indexed_text().split())[:160]
        table.add_row(str(hit.rank), hit.id, f"{hit.score:.4f}", snippet)
    out.print(table)
    out.print(_timing_line(result))


def _missing_shards(value: Optional[str]) -> Optional[str]:
    if value not in (None, "flag", "fail"):
        raise typer.BadParameter(f"{value!r} is not 'flag' or 'fail'", param_hint="'--missing-shards'")
    return value


def _say_if_partial(results) -> None:
    """A warning on stderr for results that shards did not contribute to (JSON output also says ``partial``)."""
    missing = sorted({n for result in results for n in result.missing_shards()})
    if missing:
        partial = sum(bool(result.missing_shards()) for result in results)
        err.print(f"[yellow]partial:[/] shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} did not "
                  f"answer; {partial} of {len(results)} queries have only the other shards' hits")


@app.command()
def search(
    index_dir: Annotated[Path, typer.Argument(help="Index folder.")],
    topics: Annotated[Path, typer.Option("--topics", help="Topics: TREC, BEIR queries.jsonl, or qid<TAB>text.")],
    output: Annotated[Path, typer.Option("--output", help="TREC run file to write.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Results per query.")] = 1000,
    retriever: Annotated[str, typer.Option(help="auto, hybrid (every component of the index, fused), or one component: bm25, dense, or any registered.")] = "auto",
    tag: Annotated[str, typer.Option(help="Run tag (last column).")] = "ragline",
    filters: Filters = None,
    encoding_errors: EncodingErrors = "strict",
    ray: ShardsRay = None,
    missing_shards: MissingShards = None,
) -> None:
    """Run every topic through a retriever and write a TREC run file."""
    from ragline.engine.data.runfile import write_run
    from ragline.engine.data.topics import read_topics
    from ragline.engine.retrieval_pipeline import fold_to_documents, retrieval_pipeline
    from ragline.engine.types import Query

    pairs = read_topics(topics, _encoding_errors(encoding_errors))
    pipeline = retrieval_pipeline(str(index_dir), retriever, k=k, top_k=0, filter=filters, ray=ray,
                                  missing_shards=_missing_shards(missing_shards))
    results = pipeline.run([Query(id=qid, text=text) for qid, text in pairs])
    _say_if_partial(results)
    write_run(output, {q.id: fold_to_documents(q.ranking) for q in results}, tag=tag)
    out.print(f"[green]wrote[/] {output}: {len(results)} queries, up to {k} results each")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    queries: Annotated[Optional[Path], typer.Option("--queries", help="Topics file (TREC, BEIR queries.jsonl, qid<TAB>text).")] = None,
    query_text: Annotated[Optional[list[str]], typer.Option("--query", "-q", help="A query; repeatable.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Write one JSON object per query here.")] = None,
    encoding_errors: EncodingErrors = "strict",
    ray: RayAddress = None,
    workers: RayWorkers = None,
) -> None:
    """Run a whole pipeline from a YAML file over a set of queries (with --ray: its batches over a Ray actor pool)."""
    from ragline.engine.atomic import atomic_file
    from ragline.engine.data.topics import read_topics
    from ragline.engine.pipeline import Pipeline
    from ragline.engine.types import Query

    pairs = read_topics(queries, _encoding_errors(encoding_errors)) if queries else []
    items = [Query(id=qid, text=text) for qid, text in pairs]
    items += [Query(id=f"q{i}", text=t) for i, t in enumerate(query_text or [])]
    if not items:
        raise RaglineError("give queries with --queries FILE or --query TEXT")
    workers = _ray_workers(ray, workers)
    pipeline = Pipeline.load(config)
    if ray is not None:
        from ragline.engine.batch_run import run_on_ray

        results = run_on_ray(pipeline, items, ray, workers, progress=sys.stderr.isatty())
    else:
        results = pipeline.run(items)
    if output:
        with atomic_file(output) as f:
            for result in results:
                f.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        out.print(f"[green]wrote[/] {output}: {len(results)} queries")
        return
    for result in results:
        out.print(f"[bold]{result.id}[/] {result.text}")
        by_id = {p.id: p for p in result.passages}
        for hit in result.ranking[: len(result.passages)]:
            text = by_id[hit.id].text if hit.id in by_id else ""
            out.print(f"  {hit.rank:>3}. {hit.id}  {hit.score:.4f}  {' '.join(text.split())[:100]}")
        out.print(_timing_line(result))


@app.command()
def ask(
    index_dir: Annotated[Path, typer.Argument(help="Index folder.")],
    question: Annotated[str, typer.Argument(help="The question.")],
    pipeline_file: Annotated[Optional[Path], typer.Option("--pipeline", help="Pipeline YAML; stages that read an index and name none read INDEX_DIR. A 'generate' stage is added if it has none.")] = None,
    retriever: Annotated[str, typer.Option(help="Without --pipeline: auto, hybrid, or one component (bm25, dense, or any registered).")] = "auto",
    reranker: Annotated[Optional[str], typer.Option("--reranker", help="Without --pipeline: rerank with this cross-encoder (hub id or folder).")] = None,
    depth: Annotated[int, typer.Option(min=1, help="Without --pipeline: candidates retrieved (and reranked).")] = 50,
    passages: Annotated[int, typer.Option("--passages", "-k", min=1, help="Without --pipeline: passages shown to the generator.")] = 5,
    backend: Annotated[str, typer.Option(help="Without --pipeline: hf, vllm or http.")] = "hf",
    url: Annotated[Optional[str], typer.Option(help="Without --pipeline, for --backend http: the server's /v1 address.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Without --pipeline: the generator model (default SmolLM2-135M-Instruct).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Without --pipeline: answer length limit in tokens.")] = 128,
    stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
) -> None:
    """Answer a question from an index: retrieve, rerank, generate."""
    from ragline.cli.ask import answer_question, ask_pipeline

    if not question.strip():
        raise RaglineError("the question is empty")
    pipeline = ask_pipeline(str(index_dir), pipeline_file, retriever=retriever, reranker=reranker, depth=depth,
                            passages=passages, backend=backend, model=model, max_new_tokens=max_new_tokens,
                            options={"url": url} if url else None)
    on_text = None
    if stream and not as_json:
        def on_text(piece: str) -> None:
            out.print(piece, end="", highlight=False, markup=False, soft_wrap=True)

    result = answer_question(pipeline, question, on_text)
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return
    if stream:
        out.print()
    else:
        out.print(result.answer.text, highlight=False, markup=False, soft_wrap=True)
    cited = set(result.answer.cited)
    out.print()
    for number, passage in enumerate(result.passages, 1):
        mark = "[bold green]*[/]" if passage.id in cited else " "
        # Passage text is data, not markup: escape it, and keep one line per passage.
        snippet = escape(" ".join(passage.text.split())[:110])
        title = escape(passage.title or passage.id)
        out.print(f"{mark}\\[{number}] [bold]{title}[/] [dim]{snippet}[/]", highlight=False, soft_wrap=True)
    out.print(_timing_line(result))


@app.command()
def serve(
    pipeline_files: Annotated[list[str], typer.Option("--pipeline", help="Pipeline YAML to serve, named after the file (or NAME=FILE); repeatable.")],
    index_dir: Annotated[Optional[Path], typer.Option("--index", help="Stages that read an index and name none read this one.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but localhost wants --api-key-env.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long a request waits for others to share its pipeline batch.")] = 5.0,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests per pipeline batch at most (1: no batching).")] = 64,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting per pipeline; more are answered 429.")] = 256,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a request may take; longer is answered 504.")] = 60.0,
    max_k: Annotated[int, typer.Option(min=1, help="Largest k a search may ask for.")] = 100,
    max_tokens: Annotated[int, typer.Option(min=1, help="Largest max_tokens a request may ask for.")] = 1024,
    max_question_chars: Annotated[int, typer.Option(min=1, help="Longest question or query, in characters.")] = 4000,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body.")] = 1 << 20,
    shutdown_timeout: Annotated[float, typer.Option(min=0, help="On SIGTERM: seconds requests in flight may take to finish.")] = 30.0,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="Require 'Authorization: Bearer <the value of this environment variable>'.")] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request (uvicorn's access log).")] = False,
    docs: Annotated[bool, typer.Option("--docs", help="Serve /docs and /openapi.json (behind the token when there is one).")] = False,
    ray: ShardsRay = None,
    allowed_hosts: Annotated[Optional[list[str]], typer.Option("--allowed-hosts", help="A Host the server answers to besides localhost, 127.0.0.1, ::1 and --host (repeatable; a name or an address; '*' for any). Bound to every interface (--host 0.0.0.0 or ::) without it, the server answers any Host.")] = None,
) -> None:
    """Serve pipelines over HTTP: /v1/search, /v1/ask, OpenAI-compatible /v1/chat/completions."""
    from ragline.serve.settings import ServeSettings
    from ragline.serve.uvicorn_server import api_key_from, load_pipelines
    from ragline.serve.uvicorn_server import serve as run_server

    settings = ServeSettings(batch_wait_ms=batch_wait_ms, max_batch=max_batch, max_queue=max_queue,
                             request_timeout_s=timeout, max_k=max_k, max_tokens=max_tokens, max_question_chars=max_question_chars,
                             max_body_bytes=max_body_bytes,
                             shutdown_timeout_s=shutdown_timeout, api_key=api_key_from(api_key_env), docs=docs,
                             allowed_hosts=(*ServeSettings.allowed_hosts, host, *(allowed_hosts or (
                                 ["*"] if host in ("0.0.0.0", "::") else []))))
    pipelines = load_pipelines(pipeline_files, str(index_dir) if index_dir else None, ray=ray)
    run_server(pipelines, settings, host=host, port=port, access_log=access_log)


def _timing_line(result) -> str:
    parts = []
    for t in result.trace:
        part = f"{t.stage} {t.seconds * 1000:.0f} ms"
        if t.extra.get("ttft") is not None:
            part += f" (first token {t.extra['ttft'] * 1000:.0f} ms)"
        parts.append(part)
    return "[dim]" + " · ".join(parts) + "[/]"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every write in progress cleans up."""


_signal_received: list[int] = []


def _terminate(signum, frame) -> None:
    _signal_received.append(signum)
    raise Terminated()


INTERRUPTED = "interrupted: nothing was written (outputs are put in place only when complete)"


def main() -> None:
    """Entry point: user errors become a one-line message and an exit code."""
    import os
    import signal

    # No "Loading weights" bars from transformers or the hub: read when they
    # are imported, which only the verbs that load a model do.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # vLLM logs every step of its start to stdout, where answers and --json
    # go: its warnings go to stderr instead (its engine processes inherit this).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        for plugin in entry_points(group="ragline.cli"):
            plugin.load()(app, {"train": train_app, "calibrate": calibrate_app})
        # Outside standalone mode typer returns the exit code of an
        # interrupted command (130) instead of raising.
        code = app(standalone_mode=False)
    except RaglineError as error:
        err.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as stop:
        sys.exit(stop.exit_code)
    except typer.Abort as abort:
        if isinstance(abort.__cause__, KeyboardInterrupt):
            _interrupted()
        err.print(f"[red]aborted[/] ({type(abort.__cause__).__name__ if abort.__cause__ else 'no reason given'})")
        sys.exit(1)
    except Exception as error:
        # Usage errors (bad option values, unknown commands) from typer's own
        # click or from click itself: printed as click prints them.
        if hasattr(error, "show") and isinstance(getattr(error, "exit_code", None), int):
            error.show()
            sys.exit(error.exit_code)
        raise
    if code == 130:
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)


def _interrupted() -> None:
    err.print(f"[red]{INTERRUPTED}[/]", highlight=False)
    sys.exit(143 if _signal_received else 130)


if __name__ == "__main__":
    main()
