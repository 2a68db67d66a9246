"""A run folder, as `dagir run` and `dagir bench` both use it: atomic writes, a lock so one command
at a time works in it, and the checks made before a run starts in OUT (is it this spec's run; would
a new run clobber one)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import UserError
from .spec import STAGES, Spec


def write_text(path: Path, text: str | bytes) -> None:
    """Replace `path` atomically, so an interrupted run never leaves half a file; a failed write is
    a `UserError` that leaves the previous file as it was."""
    temporary = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(text) if isinstance(text, bytes) else temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as err:
        with contextlib.suppress(OSError):  # NotADirectoryError where the parent is a file
            temporary.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({err.strerror or err})") from None


def refuse_a_run_file(target: Path, out: Path, *, allowed: tuple[str, ...] = ()) -> None:
    """A command writing `target` for the run or bench in `out` (export, report) must not replace one
    of that folder's own files (`allowed`: those it writes itself)."""
    target = Path(target)
    if target.exists() and target.name not in allowed and target.resolve().parent == Path(out).resolve():
        raise UserError(f"-o {target}: would overwrite the run's own {target.name}; write it outside the run "
                        "folder or under a new name")


def unfinished(out: Path) -> str:
    """For a message about a folder that is not a finished run: how to finish it, where it holds an
    interrupted one (a checkpoint), else nothing."""
    if (Path(out) / "checkpoints" / "latest.pt").is_file() and not (Path(out) / "metrics.json").is_file():
        return (f"; it holds a run that has not finished: `dagir run SPEC -o {out} --resume` (with the run's "
                "--set options) continues it")
    return ""


def output_file(target: Path) -> Path:
    """`target` as a file a command may write: not a folder, its folder made if missing."""
    target = Path(target)
    if target.is_dir():
        raise UserError(f"-o {target}: is a folder; give the file to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"-o {target}: cannot write there ({err.strerror or err})") from None
    return target


def recorded_spec(resolved_file: Path) -> dict[str, Any] | None:
    """The resolved spec a run folder recorded, read through today's spec model (so a field added
    since, with its default, does not make an old run folder look like another spec's); None if it
    is not a spec."""
    from pydantic import ValidationError

    try:
        recorded = yaml.safe_load(resolved_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(recorded, dict):
        return None
    try:
        return Spec.model_validate(recorded).resolved_dict()
    except ValidationError:
        return None


def spec_changes(recorded: dict[str, Any], spec: Spec) -> dict[str, tuple[Any, Any]]:
    """The fields (dotted paths) where `spec` differs from a recorded resolved spec: {path: (old, new)}.

    The `bench` section is left out: it says how many seeds and methods a bench runs, not how one
    run trains, so a bench given more seeds can take up the runs it already finished. So is a stage
    that trains in neither (0 epochs in both): its settings change nothing.
    """
    changes: dict[str, tuple[Any, Any]] = {}
    resolved = spec.resolved_dict()
    idle = {("train", stage) for stage in STAGES
            if _epochs(recorded, stage) == 0 and _epochs(resolved, stage) == 0}

    def walk(old: Any, new: Any, path: tuple[str, ...]) -> None:
        if path in idle:
            return
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new), key=str):
                if path or key != "bench":
                    walk(old.get(key), new.get(key), path + (str(key),))
        elif old != new:
            changes[".".join(path)] = (old, new)

    walk(recorded, resolved, ())
    return changes


def _epochs(resolved: dict[str, Any], stage: str) -> Any:
    """A resolved spec's epochs of `stage` (None where it has none)."""
    train = resolved.get("train")
    section = train.get(stage) if isinstance(train, dict) else None
    return section.get("epochs") if isinstance(section, dict) else None


def same_run_spec(resolved_file: Path, spec: Spec) -> bool:
    """Whether the resolved spec a run folder recorded describes the same run as `spec`."""
    recorded = recorded_spec(resolved_file)
    return recorded is not None and not spec_changes(recorded, spec)


def how_it_differs(resolved_file: Path, spec: Spec) -> str:
    """The first fields where `spec` differs from the spec a run folder recorded, as " (path: old ->
    new; ...)", or "" where it recorded none that reads."""
    recorded = recorded_spec(resolved_file) if resolved_file.is_file() else None
    return f" ({_shown(spec_changes(recorded, spec))})" if recorded is not None else ""


def unsafe_on_resume(path: str) -> bool:
    """Whether changing this field on `--resume` would make the run another run. Safe: the stages'
    learning rates, their epochs (checked against the checkpoint: only epochs still ahead), and how
    often checkpoints are written."""
    stage_fields = {f"train.{stage}.{field}" for stage in STAGES for field in ("lr", "epochs")}
    return path not in stage_fields | {"train.search.gate_lr", "train.checkpoint_every", "train.checkpoint_seconds"}


def check_resume_changes(changes: dict[str, tuple[Any, Any]], out: Path) -> None:
    """Refuse a change that makes another run; an epoch count must leave the stage's epochs
    already run in place (the schedules then follow the new length from where the run is)."""
    unsafe = [path for path in changes if unsafe_on_resume(path)]
    if unsafe:
        shown = _shown({path: changes[path] for path in unsafe})
        raise UserError(f"{out}: the run there was started from a different spec ({shown}); "
                        "on --resume only the stages' lr and epochs still ahead, train.search.gate_lr and "
                        "how often checkpoints are written may change" + _as_started(changes, unsafe))
    epochs = {path.split(".")[1]: new for path, (_, new) in changes.items() if path.endswith(".epochs")}
    if not epochs:
        return
    from .training.checkpoint import load_checkpoint

    state = load_checkpoint(Path(out) / "checkpoints" / "latest.pt")
    current = STAGES.index(state["stage"]) if state["stage"] in STAGES else len(STAGES)
    for stage, new in epochs.items():
        if STAGES.index(stage) < current:
            raise UserError(f"{out}: train.{stage}.epochs cannot change on --resume: the {stage} stage is finished")
        if STAGES.index(stage) == current:
            done = state["epoch"] + (1 if state["step"] else 0)
            if new < done:
                raise UserError(f"{out}: train.{stage}.epochs cannot be {new} on --resume: the {stage} stage has "
                                f"already run {done} epoch(s)")


