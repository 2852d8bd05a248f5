"""Keras (TensorFlow) and PyTorch baselines of ``python -m experiments.bench train --baselines``.

``experiments/baselines/keras_baseline.py`` and ``torch_baseline.py`` (their own environment:
``--baseline-python``, see ``experiments/baselines/README.md``) run one at a time, each in its
own process, for every benchmarked model that has one (cnn3, resnet20), with the protocol of
``bench train``; here they are run, compared with jaxcnn's rows (images/s ratios) and shown.
"""

from __future__ import annotations

import json

from experiments.bench.common import BASELINES_DIR

BASELINE_SCRIPTS = {"keras-tf": "keras_baseline.py", "torch": "torch_baseline.py"}
BASELINE_MODELS = ("cnn3", "resnet20")  # the scripts' --model choices


def run_baseline(framework: str, python: str, model: str = "cnn3", batch_size: int = 128,
                 steps: int = 20, repeats: int = 3, augment: bool = False,
                 timeout: float = 3600.0) -> dict:
    """Run ``experiments/baselines/<framework script> --model <model>`` with ``python`` (its own
    environment) and return its JSON line as a dict, or ``{"framework", "model", "error"}`` when
    it fails."""
    import subprocess

    script = BASELINES_DIR / BASELINE_SCRIPTS[framework]
    cmd = [python, str(script), "--model", model, "--batch-size", str(batch_size),
           "--steps", str(steps), "--repeats", str(repeats)] + (["--augment"] if augment else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"framework": framework, "model": model,
                "error": f"{type(err).__name__}: {err}"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            if proc.returncode == 0 and "train_images_per_s" in result:
                result.setdefault("model", model)
                return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"framework": framework, "model": model,
            "error": f"exit {proc.returncode}: {' | '.join(tail) or 'no output'}"}


def add_baselines(r: dict, python: str, steps: int, repeats: int, augment: bool = False,
                  frameworks: tuple[str, ...] = tuple(BASELINE_SCRIPTS),
                  models: tuple[str, ...] | None = None) -> dict:
    """Run the baselines one at a time (after the JAX measurements) for every model of
    ``r["rows"]`` that has one (or ``models``), each at the batch size of that model's plain-key
    row (the first of ``--batch-sizes``), and store them as ``r["baselines"][model][framework]``
    with ``train_ratio`` / ``eval_ratio`` = jaxcnn's images/s over the baseline's (cnn3 entries
    also ``cnn3_ratio`` = ``train_ratio``, the key of older results)."""
    rows = r["rows"]
    if models is None:
        models = tuple(m for m in dict.fromkeys(row["model"] for row in rows.values())
                       if m in BASELINE_MODELS)
    out: dict[str, dict] = {}
    for model in models:
        ours = rows.get(model) or next((row for row in rows.values() if row["model"] == model),
                                       None)
        batch_size = ours["batch_size"] if ours else 128
        out[model] = {}
        for fw in frameworks:
            b = run_baseline(fw, python, model=model, batch_size=batch_size, steps=steps,
                             repeats=repeats, augment=augment)
            if ours is not None and "train_images_per_s" in b:
                b["train_ratio"] = ours["train_images_per_s"] / b["train_images_per_s"]
                if b.get("eval_images_per_s"):
                    b["eval_ratio"] = ours["eval_images_per_s"] / b["eval_images_per_s"]
                if model == "cnn3":
                    b["cnn3_ratio"] = b["train_ratio"]
            out[model][fw] = b
    r["baselines"] = out
    return r


def baseline_key(model: str, framework: str) -> str:
    """The ``--json`` key of a baseline: ``"baseline:torch"`` for cnn3 (as before resnet20 had
    baselines), ``"baseline:torch:resnet20"`` for other models."""
    return f"baseline:{framework}" if model == "cnn3" else f"baseline:{framework}:{model}"



def _num(value, fmt: str, width: int) -> str:
    return f"{value:>{width}{fmt}}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def format_baselines(r: dict) -> list[str]:
    """Lines of the comparison table: per model, jaxcnn's row (at the baselines' batch size)
    and each baseline's train/eval images/s, peak RSS and the ratios jaxcnn / baseline."""
    baselines = r.get("baselines") or {}
    if not baselines:
        return []
    batch = sorted({b.get("batch_size") for by_fw in baselines.values()
                    for b in by_fw.values() if b.get("batch_size")})
    lines = ["", f"vs baselines, batch {', '.join(map(str, batch)) or '?'} (each in its own "
                 "process; jaxcnn/it: jaxcnn's images/s over the baseline's)",
             f"{'model':<10}{'framework':<14}{'train img/s':>13}{'eval img/s':>12}"
             f"{'peak RSS MB':>13}{'jaxcnn/it train':>17}{'eval':>7}",
             "-" * 86]
    for model, by_fw in baselines.items():
        ours = r["rows"].get(model) or next(
            (row for row in r["rows"].values() if row["model"] == model), None)
        if ours is not None:
            rss = ours.get("peak_rss_mb")
            rss_text = f"{rss:>12,.0f}*" if isinstance(rss, (int, float)) else f"{'-':>13}"
            lines.append(f"{model:<10}{'jaxcnn':<14}{ours['train_images_per_s']:>13,.0f}"
                         f"{ours['eval_images_per_s']:>12,.0f}{rss_text}")
        for fw, b in by_fw.items():
            label = fw + (" +aug" if b.get("augment") else "")
            if "error" in b:
                lines.append(f"{model:<10}{label:<14}  failed: {b['error']}")
                continue
            lines.append(f"{model:<10}{label:<14}{b['train_images_per_s']:>13,.0f}"
                         f"{_num(b.get('eval_images_per_s'), ',.0f', 12)}"
                         f"{_num(b.get('peak_rss_mb'), ',.0f', 13)}"
                         f"{_num(b.get('train_ratio'), '.2f', 17)}"
                         f"{_num(b.get('eval_ratio'), '.2f', 7)}")
            if b.get("note"):
                lines.append(f"  ({b['note']})")
            if ours is not None and b.get("params") not in (None, ours["params"]):
                lines.append(f"  (not the same model: {b['params']:,} parameters, jaxcnn "
                             f"{ours['params']:,})")
    lines.append("* jaxcnn: the peak RSS of the whole bench process, not of one model")
    return lines
