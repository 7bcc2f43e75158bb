"""Release a trained model: a generator-only ``.vgan`` whose model card tells how it was trained.

A training checkpoint carries G, D, G_ema and the optimiser state (what ``--resume`` needs): several times
the size of the generator, and nothing a user of the model wants. :func:`export_model` keeps the EMA
generator, the config, the training provenance and the checkpoint's metrics, and writes a model card that
quotes, from the run folder, every command that started or resumed the run, the quick-metric history, and
the run's log. The shipped models in ``VolumetricGAN/Resources/Models`` are made this way.

A progressive (PGAN) checkpoint written before the schedule reached its top level generates through
untrained top layers, so it is refused; ``which="best"`` only considers checkpoints at the top level whose
samples did not collapse (``spread_ratio`` ≥ 0.5); a collapsed one exported by name gets a warning in its card.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from VolGANCore import VolGANError
from VolumetricGANLib.checkpoint import (SUFFIX, card_path, command_line, generates_labels, load_checkpoint,
                                         save_checkpoint)

from .quick_metrics import COLLAPSE_SPREAD, collapsed
from .run import latest_checkpoint, read_metrics, read_status

__all__ = ["export_model", "training_level", "montage_path"]

_LOG_LINES = 400  # a longer log.txt is quoted as its first and last lines


def training_level(blob: dict[str, Any]) -> Optional[tuple[float, int]]:
    """``(progress, max_res)`` of a progressive training checkpoint: the level its last step trained at (from
    the schedule in its settings for checkpoints that do not record it); None when it does not grow."""
    from .train import TrainSettings, _Phase

    tr = blob.get("training") or {}
    max_res = (blob["config"].get("architecture") or {}).get("max_res")
    if max_res is None or not tr:
        return None
    if "progress" in tr:
        progress = tr["progress"]
    elif tr.get("settings") and "nimg" in tr:
        progress = _Phase(TrainSettings(**tr["settings"]), int(max_res)).progress(int(tr["nimg"]))
    else:
        return None
    return None if progress is None else (float(progress), int(max_res))


def _pick(run: Path, which: str) -> tuple[Path, str, dict[str, Any]]:
    """The checkpoint of run folder ``run`` to export, why it was chosen, and its loaded container."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise VolGANError(f"{run}: no checkpoints/ckpt-*.vgan in this run folder (is it a `volgan train --out` "
                          f"folder?)")
    if which == "latest":
        return ckpt, "the newest checkpoint", load_checkpoint(ckpt)
    scored = [e for e in (read_status(run) or {}).get("checkpoints", []) if e.get("metric") is not None
              and (run / e["path"]).is_file()]
    ranked = []  # (entry, container) at the full resolution, not collapsed
    for e in scored:
        blob = load_checkpoint(run / e["path"])
        level = training_level(blob)
        if (level is None or level[0] >= level[1]) and not collapsed(blob.get("metrics") or {}):
            ranked.append((e, blob))
    if not ranked:
        raise VolGANError(f"{run}: no checkpoint with a quick metric at the full resolution and without mode "
                          f"collapse to call 'best' (run.json lists {len(scored)} scored); export the newest one "
                          f"with --which latest")
    best, blob = min(ranked, key=lambda eb: eb[0]["metric"])
    return run / best["path"], (f"the best by `{best['metric_name']}` ({best['metric']:.4g}) of the {len(ranked)} "
                                f"scored checkpoint(s) still on disk (a run keeps its last few and its best)"), blob


