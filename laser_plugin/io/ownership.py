"""What laser may delete: only what it can prove it wrote.

Two proofs, one per kind of directory laser writes:

**Run directories** (``laser run``/``demo``/``batch``) carry a marker, ``.laser-run.json``, written
when laser claims the directory, and laser claims only a directory that is new or empty. So a
directory without the marker was not started by laser (or by a laser older than the marker) and
nothing in it is ever removed. With the marker, ``--overwrite`` still checks every entry before it
removes anything: top-level names must be the run's own (``summary.json``, ``images/``, ...) and
every file inside the run's folders must carry a name laser gives (``000123.png``, the
``.NAME.tmpPID`` of an interrupted atomic write). Anything else -- a ``.git``, a ``.env``, a photo
dropped into ``images/``, a nested folder, any symbolic link (laser writes none) -- refuses the
whole overwrite, naming it, and nothing is deleted. Files are removed one by one and folders with
``rmdir``, never ``rmtree``, so a file that appears after the check stops the removal instead of
being lost. Per-file records were not chosen here: the run writer appends frames to three text
files and many folders, and the marker plus the naming rule prove the same without a write per file.

**Export directories** (``laser export``) keep a journal, ``.laser-export.files``: the relative
path of every file and folder the exporter creates, appended *before* it is created. Replacing an
export removes exactly the journalled files (and the journalled folders, when empty); a user's
``images_raw/`` or a photo inside ``images/`` stays. A non-empty folder without a journal is not
an export of ours and is refused, and a file the exporter is about to write that exists without
being journalled is refused rather than overwritten.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from laser_plugin.errors import OutputError
from laser_plugin.io import lock

RUN_MARKER = ".laser-run.json"
EXPORT_JOURNAL = ".laser-export.files"
# The temporary sibling of laser_plugin.io.atomic.write_atomic (left by a hard kill mid-write).
TEMP_NAME = re.compile(r"^\..+\.tmp\d+$")
# The file each export writes last: a folder holding one holds a finished export.
_EXPORT_DONE = ("transforms.json", "sparse/0/images.bin", "sparse/0/images.txt")
# Entries that belong to the bookkeeping itself: never user data, never removed while in use.
_BOOKKEEPING = {lock.LOCK_NAME, RUN_MARKER, EXPORT_JOURNAL, ".write-test"}


def entries(path: Path) -> list[str]:
    """Names in ``path`` other than laser's bookkeeping files ([] if it does not exist)."""
    try:
        return sorted(n for n in os.listdir(path) if n not in _BOOKKEEPING)
    except FileNotFoundError:
        return []
    except OSError as exc:  # e.g. no permission to list it: say so rather than guess
        raise OutputError(f"cannot read {path}: {exc.strerror or exc}") from None


# -- run directories --------------------------------------------------------------------------


def is_claimed(path: Path) -> bool:
    return (Path(path) / RUN_MARKER).is_file()


def claim(path: Path) -> None:
    """Mark ``path`` (new or empty, checked by the caller) as a laser run directory."""
    from laser_plugin.io.atomic import write_json_atomic

    if not is_claimed(path):
        write_json_atomic(
            Path(path) / RUN_MARKER,
            {
                "laser_run": 1,
                "note": "written by laser-plugin when it created this run directory; "
                "laser --overwrite removes only its own files, and only where this file is",
            },
        )


