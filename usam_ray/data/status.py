"""What a run directory holds, stage by stage: ``usam-ray status RUN`` and the CLI's exit codes.

Read from ``RUN/run.json`` (what each stage said it was doing, with what configuration, started
and finished by whom and when) and from the shards themselves (rows, error rows, fingerprints and
writers in their footers), so a stage that says ``complete`` but lacks rows, a stage that was
killed while ``running``, or a folder mixing shards of two configurations shows as what it is.
Nested runs (``RUN/train``, ``RUN/<method>`` of a multi-method run) are included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .shards import MANIFEST, count_rows, list_shards, read_manifest, read_shard_meta

COMPLETE, INCOMPLETE, INTERRUPTED, RUNNING, CONFLICT = "complete", "incomplete", "interrupted", "running", "conflict"


@dataclass
class StageStatus:
    """One stage of a run directory.

    Attributes:
        name (str): stage name, prefixed by the nested run's folder (``train/embed``, ``fmbseg/label``).
        path (str): the stage's folder.
        state (str): ``complete``, ``incomplete`` (finished without every image), ``running`` (its
            process may still be working: another host, or alive here), ``interrupted`` (said
            running, but its process on this host is gone) or ``conflict`` (shards of several
            configurations, or not the manifest's).
        rows (int | None): images done (rows of its shards; labelled images for labels).
        errors (int): error rows.
        expected (int | None): images the stage set out to do, when it said.
        shards (int): shard files.
        fingerprints (list[str]): configuration fingerprints found in the shards' footers.
        manifest_fingerprint (str | None): the one run.json records.
        started, finished (str | None): UTC ISO times from run.json.
        by (dict[str, str]): who last changed its status (host, user, pid, node, job).
        writers (dict[str, int]): shards per writing node (or host, for shards without a node).
        problems (list[str]): why it is not complete, one line each.
    """

    name: str
    path: str
    state: str
    rows: Optional[int] = None
    errors: int = 0
    expected: Optional[int] = None
    shards: int = 0
    fingerprints: list[str] = field(default_factory=list)
    manifest_fingerprint: Optional[str] = None
    started: Optional[str] = None
    finished: Optional[str] = None
    by: dict[str, str] = field(default_factory=dict)
    writers: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class RunStatus:
    """A run directory's stages and its overall state (the worst of them: conflict > interrupted >
    incomplete > running > complete; ``empty`` when nothing ran)."""

    run: str
    stages: list[StageStatus]

    @property
    def state(self) -> str:
        order = [CONFLICT, INTERRUPTED, INCOMPLETE, RUNNING, COMPLETE]
        states = {s.state for s in self.stages}
        return next((s for s in order if s in states), "empty")


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _shard_dirs(stage: str, run: Path, entry: dict[str, Any]) -> tuple[Path, list[Path], Path]:
    """(stage folder, folders whose rows are the images done, errors folder) of a manifest stage."""
    out = (entry.get("config") or {}).get("out")
    if stage == "embed":
        return run / "embed", [run / "embed"], run / "embed" / "errors"
    if stage == "pseudo":
        where = Path(out) if out else run / "pseudo"
        return where, [run / "features"], where / "errors"
    if stage in ("label", "refine"):
        where = Path(out) if out else run / ("labels" if stage == "label" else "refined")
        return where, [where / "images"], where / "errors"
    return run / stage, [run / stage], run / stage / "errors"


def _footers(dirs: list[Path]) -> tuple[set[str], dict[str, int], int]:
    """Fingerprints, shards per writer and shard count over ``dirs``."""
    fps: set[str] = set()
    writers: dict[str, int] = {}
    shards = 0
    for d in dirs:
        for shard in list_shards(d):
            meta = read_shard_meta(shard)
            shards += 1
            fps.add(meta.fingerprint or "")
            who = meta.writer.get("node") or meta.writer.get("host") or "unknown"
            writers[who] = writers.get(who, 0) + 1
    return fps, writers, shards


def stage_status(run: Path, stage: str, entry: dict[str, Any], prefix: str = "") -> StageStatus:
    """The status of ``stage`` (a ``run.json`` entry) of ``run``, checked against its shards."""
    where, row_dirs, errors_dir = _shard_dirs(stage, run, entry)
    fps, writers, shards = _footers([*row_dirs, errors_dir])
    rows = sum(count_rows(d) for d in row_dirs)
    errors = count_rows(errors_dir)
    expected = entry.get("total_images")
    st = StageStatus(prefix + stage, str(where), COMPLETE, rows, errors, expected, shards, sorted(fps),
                     entry.get("fingerprint"), entry.get("started"), entry.get("finished"), entry.get("by") or {},
                     writers)
    said = entry.get("status")
    if len(fps) > 1:
        st.problems.append(f"shards of {len(fps)} configurations: {', '.join(sorted(fps))}")
    elif fps and st.manifest_fingerprint and fps != {st.manifest_fingerprint}:
        st.problems.append(f"shards have fingerprint {next(iter(fps))} but run.json says {st.manifest_fingerprint}")
    if st.problems:
        st.state = CONFLICT
        return st
    if said == RUNNING:
        here = st.by.get("host") == _hostname()
        st.state = INTERRUPTED if here and not _pid_alive(st.by.get("pid", "")) else RUNNING
        st.problems.append(f"started {st.started} by {_who(st.by)}; "
                           + ("that process is gone: re-run to continue" if st.state == INTERRUPTED
                              else "still running, or stopped on another host"))
    elif said != COMPLETE:
        st.state = INCOMPLETE
        st.problems.append(f"finished {st.finished} as {said}: re-run to continue")
    if expected is not None and rows + errors < expected and st.state == COMPLETE:
        st.state = INCOMPLETE
        st.problems.append(f"{rows} done + {errors} errors of {expected} images")
    return st


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _who(by: dict[str, str]) -> str:
    if not by:
        return "unknown"
    job = f", job {by['job']}" if by.get("job") else ""
    return f"{by.get('user', '?')}@{by.get('host', '?')} pid {by.get('pid', '?')}{job}"


def _head_stage(folder: Path, prefix: str) -> Optional[StageStatus]:
    """A trained head folder (``head.json`` + ``best.pt``), or None when ``folder`` is not one."""
    import json

    info = folder / "head.json"
    if not info.is_file():
        return None
    data = json.loads(info.read_text())
    st = StageStatus(prefix + folder.name, str(folder), COMPLETE, by=data.get("by") or {})
    st.manifest_fingerprint = (data.get("embeddings") or {}).get("fingerprint")
    if not (folder / "best.pt").is_file():
        st.state = INCOMPLETE
        st.problems.append("head.json without best.pt")
    return st


def run_status(run: Path, prefix: str = "", depth: int = 2) -> RunStatus:
    """Every stage of ``run`` (and of the runs nested in it, ``depth`` folders down).

    Raises:
        FileNotFoundError: ``run`` is not a folder.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    stages: list[StageStatus] = []
    manifest = read_manifest(run)
    for stage, entry in manifest.get("stages", {}).items():
        stages.append(stage_status(run, stage, entry, prefix))
    for child in sorted(p for p in run.iterdir() if p.is_dir()):
        head = _head_stage(child, prefix)
        if head is not None:
            stages.append(head)
        elif child.name == "eval" and (child / "report.json").is_file():
            stages.append(StageStatus(prefix + "eval", str(child), COMPLETE))
        elif depth > 0 and (child / MANIFEST).is_file():
            stages.extend(run_status(child, f"{prefix}{child.name}/", depth - 1).stages)
    return RunStatus(str(run), stages)


def format_status(status: RunStatus) -> str:
    """The status as aligned text lines: one per stage, then its problems indented."""
    lines = [f"{status.run}: {status.state}"]
    if not status.stages:
        lines.append(f"  nothing has run here ({MANIFEST} is missing or empty)")
    width = max([len(s.name) for s in status.stages] + [5])
    for s in status.stages:
        counts = "" if s.rows is None else (f"{s.rows} done, {s.errors} errors"
                                            + (f" of {s.expected}" if s.expected is not None else "")
                                            + f", {s.shards} shards")
        fps = ",".join(s.fingerprints) or s.manifest_fingerprint or "-"
        when = s.finished or s.started or ""
        nodes = f"; written by {len(s.writers)} node(s)" if len(s.writers) > 1 else ""
        lines.append(f"  {s.name:<{width}}  {s.state:<11}  {counts}{nodes}  [{fps}]  {when} {_who(s.by) if s.by else ''}"
                     .rstrip())
        lines += [f"  {'':<{width}}    - {p}" for p in s.problems]
    return "\n".join(lines)
