"""Building a sharded index: one complete index per shard, each over the
documents assigned to it (engine/index/sharding.py), in one staging folder
that is renamed into place when every shard is built.

Each shard is built by ``build_index`` with ``shard=(number, count)``: the
same readers, chunking, components and settings as an unsharded build, the
corpus read once per shard (reading is the cheap part of a build). A build
killed part-way resumes (``resume=True``): the shards finished before the
kill are kept as they are, and the shard being built resumes from its last
committed batch, as an unsharded build does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ragline.engine.atomic import atomic_directory, atomic_write_text, check_replaceable, refuse_overlap
from ragline.engine.data.corpus import detect_format
from ragline.engine.errors import InputError
from ragline.engine.index.build import build_index, is_index
from ragline.engine.index.layout import META
from ragline.engine.index.sharding import root_meta, shard_folder

log = logging.getLogger(__name__)

# What a sharded build is building, in its staging folder until the swap: a
# resumed build must be building the same.
PLAN = ".sharded-build.json"


def build_sharded_index(corpus: str | Path, out: str | Path, components: Mapping[str, Mapping[str, Any]], shards: int,
                        fmt: str = "auto", resume: bool = False, **options: Any) -> dict[str, Any]:
    """Index ``corpus`` into ``out`` as ``shards`` shards, each a complete index
    with ``components``; ``options`` are ``build_index``'s (window, overlap,
    batch_size, progress, encoding_errors, ray, workers). Returns the root meta.json."""
    corpus = Path(corpus)
    if shards < 1:
        raise InputError(f"a sharded index needs at least one shard, not {shards}")
    refuse_overlap(out, corpus)
    check_replaceable(Path(out), "index", is_index)
    if fmt == "auto" and corpus.exists():
        fmt = detect_format(corpus, options.get("encoding_errors", "strict"))
    plan = json.loads(json.dumps({"corpus": str(corpus.resolve()), "format": fmt, "shards": shards,
                                  "components": components, **options}, default=str))
    for how in ("progress", "workers", "ray", "batch_size"):  # how it runs, not what it writes
        plan.pop(how, None)

    def same_plan(folder: Path) -> bool:
        recorded = folder / PLAN
        if not recorded.is_file():
            return False
        if json.loads(recorded.read_text(encoding="utf-8")) != plan:
            raise InputError(f"the interrupted build of {out} was of another corpus or other settings; "
                             "build without --resume to start again")
        return True

    with atomic_directory(out, "index", recognise=is_index, resume=same_plan if resume else None) as tmp:
        resumed = (tmp / PLAN).is_file()
        if resume and not resumed:
            log.warning("there is no interrupted build of %s to resume: building it from the start", out)
        if not resumed:
            atomic_write_text(tmp / PLAN, json.dumps(plan, indent=2) + "\n")
        metas = []
        for number in range(shards):
            folder = tmp / shard_folder(number)
            if (folder / META).is_file():  # finished before an interruption
                log.info("shard %d of %d was built before the interruption", number, shards)
                metas.append(json.loads((folder / META).read_text(encoding="utf-8")))
                continue
            log.info("building shard %d of %d", number, shards)
            metas.append(build_index(corpus, folder, components, fmt=fmt, resume=resumed, shard=(number, shards), **options))
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        meta = root_meta(metas, [shard_folder(n) for n in range(shards)], {"created": created})
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / PLAN).unlink()
    return meta