def _as_started(changes: dict[str, tuple[Any, Any]], paths: list[str]) -> str:
    """The `--set` options that give back the recorded values (where a default changed since the run
    started, say), if every one is a plain value that needs no quoting; else nothing."""
    values = [yaml.safe_dump(changes[path][0]).removesuffix("...\n").strip() for path in paths]
    if any(isinstance(changes[path][0], (dict, list)) or " " in value for path, value in zip(paths, values)):
        return ""
    return "; to continue it as it started: " + " ".join(f"--set {path}={value}" for path, value in zip(paths, values))


def _shown(changes: dict[str, tuple[Any, Any]]) -> str:
    shown = "; ".join(f"{path}: {_short(old)} -> {_short(new)}" for path, (old, new) in list(changes.items())[:3])
    return shown + (" ..." if len(changes) > 3 else "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:30] + "…"


def prepare_run_folder(spec: Spec, out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check OUT before a run starts: a folder (or nothing yet); a resumed run must be this spec's,
    but for the changes `--resume` allows, which are recorded in OUT/resume-changes.json; a new
    run must not clobber."""
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"{out}: exists and is not a folder; give -o a folder for the run")
    if holds_a_bench(out):
        raise UserError(f"{out}: holds a bench's results, which a run's files would mix with; run into another folder")
    checkpoint = Path(out) / "checkpoints" / "latest.pt"
    if resume:
        resolved = Path(out) / "spec.resolved.yaml"
        if not resolved.is_file():
            raise UserError(f"{out}: not a dagir run folder (no spec.resolved.yaml); nothing to resume")
        if not checkpoint.is_file():
            raise UserError(f"{out}: the run there stopped before its first checkpoint (written after the first "
                            f"{spec.train.checkpoint_seconds:g} s of training, or the first stage); nothing to resume: "
                            "start it again with --overwrite")
        recorded = recorded_spec(resolved)
        if recorded is None:
            raise UserError(f"{out}: spec.resolved.yaml there is not a spec; nothing to resume")
        changes = spec_changes(recorded, spec)
        if changes:
            check_resume_changes(changes, out)
            record_resume_changes(out, changes, spec)
    elif overwrite:  # a fresh run: no checkpoint to resume from, no finished result left from before
        checkpoint.unlink(missing_ok=True)
        (Path(out) / "metrics.json").unlink(missing_ok=True)


def record_resume_changes(out: Path, changes: dict[str, tuple[Any, Any]], spec: Spec) -> None:
    """Append the changes to OUT/resume-changes.json, and record the spec the run now follows."""
    log = Path(out) / "resume-changes.json"
    try:
        entries = json.loads(log.read_text()) if log.is_file() else []
    except json.JSONDecodeError:
        entries = []
    entries = entries if isinstance(entries, list) else []
    entries.append({"at": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "changes": {path: {"from": old, "to": new} for path, (old, new) in changes.items()}})
    write_text(log, json.dumps(entries, indent=1) + "\n")
    write_text(Path(out) / "spec.resolved.yaml", spec.resolved_yaml())


LOCK_FILE = ".dagir.lock"


@contextmanager
def locked_folder(out: Path, command: str) -> Iterator[None]:
    """Hold OUT for one command: a second `dagir run` (or bench, or compile) into the same folder
    refuses at once, naming the first. The lock is an advisory `flock` on `OUT/.dagir.lock`, which
    the operating system releases when its process ends, however it ends: a killed run leaves no
    stale lock behind (the file stays, saying who held it last)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; give -o a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a+")
    except OSError as err:
        raise UserError(f"{out}: cannot write the output folder ({err.strerror or err})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another dagir command"
            raise UserError(f"{out}: in use by {holder}; wait for it to finish, or use another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"dagir {command} (pid {os.getpid()} on {socket.gethostname()}, "
                     f"since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def holds_a_run(out: Path) -> bool:
    """Whether OUT holds a `dagir run` (started or finished)."""
    return (Path(out) / "checkpoints" / "latest.pt").is_file() or (Path(out) / "metrics.json").is_file()


def holds_a_bench(out: Path) -> bool:
    """Whether OUT holds a finished `dagir bench` (its results)."""
    return (Path(out) / "results.json").is_file()


def finished_files(out: Path) -> dict[str, bytes]:
    """A finished run folder's files ({path relative to OUT: contents}), to carry it to a machine
    that does not share OUT's disk: all but its checkpoints (a finished run resumes from
    metrics.json, not from them) and the lock."""
    out = Path(out)
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.rglob("*"))
            if path.is_file() and path.name != LOCK_FILE and path.relative_to(out).parts[0] != "checkpoints"}


def write_finished_files(out: Path, files: dict[str, bytes]) -> list[str]:
    """Write the files of a run that finished on another machine (`finished_files`) into OUT where
    they are missing or differ, each atomically; return the paths written. Where OUT is a disk that
    machine shares, every file is already there and nothing is written."""
    written = []
    for relative, contents in files.items():
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise UserError(f"{out}: a run's file {relative!r} lies outside its run folder")
        path = Path(out) / relative
        if not (path.is_file() and path.read_bytes() == contents):
            write_text(path, contents)
            written.append(relative)
    return written
