"""ragline never destroys a user's files: outputs replace only what ragline
wrote, never overlap their input, clean up after interrupted builds (Ctrl-C,
SIGTERM, SIGKILL at any moment) and honour the umask."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ragline.engine.atomic import MARKER, atomic_directory
from ragline.engine.errors import InputError


def ragline(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "ragline.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path → sha256), to prove nothing changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def user_folder(tmp_path):
    """A user's project: code, notes and a docs/ corpus."""
    (tmp_path / "main.py").write_text("print('my code')\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Alpha\nAlpha particles and beta decay.\n")
    (docs / "b.md").write_text("# Beta\nBeta decay emits electrons.\n")
    return tmp_path


@pytest.mark.parametrize("out", [".", "notes", "main.py", "docs", "docs/idx"])
def test_index_refuses_to_replace_what_ragline_did_not_write(user_folder, out):
    before = tree_digest(user_folder)
    result = ragline("index", "docs", "--out", out, "--bm25", cwd=user_folder)
    assert result.returncode == 2, result.stderr
    assert "refusing" in result.stderr or "overlaps the input" in result.stderr
    assert tree_digest(user_folder) == before
    assert not [p for p in user_folder.iterdir() if ".building-" in p.name]


def test_an_index_and_an_empty_folder_are_replaced(user_folder):
    (user_folder / "empty").mkdir()
    assert ragline("index", "docs", "--out", "empty", "--bm25", cwd=user_folder).returncode == 0
    again = ragline("index", "docs", "--out", "empty", "--bm25", cwd=user_folder)
    assert again.returncode == 0, again.stderr
    assert (user_folder / "empty" / "meta.json").is_file() and (user_folder / "empty" / MARKER).is_file()


def test_an_index_from_before_the_marker_is_recognised_by_its_meta(tmp_path):
    old = tmp_path / "idx"
    old.mkdir()
    (old / "meta.json").write_text("{}")
    with atomic_directory(old, "index", recognise=lambda p: (p / "meta.json").is_file()) as tmp:
        (tmp / "meta.json").write_text('{"new": true}')
    assert (old / "meta.json").read_text() == '{"new": true}'
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "meta.json").write_text("{}")
    with pytest.raises(InputError, match="refusing"):
        with atomic_directory(tmp_path / "mine", "BEIR folder"):
            pass


