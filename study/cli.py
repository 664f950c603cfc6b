"""The command line's common ground: one clean line for a user's mistake, and outputs checked first.

run_cli turns a UserError into one line on stderr and exit 2; with_defaults gives main()'s
keywords the parser's defaults; the check_* functions test every output location before any
long work starts, so a run never fails at its last step. No torch: readers import it too.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from results import UserError
from study.config import RunOptions

MiB = 2**20


# -----------------------------------------------------------------------------
# Errors: a user's mistake is one line on stderr and a non-zero exit.

def run_cli(main: Callable[..., object], parser: argparse.ArgumentParser, argv=None) -> None:
    """Parse argv, call main with its flags (call()), and turn a UserError into one clean line."""
    def one_line_error(message: str):                 # argparse's usage + error is two lines
        print(f"{parser.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
    parser.error = one_line_error
    args = parser.parse_args(argv)
    try:
        call(main, vars(args))
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; finished results files are kept", file=sys.stderr)
        sys.exit(130)


def expand_path(value: str) -> str:
    """'~/r' -> '/home/me/r' (the shell does not expand '--out=~/r'); anything else as it is."""
    return str(Path(value).expanduser()) if isinstance(value, str) and value.startswith("~") else value


def call(main: Callable[..., object], kwargs: dict):
    """main() with a command line's (or a run plan's) flat keywords: where main takes the shared
    flags as run=RunOptions(...), those keywords go into it and the script's own stay keywords."""
    params = inspect.signature(main).parameters
    if "run" not in params:
        return main(**kwargs)
    shared = {k: v for k, v in kwargs.items() if k in RunOptions.__dataclass_fields__ and k not in params}
    return main(**{k: v for k, v in kwargs.items() if k not in shared}, run=RunOptions(**shared))


def with_defaults(parser: argparse.ArgumentParser, kwargs: dict) -> argparse.Namespace:
    """main()'s keywords (run=RunOptions(...) spread into its flags) as the parser's namespace,
    missing ones with the CLI defaults."""
    run = kwargs.pop("run", None)
    if run is not None:
        kwargs = {**asdict(run), **kwargs}
    args = parser.parse_args([])
    unknown = set(kwargs) - set(vars(args))
    if unknown:
        raise TypeError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    vars(args).update(kwargs)
    if isinstance(getattr(args, "model", None), str):
        args.model = expand_model_id(args.model)           # '--model=~/x' reaches us unexpanded
    for key in PATH_FLAGS:                                 # so is '--out=~/r.json': check and write one path
        if isinstance(getattr(args, key, None), str):
            setattr(args, key, expand_path(getattr(args, key)))
    return args


PATH_FLAGS = ("text_file", "results_dir", "out", "save", "gguf_dir", "inspect", "figures", "figures_dir",
              "report", "results")


# -----------------------------------------------------------------------------
# Output locations: checked before any work, so a long run never fails at its last step.

def _first_existing(path: Path) -> Path:
    """The nearest folder above path that exists; a broken symbolic link on the way is an error
    (the write would fail there, after the work)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        if p.is_symlink():
            raise UserError(f"'{p}' is a broken symbolic link, on the way to '{path}'")
        p = p.parent
    return p


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """A folder the run will write into: a folder already, or one that can be made, where a
    file can really be created (a probe file, removed at once: root passes os.access
    everywhere, /sys and read-only mounts do not take files)."""
    if str(path).strip() == "":
        raise UserError(f"{flag} is empty; give a folder")
    path = Path(path).expanduser()
    if path.is_symlink() and not path.exists():
        raise UserError(f"{flag} '{path}' is a broken symbolic link")
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} '{path}' is a file, not a folder")
    base = _first_existing(path)
    if not base.is_dir():
        raise UserError(f"{flag} '{path}' cannot be made: '{base}' is a file")
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".qstudy-probe-"):
            pass
    except OSError as e:
        raise UserError(f"{flag} '{path}' cannot be written: {e.strerror or type(e).__name__} in '{base}'") from None
    return path


def check_output_file(path: str | os.PathLike, flag: str, kind: str = "results") -> Path:
    """A file the run will (re)write: not a folder, in a folder that exists or can be made,
    and, if it exists, a file of the kind this run writes (a results JSON, a PDF): never a
    model's weights, a text or anything else that a slip of the keyboard named."""
    if str(path).strip() == "":
        raise UserError(f"{flag} is empty; give a file name")
    if str(path).endswith(("/", os.sep)):                 # Path() would drop the slash
        raise UserError(f"{flag} '{path}' ends with '/'; give a file name")
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} '{path}' is a folder; give a file name")
    if path.exists() and not is_output_of_kind(path, kind):
        raise UserError(f"{flag} '{path}' exists and is not a {kind} file this project wrote; "
                        f"nothing is overwritten (give a new name)")
    check_output_dir(path.parent, f"{flag}'s folder")
    return path


def is_output_of_kind(path: Path, kind: str) -> bool:
    """Whether an existing file is one this project may replace: a results JSON (an object
    with schema_version) or a PDF."""
    try:
        with open(path, "rb") as f:
            if kind == "pdf":
                return f.read(5) == b"%PDF-"
            if path.stat().st_size > 64 * MiB:            # no results file is that big: never read it all
                return False
            rec = json.loads(f.read().decode("utf-8"))
        return isinstance(rec, dict) and "schema_version" in rec
    except (OSError, ValueError):
        return False


def within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether path is folder itself or lies inside it (both resolved, ~ expanded)."""
    p, f = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return p == f or f in p.parents


def is_model_folder(path: str | os.PathLike, model_id: str) -> bool:
    """Whether path is the local model's own folder (never for a Hub id)."""
    model = Path(model_id).expanduser()
    return model.is_dir() and Path(path).expanduser().resolve() == model.resolve()


def check_out_outside_save(out: str | None, save: str) -> None:
    """--out inside --save would be overwritten by the save (Part 1 and Part 2)."""
    if out is not None and within(out, save):
        raise UserError("--out is inside --save: the save would overwrite it; put the results elsewhere")


def check_new_folder(path: str | os.PathLike, flag: str, model_id: str | None = None) -> Path:
    """A folder a save writes into: new or empty, never the model's own folder, so that no
    file the run did not make is overwritten."""
    path = Path(path).expanduser()
    check_output_dir(path, flag)
    if model_id is not None and is_model_folder(path, model_id):
        raise UserError(f"{flag} '{path}' is the model's own folder: saving there would overwrite its weights")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"{flag} '{path}' is not empty; choose a new folder (nothing is overwritten)")
    return path


def looks_like_path(model_id: str) -> bool:
    """A Hub id is 'name' or 'org/name'; anything else, or anything that exists, is a path."""
    return (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1
            or Path(model_id).expanduser().exists())


def expand_model_id(model_id: str) -> str:
    """'~/models/x' -> '/home/me/models/x' (the shell does not expand '--model=~/x'); a Hub id as is."""
    return str(Path(model_id).expanduser()) if model_id.startswith("~") else model_id


def check_at_least(*checks: tuple[str, int | None, int]) -> None:
    """(flag, value, least): each value, where given, is at least its least."""
    for flag, value, least in checks:
        if value is not None and value < least:
            raise UserError(f"{flag} must be at least {least} (got {value})")


def one_line(e: BaseException, limit: int = 160) -> str:
    """An exception's first line, cut to limit characters (for one-line error messages)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]
