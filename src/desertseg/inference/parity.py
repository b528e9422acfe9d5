"""The int8 parity guard: does a quantized graph still segment like the float32 one?

At the masks' full resolution on every labelled check set: argmax agreement with the float32
graph on at least :data:`MIN_AGREEMENT` of the pixels, and mIoU (all classes and classes
present) no lower than float32's by more than :data:`MAX_MIOU_DROP`. Used by
:func:`desertseg.inference.quantize.export_int8`, which writes nothing that fails it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

MIN_AGREEMENT = 0.99
MAX_MIOU_DROP = 0.005


@dataclass
class CheckSet:
    """A labelled check set: ``(image (H, W, 3) uint8, target (H, W) class indices)`` pairs."""

    name: str
    pairs: list[tuple[np.ndarray, np.ndarray]]


@dataclass
class Guard:
    """Parity of an int8 graph with float32 on each check set (``sets[name]`` holds
    ``miou_all``/``miou_present`` for both, the drops and the agreement)."""

    sets: dict = field(default_factory=dict)

    @property
    def worst_agreement(self) -> float:
        return min(s["agreement"] for s in self.sets.values())

    @property
    def worst_drop(self) -> float:
        return max(max(s["miou_all_drop"], s["miou_present_drop"]) for s in self.sets.values())

    @property
    def ok(self) -> bool:
        return self.worst_agreement >= MIN_AGREEMENT and self.worst_drop <= MAX_MIOU_DROP

    def as_try(self, float_blocks: Sequence[str]) -> dict:
        """This result as one try of an int8 export, with the blocks it kept float."""
        return {"float_blocks": list(float_blocks), "worst_agreement": self.worst_agreement, "worst_miou_drop": self.worst_drop}

    def describe(self) -> str:
        return f"worst argmax agreement {self.worst_agreement:.2%} (needs >= {MIN_AGREEMENT:.0%}), worst mIoU drop {self.worst_drop:+.4f} (allowed {MAX_MIOU_DROP})"


def best_try(tries: Sequence[dict]) -> str:
    """How close the best of failed ``tries`` (:meth:`Guard.as_try`) came, for the export's error."""
    best = max(tries, key=lambda t: t["worst_agreement"])
    return (
        f"the best try ({len(best['float_blocks'])} blocks float) reached argmax agreement {best['worst_agreement']:.2%} "
        f"(needs >= {MIN_AGREEMENT:.0%}) with a worst mIoU drop of {best['worst_miou_drop']:+.4f} (allowed {MAX_MIOU_DROP}); file not written"
    )


def guard(float_masks: dict[str, list[np.ndarray]], int8_masks: dict[str, list[np.ndarray]], check_sets: Sequence[CheckSet]) -> Guard:
    """Compare full-resolution masks of the float32 and int8 graphs on every check set."""
    from ..classes import NUM_CLASSES
    from ..metrics import confusion_matrix, summarize

    result = Guard()
    for cs in check_sets:
        scores, agree, total = {}, 0, 0
        for tag, masks in (("float32", float_masks[cs.name]), ("int8", int8_masks[cs.name])):
            cm = sum(confusion_matrix(m, target, NUM_CLASSES) for m, (_, target) in zip(masks, cs.pairs))
            scores[tag] = summarize(cm)
        for a, b in zip(float_masks[cs.name], int8_masks[cs.name]):
            agree, total = agree + int((a == b).sum()), total + a.size
        f, q = scores["float32"], scores["int8"]
        result.sets[cs.name] = {
            "images": len(cs.pairs),
            "agreement": round(agree / total, 5),
            **{f"{k}_{tag}": round(s[k], 4) for k in ("miou_all", "miou_present") for tag, s in (("float32", f), ("int8", q))},
            "miou_all_drop": round(f["miou_all"] - q["miou_all"], 4),
            "miou_present_drop": round(f["miou_present"] - q["miou_present"], 4),
        }
    return result


def read_check_sets(folders: Sequence[Path]) -> tuple[list[CheckSet], list[str]]:
    """Labelled check sets from split folders (Duality layout); ``errors`` names unreadable files."""
    from ..data.formats import get_format
    from ..data.samples import find_samples
    from ..evaluation.loop import labelled_pairs

    sets, errors = [], []
    for folder in folders:
        samples, problems = find_samples(folder)
        errors += problems
        pairs = [(image, target) for _, image, target, _ in labelled_pairs(samples, get_format("duality").read_labels, errors)]
        sets.append(CheckSet(Path(folder).name, pairs))
    return sets, errors