def test_outputs_follow_the_umask(user_folder):
    result = subprocess.run(["sh", "-c", f"umask 022 && {sys.executable} -m ragline.cli index docs --out idx --bm25"],
                            cwd=user_folder, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (user_folder / "idx").stat().st_mode & 0o777 == 0o755


def test_interrupted_build_says_so_exits_130_and_leaves_nothing(tmp_path, vaswani):
    """Ctrl-C (and SIGTERM: 143) during a BM25 + dense build of 11k documents."""
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        process = subprocess.Popen(
            [sys.executable, "-m", "ragline.cli", "index", vaswani / "doc-text.trec", "--out", tmp_path / "idx"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(12)  # past start-up: the JVM and the encoder are running
        process.send_signal(sig)
        out, err = process.communicate(timeout=120)
        assert process.returncode == code, err
        assert "interrupted: nothing was written" in err
        assert [p.name for p in tmp_path.iterdir()] == []


# A build whose process kills itself (SIGKILL: no clean-up at all) at one
# chosen step of the write; ``step`` names the function it dies in.
KILL_AT_STEP = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from swap_kill_points import die, install
    from ragline.engine.index import build
    from ragline.engine.index.component import IndexBuilder, IndexComponent
    from ragline.engine.registry import INDEX_COMPONENTS, register

    class Null(IndexBuilder):  # an index component that costs nothing: the test is about the folder
        name = "null"
        def open(self, folder): folder.mkdir(); (folder / "data").write_text("new")
        def add(self, passages, previous_rows=None): pass
        def close(self): return {{"count": 0}}
        def abort(self): pass

    register(INDEX_COMPONENTS, "null", IndexComponent(Null))
    step, exchange = sys.argv[1], sys.argv[2] == "exchange"
    install(step, {out!r}, exchange)
    if step == "while_feeding":
        build._feed = lambda *a, **k: die()
    build.build_index({corpus!r}, {out!r}, {{"null": {{}}}})
""")


STEPS = ["while_feeding", "before_swap", "between_renames", "before_removing_the_old"]


@pytest.mark.parametrize("exchange", ["exchange", "two-renames"])
def test_sigkill_at_any_step_keeps_the_previous_index_and_the_next_build_cleans_up(user_folder, exchange):
    out = user_folder / "idx"
    first = ragline("index", "docs", "--out", "idx", "--bm25", cwd=user_folder)
    assert first.returncode == 0, first.stderr
    outside = {k: v for k, v in tree_digest(user_folder).items() if not k.startswith("idx")}
    for step in STEPS:
        if exchange == "exchange" and step == "between_renames":
            continue  # one exchange, no second rename to die before
        before = tree_digest(out)
        script = KILL_AT_STEP.format(tests=str(Path(__file__).parent), corpus=str(user_folder / "docs"), out=str(out))
        killed = subprocess.run([sys.executable, "-c", script, step, exchange], capture_output=True, text=True,
                                timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        if step == "before_removing_the_old":
            # The new index was already in place; only the old one's removal was lost.
            assert (out / "null").is_dir() and (out / "meta.json").is_file()
        elif step == "between_renames":
            # The previous index sits intact beside its place; the next build restores it first.
            assert not out.exists() or tree_digest(out) == before
        else:
            assert tree_digest(out) == before, step
        assert {k: v for k, v in tree_digest(user_folder).items() if not k.startswith(("idx", ".idx"))} == outside
    rebuilt = ragline("index", "docs", "--out", "idx", "--bm25", cwd=user_folder)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert sorted(p.name for p in user_folder.iterdir()) == ["docs", "idx", "main.py", "notes"]


def test_sigkill_at_random_moments_of_real_builds(user_folder, vaswani_subset):
    """Real BM25 + dense builds over 400 documents, killed at random times."""
    out = user_folder / "idx"
    assert ragline("index", vaswani_subset, "--out", out, "--bm25").returncode == 0
    before = tree_digest(out)
    rng = random.Random(0)
    for _ in range(4):
        process = subprocess.Popen([sys.executable, "-m", "ragline.cli", "index", vaswani_subset, "--out", out],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 12.0))
        process.kill()
        process.wait(timeout=60)
        if (out / "dense").exists():  # it finished first: the new index is whole
            assert (out / "meta.json").is_file() and (out / "bm25").is_dir()
            before = tree_digest(out)
        else:
            assert tree_digest(out) == before
    final = ragline("index", vaswani_subset, "--out", out, "--bm25")
    assert final.returncode == 0, final.stderr
    assert not [p for p in user_folder.iterdir() if p.name.startswith(".idx.")]


def test_output_to_a_pipe_is_never_wrapped(user_folder):
    """rich wraps at 80 columns when it cannot see a terminal; scripts reading
    ragline's output then break wherever a long path lands."""
    long_out = user_folder / ("an-index-folder-with-a-name-long-enough-to-push-the-line-past-eighty-columns" * 2)
    result = ragline("index", "docs", "--out", long_out, "--bm25", cwd=user_folder)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith("indexed 2 documents") and line.endswith(f"into {long_out} with bm25")
    refused = ragline("index", "docs", "--out", user_folder / "notes", "--bm25", cwd=user_folder)
    assert refused.returncode == 2 and len(str(user_folder / "notes")) + 30 > 80
    (message,) = refused.stderr.strip().splitlines()
    assert message.startswith("error: ") and message.endswith("(remove it yourself, or choose another place)")


def test_eval_results_go_only_where_ragline_wrote_results(tmp_path):
    """`eval qa --out` writes its files as one folder, and refuses a folder of
    the user's before it spends any time evaluating."""
    from ragline.eval.report import check_results_folder, results_folder

    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="refusing"):
        check_results_folder(tmp_path / "user")
    with results_folder(tmp_path / "run") as folder:
        (folder / "summary.json").write_text("{}")
    with results_folder(tmp_path / "run") as folder:  # a second run replaces the first whole
        (folder / "per_question.jsonl").write_text("")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [MARKER, "per_question.jsonl"]
    assert (tmp_path / "user" / "notes.txt").read_text() == "keep"
