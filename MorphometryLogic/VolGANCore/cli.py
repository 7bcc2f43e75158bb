"""The ``volgan`` command-line frame.

Subcommands are contributed by registrars: ``register(subparsers)`` functions that add their parsers and
set ``func`` (a callable taking the parsed ``args`` and returning an exit code or None). The project's own
registrars are listed here (:data:`PROJECT_COMMANDS`, imported lazily), because an installed Slicer extension
is a folder of modules with no pip metadata; a registrar whose package is not on the path is skipped. Other
packages add commands through the ``volgan.commands`` entry-point group (pyproject.toml declares the
project's own there too, for pip users; names already registered are not added twice). The frame owns what
every command shares: ``--version``, ``--debug``, ``--quiet``, and turning a :class:`VolGANError` into one line on
stderr with exit status 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from importlib import metadata
from typing import Callable, Sequence

from . import __version__
from .errors import Cancelled, VolGANError
from .io import NONFINITE_ENV, NONFINITE_POLICIES

ENTRY_POINT_GROUP = "volgan.commands"

# name -> "module:function"; the same as pyproject.toml's [project.entry-points."volgan.commands"]
PROJECT_COMMANDS: dict[str, str] = {
    "morphometry": "MorphometryLib.cli:register",
    "phantom": "VolumetricGANLib.phantoms.cli:register",
    "volumetricgan": "VolumetricGANLib.cli:register",
    "train": "GANTrainerLib.cli:register",
    "evaluation": "GANTrainerLib.evaluation.cli:register",
    "segmentation": "GANTrainerLib.segmentation.cli:register",
    "prepare": "GANTrainerLib.prepare.cli:register",
}

__all__ = ["main", "build_parser", "ENTRY_POINT_GROUP", "PROJECT_COMMANDS", "progress_from_args"]


def _register_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print versions, compute devices and mixed-precision support")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from .env import environment_report, format_environment

    rep = environment_report()
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print("\n".join(format_environment(rep)))
    return 0


def _register_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="inspect and validate folder datasets")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    v = dsub.add_parser("validate", help="read every volume of a folder and report shape, spacing and problems")
    v.add_argument("folder")
    v.add_argument("--labels", help="folder of label maps with the same file names")
    v.add_argument("--label-scheme", choices=["topcow13", "aydin7"], help="check label ids against this scheme")
    v.add_argument("--shape", type=int, nargs=3, metavar=("D", "H", "W"), help="required shape")
    v.add_argument("--json", help="also write the full report to this JSON file")
    v.set_defaults(func=_cmd_dataset_validate)


def _cmd_dataset_validate(args: argparse.Namespace) -> int:
    from .atomic import atomic_write_json
    from .dataset import validate_dataset

    report = validate_dataset(args.folder, labels_folder=args.labels, expect_shape=args.shape,
                              label_scheme=args.label_scheme, progress=progress_from_args(args))
    print(report.summary())
    if args.json:
        atomic_write_json(args.json, report.to_dict())
    return 0 if report.ok else 1


_BUILTIN: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_register_info, _register_dataset)


def progress_from_args(args: argparse.Namespace):
    """The CLI's progress callback: a tqdm bar when stderr is a terminal, a plain line every 10 % or 30 s when it is
    a file or pipe, nothing with ``--quiet``; inside a background job (VolGANCore.job) the job's recorder, which
    writes throttled progress into the job's ``job.json``."""
    from .progress import active_job_progress

    recorder = active_job_progress()
    if recorder is not None:
        return recorder
    from .progress import terminal_progress

    return terminal_progress(quiet=bool(getattr(args, "quiet", False)))


def _load_registrar(spec: str) -> Callable | None:
    """``"module:function"`` -> the function; None when the module's package is not on the path."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # only "this package is absent" is skipped; a broken import inside a present package still raises
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise
        return None
    return getattr(module, attr)


def _plugin_registrars() -> list[tuple[str, Callable]]:
    """The project's registrars that are importable, then third-party entry points with new names."""
    out = []
    for name, spec in sorted(PROJECT_COMMANDS.items()):
        register = _load_registrar(spec)
        if register is not None:
            out.append((name, register))
    known = set(PROJECT_COMMANDS)
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name not in known:
            known.add(ep.name)
            out.append((ep.name, ep.load()))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volgan",
        description="Train, generate, steer and evaluate 3-D GANs of anatomy (SlicerVolumetricGAN).",
    )
    parser.add_argument("--version", action="version", version=f"volgan {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _BUILTIN:
        register(sub)
    for _name, register in _plugin_registrars():
        register(sub)
    for path, leaf in _leaf_parsers(parser):
        if path not in NO_VOLUME_INPUT and "--nan-policy" not in leaf._option_string_actions:
            leaf.add_argument("--nan-policy", choices=NONFINITE_POLICIES, default=None,
                              help="NaN/Inf voxels in input volumes: refuse the file (default), or fill them with "
                                   "zero or with the volume's finite minimum (min)")
    return parser


def _os_error_line(exc: OSError) -> str:
    """One line for a failed file-system call: the file, the system's reason, and the fix."""
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        fix = "free disk space or choose an output folder on another disk; nothing was left half-written"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose an output folder you can write to"
    else:
        fix = "check the path and the disk"
    return f"{where}{reason} ({fix})"


def _show_fills_as_notes(prog: str) -> None:
    """Print read_volume's NaN/Inf-filled warnings as one plain line each (not Python's file:line form)."""
    import warnings

    from .io import NonFiniteFilled

    shown = getattr(warnings.showwarning, "volgan_wrapped", warnings.showwarning)  # wrap Python's once

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, NonFiniteFilled):
            print(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    show.volgan_wrapped = shown
    warnings.showwarning = show


# Commands that read no volume file: they take no --nan-policy.
NO_VOLUME_INPUT = {"info", "phantom cow", "phantom bone", "export", "steer"}


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """(command path, parser) of every runnable sub-command, e.g. ("morphometry bone", parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _leaf_parsers(child, f"{prefix} {name}".strip())
            return
    if prefix:
        yield prefix, parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "nan_policy", None):
        os.environ[NONFINITE_ENV] = args.nan_policy   # read_volume's default here and in worker processes
    _show_fills_as_notes(f"volgan {args.command}")
    try:
        rc = args.func(args)
    except VolGANError as exc:
        if args.debug:
            raise
        print(f"volgan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # the disk, not the input: say which file and what to do (atomic writes left nothing)
        if args.debug:
            raise
        print(f"volgan {args.command}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"volgan {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"volgan {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