def _run_section(run: Path, ckpt: Path, why: str, blob: dict[str, Any]) -> str:
    """Markdown: how the run was started, which checkpoint this is, the quick-metric history and the log."""
    log_path = run / "log.txt"
    log = log_path.read_text(encoding="utf-8").splitlines() if log_path.is_file() else []
    sessions = [line for line in log if " start: " in line or " resume: " in line]
    tr = blob.get("training") or {}
    status = read_status(run) or {}
    lines = ["## Training run", "",
             f"Exported from `{ckpt.relative_to(run).as_posix()}` (step {tr.get('step', '?')}, "
             f"{tr.get('nimg', 0) / 1000:.2f} kimg): {why}. The run ended `{status.get('state', '?')}` at "
             f"{status.get('kimg', float('nan')):.2f} kimg of {status.get('total_kimg', float('nan')):g}.", ""]
    if sessions:
        lines += ["Sessions of the run (time, how it was started):", "", "```"] + sessions + ["```", ""]
    rows = [r for r in read_metrics(run) if any(k.startswith("metrics/") for k in r)]
    if rows:
        names = [k for k in rows[-1] if k.startswith("metrics/") and k != "metrics/seconds"]
        lines += ["Quick metrics at the snapshots (lower is better; `volgan train` docs):", "",
                  "| step | kimg | " + " | ".join(n[len("metrics/"):] for n in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        lines += [f"| {r['step']} | {r['kimg']:.2f} | " + " | ".join(
            f"{r[n]:.4g}" if n in r else "-" for n in names) + " |" for r in rows]
        lines.append("")
    if log:
        shown = log if len(log) <= _LOG_LINES else (
            log[:50] + [f"... ({len(log) - _LOG_LINES} lines left out) ..."] + log[-(_LOG_LINES - 50):])
        lines += ["### Log (`log.txt`)", "", "```"] + shown + ["```", ""]
    return "\n".join(lines)


def export_model(
    source: str | os.PathLike,          # a run folder (`volgan train --out`) or a checkpoint file
    out: str | os.PathLike,             # the generator-only .vgan to write (its model card goes beside it)
    which: str = "best",                # run folder: "best" (by the tracked quick metric) or "latest"
    name: Optional[str] = None,         # model name in the config and card (default: keep)
    description: Optional[str] = None,  # one paragraph for the card (default: keep)
    overwrite: bool = False,            # replace an existing ``out``
) -> Path:
    """Write the EMA generator of a training checkpoint as a release model; returns ``out``."""
    if which not in ("best", "latest"):
        raise VolGANError(f"which: expected 'best' or 'latest', got {which!r}")
    source, out = Path(source), Path(out)
    if not out.name.endswith(SUFFIX):
        raise VolGANError(f"{out}: a model file must end in {SUFFIX}")
    if out.exists() and not overwrite:
        raise VolGANError(f"{out} exists; choose another name or pass --overwrite")
    if source.is_dir():
        run = source
        ckpt, why, blob = _pick(run, which)
    elif source.is_file():
        ckpt, why, blob = source, "the given checkpoint", load_checkpoint(source)
        run = source.parent.parent if source.parent.name == "checkpoints" else None
    else:
        raise VolGANError(f"{source}: no such run folder or checkpoint")
    level = training_level(blob)
    if level is not None and level[0] < level[1]:
        raise VolGANError(f"{ckpt}: written at progressive level {level[0]:g} of {level[1]}, so its top levels are "
                          f"untrained; export a checkpoint from after the schedule reached level {level[1]}")
    tensors = blob["tensors"]
    G_ema = tensors.get("G_ema", tensors.get("G"))
    if G_ema is None:
        raise VolGANError(f"{ckpt}: holds no generator weights")
    config = dict(blob["config"])
    config["discriminator"] = None  # the release has no discriminator
    if name:
        config["name"] = name
    if description:
        config["description"] = description
    provenance = {**(blob.get("provenance") or {}),
                  "exported_from": f"{ckpt.name} (step {(blob.get('training') or {}).get('step', '?')}; {why})",
                  "export_command": command_line()}
    montage = montage_path(out)
    extra = (f"## Samples\n\n![Four samples (seed 0): mid-slices and MIP]({montage.name})\n\n"
             f"Seed 0, rows are samples; axial, coronal and sagittal mid-slices"
             f"{' and the axial MIP' if _is_angio(config) else ''}"
             f"{' (then again with each ray coloured by its generated label)' if generates_labels(config) else ''}"
             f", window {config['intensity']['physical_range']} "
             f"{config['intensity'].get('units', '')}.\n")
    metrics = blob.get("metrics") or {}
    if collapsed(metrics):
        extra = (f"**Warning: mode collapse.** At this checkpoint the samples vary far less than the training data "
                 f"(`spread_ratio` {float(metrics['spread_ratio']):.3g}, below {COLLAPSE_SPREAD}): expect nearly the "
                 f"same volume for every latent.\n\n") + extra
    if run is not None and (run / "log.txt").is_file():
        extra += "\n" + _run_section(run, ckpt, why, blob)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, config, G_ema=G_ema, provenance=provenance, metrics=metrics,
                    card_extra=extra)
    _write_montage(out, montage, config)
    return out


def montage_path(model: str | os.PathLike) -> Path:
    """``<stem>.samples.png`` beside a model file (its model card shows it)."""
    p = Path(model)
    return p.with_name(p.name[: -len(SUFFIX)] + ".samples.png")


def _is_angio(config: dict[str, Any]) -> bool:
    return "willis" in str(config.get("anatomy") or "").lower()


def _write_montage(model: Path, path: Path, config: dict[str, Any]) -> Path:
    import numpy as np

    from VolumetricGANLib.generate import generate

    from .run import save_montage

    result = generate(model, n=4, seed=0, device="cpu")
    lo, hi = (float(v) for v in config["intensity"]["physical_range"])
    labels = np.stack([v.array for v in result.labels]) if result.labels else None
    return save_montage(np.stack([v.array for v in result.volumes]), path, title=f"{config.get('name') or model.stem}"
                        f": 4 samples, seed 0", mip=_is_angio(config), vmin=lo, vmax=hi, labels=labels,
                        label_scheme=config.get("label_scheme"))


def describe(path: str | os.PathLike) -> str:
    """One line: file, size, tensors (what `volgan export` prints)."""
    blob = load_checkpoint(path)
    size = os.path.getsize(path) / 2 ** 20
    return json.dumps({"model": str(path), "card": str(card_path(path)), "size_MiB": round(size, 2),
                       "tensors": sorted(blob["tensors"])})
