"""The human-readable model card written beside every exported model (Markdown)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vitrina.description import ExportInfo, ModelDescription
from vitrina.preprocess import Preprocess


def _figure(value: Any, digits: int = 4) -> str:
    if isinstance(value, (int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return "n/a"


def _preprocessing_text(preprocess: Preprocess) -> str:
    how = {
        "center_crop": f"shorter side scaled to {preprocess.scale_size} px, centre {preprocess.input_size} px square cropped",
        "letterbox": f"longer side scaled to {preprocess.input_size} px, padded to a square with value {preprocess.pad_value}",
        "squash": f"resized to {preprocess.input_size}x{preprocess.input_size} px ignoring the aspect ratio",
    }[preprocess.resize]
    colour = "RGB" if preprocess.channels == 3 else "grayscale"
    return (
        f"{colour}; {how} ({preprocess.interpolation}); values scaled to [0, 1], then mean "
        f"{list(preprocess.mean)} subtracted and divided by std {list(preprocess.std)}"
    )


def _per_class_table(metrics: dict[str, Any]) -> list[str]:
    per_class = metrics.get("per_class") or {}
    if not per_class:
        return ["No per-class figures were recorded for this run."]
    lines = ["| class | precision | recall | F1 | images |", "|---|---:|---:|---:|---:|"]
    for name, row in per_class.items():
        lines.append(
            f"| {name} | {_figure(row.get('precision'), 3)} | {_figure(row.get('recall'), 3)} | "
            f"{_figure(row.get('f1'), 3)} | {row.get('support', 'n/a')} |"
        )
    return lines


def _mirror_text(description: ModelDescription) -> str:
    mirror = description.mirror
    if mirror is None:
        return ""
    which = ("every photo's probabilities" if not math.isfinite(mirror.margin)
             else f"the probabilities of a photo whose top two probabilities differ by less than {mirror.margin:.4f}")
    cost = f" ({mirror.passes:.2f} network passes per photo on the validation photos)" if mirror.passes else ""
    return (f" vitrina's predictors (and the server) average {which} with its mirror image's{cost}; "
            "the graph itself runs one pass.")


def _export_check_lines(export: ExportInfo, int8: dict[str, Any] | None, int8_file: Path | None) -> list[str]:
    """The model card's export checks: the precision chosen and why, parity with PyTorch, int8's accuracy change."""
    lines: list[str] = []
    choice = export.checks.get("choice")
    if choice:
        others = [f"`{name}` ({precision})" for precision, name in choice.get("files", {}).items() if precision != choice["chosen"]]
        lines.append(f"- Precision of this model: {choice['chosen']}, because {choice['reason']}"
                     + (f"; the other precision is beside it: {', '.join(others)}." if others else "."))
    parity = export.checks.get("parity")
    if parity:
        lines.append(
            f"- ONNX fp32 against PyTorch on {parity['n_images']} real validation images: largest probability "
            f"difference {parity['max_abs_diff']:.2e} (limit {parity['tolerance']:.0e}); top-1 identical on "
            f"{parity['top1_agreement']:.1%}."
        )
    if int8:
        verdict = "within" if int8.get("within_tolerance") else "OUTSIDE"
        lines.append(
            f"- int8 ({int8_file.name if int8_file else 'quantised file'}, calibrated on {int8['calibration_images']} "
            f"training images): validation accuracy {int8['fp32_accuracy']:.4f} -> {int8['int8_accuracy']:.4f} "
            f"({int8['accuracy_change_points']:+.2f} points, {verdict} the {int8['tolerance_points']:g}-point tolerance); "
            f"{int8['fp32_images_per_second']:.0f} -> {int8['int8_images_per_second']:.0f} images/s model-only at batch 32."
        )
    return lines


def model_card(description: ModelDescription, int8: dict[str, Any] | None = None, int8_file: Path | None = None) -> str:
    """Markdown: intended use, data, preprocessing, metrics per class, export checks and limits."""
    metrics = dict(description.metrics)
    export = description.export or ExportInfo()
    preprocess = description.preprocess
    classes = description.classes
    split = metrics.get("split", "test")
    n_images = metrics.get("n_images")
    thresholds = description.thresholds.to_dict() if description.thresholds else None
    neighbours = description.neighbours
    lines = [
        f"# Model card: {description.model} product classifier ({len(classes)} classes)",
        "",
        f"Exported by vitrina {export.vitrina_version or '?'} on {export.exported_at or '?'}; "
        f"trained with vitrina {description.vitrina_version or '?'} ({description.mode} mode).",
        "",
        "## Intended use",
        "",
        "Assigning each product photo to one of the classes below, e.g. to sort a catalogue, pre-fill a "
        "category field or flag listings for review. The model scores only these classes; it is meant "
        "for photos like the ones it was trained on, with a person checking uncertain or costly decisions.",
        "",
        f"Classes: {', '.join(classes)}.",
        "",
        "## Data",
        "",
        f"Trained on `{description.trained_on or 'unknown'}`.",
    ]
    splits = metrics.get("splits") or {}
    if splits:
        lines.append("Images per evaluated split: " + ", ".join(f"{name} {row.get('n_images', '?')}" for name, row in splits.items()) + ".")
    lines += [
        "",
        "## Input",
        "",
        f"ONNX input `{export.input}`: float32 N x {preprocess.channels} x {preprocess.input_size} x "
        f"{preprocess.input_size}, batch size free. Output `{export.output}`: "
        "class probabilities (softmax) in the class order above."
        + (f" They mix the classifier's softmax (weight {1 - neighbours.weight:g}) with a vote of the "
           f"{neighbours.k} most similar of {neighbours.bank_size} training photos (weight {neighbours.weight:g}), "
           "whose features the file holds" + (f", {neighbours.validation_photos} of them the validation photos, added once "
                                               "everything chosen on them was chosen" if neighbours.validation_photos else "")
           + "." if neighbours else "")
        + (" Each photo's probabilities are averaged with its mirror image's (the graph runs the network twice)."
           if description.flip_average else "")
        + _mirror_text(description),
        "",
        f"Preprocessing: {_preprocessing_text(preprocess)}.",
        "",
        "## Metrics",
        "",
        f"On the {split} split ({n_images if n_images is not None else '?'} images): accuracy "
        f"{_figure(metrics.get('accuracy'))}, macro F1 {_figure(metrics.get('macro_f1'))}"
        + (f", top-3 accuracy {_figure(metrics['top3_accuracy'])}" if "top3_accuracy" in metrics else "")
        + (f", expected calibration error {_figure(metrics['ece'])}" if "ece" in metrics else "")
        + ".",
        "",
        *_per_class_table(metrics),
        "",
        "## Export checks",
        "",
    ]
    lines += _export_check_lines(export, int8, int8_file)
    if thresholds:
        lines += ["", f"Decision thresholds: {thresholds} (predictions below them are marked uncertain)."]
    lines += [
        "",
        "## Limits",
        "",
        "- Closed set: every photo gets one of these classes, even a product of a kind never seen in training; "
        "a low top probability is the only hint.",
        f"- Images are reduced to {preprocess.input_size} px before the model sees them: small print, fine "
        "texture and details outside the "
        + ("central crop" if preprocess.resize == "center_crop" else "frame")
        + " are lost.",
        "- Accuracy holds for photos like the training data (same kind of shots, lighting, backgrounds); "
        "measure it again on your own photos before relying on it.",
    ]
    if isinstance(n_images, int) and n_images < 500:
        lines.append(f"- The figures above come from only {n_images} images; each is uncertain by several points.")
    weak = [name for name, row in (metrics.get("per_class") or {}).items() if isinstance(row.get("f1"), (int, float)) and row["f1"] < 0.5]
    if weak:
        lines.append(f"- Weak classes (F1 below 0.5): {', '.join(weak)}.")
    return "\n".join(lines) + "\n"


def write_model_card(path: Path, description: ModelDescription, int8: dict[str, Any] | None = None, int8_file: Path | None = None) -> Path:
    path.write_text(model_card(description, int8, int8_file), encoding="utf-8")
    return path