def plan_run_removal(
    path: Path,
    own_files: Iterable[str],
    own_dirs: dict[str, re.Pattern],
    deep: Iterable[str] = (),
) -> tuple[list[Path], list[Path], list[str]]:
    """(files to unlink, folders to rmdir afterwards, entries that are not provably ours).

    ``own_files``: top-level file names of a run; ``own_dirs``: top-level folder name -> the
    pattern every file inside it matches; ``deep``: those of ``own_dirs`` that may hold folders
    of their own (the resume state), every file at any depth matching the pattern. Nothing is
    followed through a symbolic link: one anywhere is not ours (laser writes none).
    """
    own_files, deep = set(own_files), set(deep)
    files: list[Path] = []
    dirs: list[Path] = []
    foreign: list[str] = []

    def lmode(p: Path) -> int | None:
        try:
            return os.lstat(p).st_mode
        except FileNotFoundError:  # renamed away meanwhile (a running writer's temporary file)
            return None

    def walk(folder: Path, rel: str, pattern: re.Pattern, nested: bool) -> None:
        for child in sorted(os.listdir(folder)):
            p = folder / child
            mode = lmode(p)
            if mode is None:
                continue
            if stat.S_ISREG(mode) and (pattern.match(child) or TEMP_NAME.match(child)):
                files.append(p)
            elif stat.S_ISDIR(mode) and nested and pattern.match(child):
                walk(p, f"{rel}/{child}", pattern, nested)
            else:
                foreign.append(f"{rel}/{child}" + ("/" if stat.S_ISDIR(mode) else ""))
        dirs.append(folder)

    for name in entries(path):
        p = Path(path) / name
        mode = lmode(p)
        if mode is None:
            continue
        if stat.S_ISREG(mode) and (name in own_files or TEMP_NAME.match(name)):
            files.append(p)
        elif stat.S_ISDIR(mode) and name in own_dirs:
            walk(p, name, own_dirs[name], name in deep)
        else:
            foreign.append(name + ("/" if stat.S_ISDIR(mode) else ""))
    return files, dirs, foreign


def remove(files: Iterable[Path], dirs: Iterable[Path], where: Path) -> None:
    """Unlink ``files``, then ``rmdir`` ``dirs`` (which fails, rather than deletes, if anything
    new appeared in one of them)."""
    try:
        for f in files:
            f.unlink(missing_ok=True)
        for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            if d.exists():
                d.rmdir()
    except OSError as exc:
        raise OutputError(
            f"cannot clear {where}: {exc.strerror or exc} ({exc.filename}); nothing else was removed"
        ) from None


# -- inputs and outputs -----------------------------------------------------------------------


def _resolved(p: str | Path) -> Path:
    return Path(p).expanduser().resolve()


def inside(child: str | Path, parent: str | Path) -> bool:
    """Whether ``child`` is ``parent`` or lies under it (symbolic links resolved)."""
    c, p = _resolved(child), _resolved(parent)
    return c == p or p in c.parents


def check_input_outside_output(source: str | Path, output_dir: str | Path) -> None:
    """Refuse an input inside (or equal to) the output directory: replacing the output would
    delete the input, and a resumed run would read its own output."""
    if inside(source, output_dir):
        raise OutputError(
            f"the input {source} is inside the output directory {output_dir}: "
            "choose an --output-dir outside the input"
        )


def check_export_outside_run(run_dir: str | Path, output_dir: str | Path) -> None:
    """Refuse an export folder that is, holds or lies inside the run directory: the export would
    write (and, replacing, remove) files among the run's own."""
    if inside(output_dir, run_dir) or inside(run_dir, output_dir):
        raise OutputError(
            f"cannot export {run_dir} into {output_dir}: the export folder must be outside the "
            "run directory (and not hold it); choose another output folder"
        )


# -- export directories -----------------------------------------------------------------------


