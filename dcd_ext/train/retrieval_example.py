"""The demo's retrieval example: one test caption and the images the teacher, the contrastive-only
student and the DCD student rank first for it (retrieval_example.png), the caption's image framed in green."""

from __future__ import annotations

import torch

from ..data.retrieval_set import RetrievalSet
from ..files import write_atomically
from ..retrieval.evaluation import student_rankings
from .run_dir import RunDir

SHOWN = 5  # images per row


@torch.no_grad()
def teacher_ranking(teacher, split: RetrievalSet, caption: int, depth: int) -> list[int]:
    """The teacher's top ``depth`` images for one caption (it scores the caption with every image)."""
    pairs = torch.stack([torch.arange(split.num_images), torch.zeros(split.num_images, dtype=torch.long)], dim=1)
    scores = teacher.score_pairs(split.load_images(range(split.num_images)), [split.captions[caption]], pairs)
    scores = scores.float().cpu().view(-1)
    return torch.sort(scores, descending=True, stable=True).indices[:depth].tolist()


def pick_caption(split: RetrievalSet, baseline_t2i: torch.Tensor, dcd_t2i: torch.Tensor) -> int:
    """The first caption the DCD student ranks its image first for and the contrastive-only student does
    not (the case the demo is about), else the first caption the DCD student gets right, else caption 0.
    Captions whose text no other image has come first: their answer is unambiguous."""
    owner = torch.as_tensor(split.caption_image)
    images_of: dict[str, set] = {}
    for text, image in zip(split.captions, split.caption_image):
        images_of.setdefault(text, set()).add(image)
    unique = torch.tensor([len(images_of[text]) == 1 for text in split.captions])
    dcd_right = dcd_t2i[:, 0] == owner
    base_wrong = baseline_t2i[:, 0] != owner
    for mask in (dcd_right & base_wrong & unique, dcd_right & base_wrong, dcd_right & unique, dcd_right):
        hits = mask.nonzero().flatten()
        if len(hits):
            return int(hits[0])
    return 0


def write_retrieval_example(run: RunDir, split: RetrievalSet, teacher, students: dict, device,
                            name: str = "retrieval_example.png") -> tuple[str, str]:
    """Draws the example; returns (file name, one-line description for the report).

    ``students`` maps a row label to a student (``"contrastive-only student"``, ``"DCD student"``, in order:
    the first is the baseline, the last the DCD student)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rankings = {label: student_rankings(student, split, SHOWN, device=device)[1] for label, student in students.items()}
    labels = list(rankings)
    caption = pick_caption(split, rankings[labels[0]], rankings[labels[-1]])
    rows = {"teacher (all pairs)": teacher_ranking(teacher, split, caption, SHOWN)}
    rows.update({label: ranking[caption, :SHOWN].tolist() for label, ranking in rankings.items()})
    owner = split.caption_image[caption]
    # other images with a caption of the same text are right answers too, though recall counts only the owner
    same_text = {i for text, i in zip(split.captions, split.caption_image) if text == split.captions[caption]} - {owner}

    fig, axes = plt.subplots(len(rows), SHOWN, figsize=(1.6 * SHOWN + 1.6, 1.7 * len(rows) + 0.6), squeeze=False)
    for r, (label, top) in enumerate(rows.items()):
        for c in range(SHOWN):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(top) or top[c] < 0:
                ax.axis("off")
                continue
            image = split.load_images([top[c]])[0]
            ax.imshow(image, interpolation="nearest")
            colour = ("tab:green" if top[c] == owner else "gold" if top[c] in same_text else "tab:red")
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=4, edgecolor=colour))
            if r == 0:
                ax.set_title(f"rank {c + 1}", fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    legend = "green: the query's image" + ("; gold: another image with this caption" if same_text else "")
    fig.suptitle(f'query: "{split.captions[caption]}"  ({legend})', fontsize=10)
    fig.tight_layout()
    write_atomically(run.file(name), lambda temp: fig.savefig(temp, dpi=110, format="png"))
    plt.close(fig)
    ranks = []
    for label, top in rows.items():
        where = top.index(owner) + 1 if owner in top else None
        ranks.append(f"{label}: {'rank ' + str(where) if where else 'not in the top ' + str(SHOWN)}")
    return name, f'Query "{split.captions[caption]}" (test caption {caption}): ' + "; ".join(ranks) + "."