class ExportJournal:
    """The record of what one export wrote into ``root`` (see the module docstring).

    Create it before writing anything; call :meth:`record` with each relative path before
    writing it, :meth:`close` at the end (it releases the directory lock).
    """

    def __init__(self, root: Path, *, overwrite: bool, done: str, what: str):
        """``done``: the file (relative to ``root``) whose presence means a complete export of
        this kind; replacing one needs ``overwrite``. ``what``: its name in messages."""
        self.root = Path(root).expanduser()
        self._written: set[str] = set()
        self._fh = None
        self._check(overwrite, done, what)  # before anything is written: a refusal changes nothing
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {self.root}: {exc.strerror or exc}") from None
        lock.acquire(self.root, what="export directory")
        try:
            # Again under the lock: another process may have written meanwhile.
            previous = self._check(overwrite, done, what)
            files = [self.root / rel for rel in previous if not rel.endswith("/")]
            dirs = [self.root / rel.rstrip("/") for rel in previous if rel.endswith("/")]
            remove(files, [], self.root)
            for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
                if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
                    d.rmdir()  # a journalled folder still holding user files stays
            # O_NOFOLLOW: a journal replaced by a symbolic link must not truncate its target.
            fd = os.open(
                self.root / EXPORT_JOURNAL,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                0o644,
            )
            self._fh = os.fdopen(fd, "w", encoding="utf-8")
        except OSError as exc:
            lock.release(self.root)
            raise OutputError(f"cannot write to {self.root}: {exc.strerror or exc}") from None
        except BaseException:
            lock.release(self.root)
            raise

    def _check(self, overwrite: bool, done: str, what: str) -> list[str]:
        """The journalled entries of a previous export (to remove), or a one-line refusal."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise OutputError(f"output path {root} exists and is not a directory")
        if not entries(root):
            return []
        journal = root / EXPORT_JOURNAL
        if journal.is_symlink() or not journal.is_file():
            raise OutputError(
                f"{root} is not empty and holds no laser export, so nothing in it is replaced: "
                "choose a new or empty directory"
            )
        found = next((f for f in (done, *_EXPORT_DONE) if (root / f).exists()), None)
        if found is not None and not overwrite:
            # Any finished export counts, so a COLMAP export never silently replaces a
            # nerfstudio one in the same folder (or the other way round).
            kind = what if found == done else "laser export"
            raise OutputError(
                f"{root} already holds a {kind} ({found}); pass --overwrite to replace it or "
                "choose another directory"
            )
        previous = []
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            rel = line.strip()
            if rel and _safe_relative(rel) and self._is_own_file_or_dir(rel):
                previous.append(rel)
        return previous

    def _is_own_file_or_dir(self, rel: str) -> bool:
        """A journal is a file in a user-writable folder: follow none of its lines outside."""
        p = self.root / rel.rstrip("/")
        try:
            mode = os.lstat(p).st_mode
        except OSError:
            return False
        if not inside(p.parent, self.root):
            return False
        return stat.S_ISDIR(mode) if rel.endswith("/") else stat.S_ISREG(mode)

    def mkdir(self, rel: str) -> Path:
        """Create the folder ``root/rel`` (and its parents), journalling those that are new."""
        parts = Path(rel).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            p = self.root / sub
            if not p.exists():
                self._append(sub + "/")
                try:
                    p.mkdir()
                except OSError as exc:
                    raise OutputError(f"cannot create {p}: {exc.strerror or exc}") from None
            elif p.is_symlink() or not p.is_dir():
                raise OutputError(f"refusing to write into {p}: it is not a folder laser made")
        return self.root / rel

    def record(self, rel: str) -> Path:
        """Journal ``rel`` before it is written; refuse to replace a file we did not write."""
        p = self.root / rel
        if rel not in self._written:
            if p.exists() or p.is_symlink():
                raise OutputError(
                    f"refusing to overwrite {p}: it was not written by this export "
                    "(choose a new or empty directory)"
                )
            self._append(rel)
            self._written.add(rel)
        return p

    def _append(self, line: str) -> None:
        if self._fh is None:
            raise OutputError(f"the export into {self.root} is closed")
        self._fh.write(line + "\n")
        # Flushed before the file exists: a kill leaves no unjournalled file of ours behind.
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        lock.release(self.root)


def _safe_relative(rel: str) -> bool:
    p = Path(rel.rstrip("/"))
    return bool(rel) and not p.is_absolute() and ".." not in p.parts


def run_command(path: Path) -> str | None:
    """The laser command that made the run in ``path`` (``run``, ``demo``, ``batch``), if it is a
    claimed run directory with a readable summary; else None."""
    import json

    if not is_claimed(path):
        return None
    try:
        settings = json.loads((Path(path) / "summary.json").read_text()).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return None
    command = settings.get("command") if isinstance(settings, dict) else None
    return command if isinstance(command, str) else None
