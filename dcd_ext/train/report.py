"""The run's human-readable outputs: loss and recall plots (PNG, matplotlib Agg) and report.md."""

from __future__ import annotations

import os
from typing import Optional

from ..files import write_atomically, write_text_atomically
from .run_dir import RunDir


def split_rows(rows: list[dict]) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """metrics.jsonl rows grouped by run: (training rows, validation rows)."""
    train: dict[str, list[dict]] = {}
    val: dict[str, list[dict]] = {}
    for row in rows:
        target = val if row.get("split") == "val" else train
        target.setdefault(row["run"], []).append(row)
    return train, val


def save_figure(fig, run: RunDir, name: str) -> str:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    write_atomically(run.file(name), lambda temp: fig.savefig(temp, dpi=110, format="png"))
    plt.close(fig)
    return name


def write_plots(run: RunDir) -> list[str]:
    """loss.png (training loss per logged step) and recall.png (validation RSUM per epoch); returns file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = split_rows(run.read_metrics())
    written = []
    if train:
        # the teacher's own training (demo) gets a panel of its own: its losses are on another scale
        groups = [[n for n in train if n.startswith("teacher")], [n for n in train if not n.startswith("teacher")]]
        groups = [g for g in groups if g]
        fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4), squeeze=False)
        for ax, names in zip(axes[0], groups):
            for name in names:
                rows = train[name]
                ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], label=f"{name} loss")
                if "con" in rows[0] and "dist" in rows[0]:
                    ax.plot([r["epoch"] for r in rows], [r["con"] for r in rows], "--", alpha=0.6,
                            label=f"{name} contrastive term")
            ax.set_xlabel("epoch")
            ax.set_ylabel("training loss")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        written.append(save_figure(fig, run, "loss.png"))
    if val:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for name, rows in val.items():
            epochs = [r["epoch"] for r in rows]
            axes[0].plot(epochs, [r["rsum"] for r in rows], marker="o", label=name)
            axes[1].plot(epochs, [r["i2t_r1"] for r in rows], marker="o", label=f"{name} i2t")
            axes[1].plot(epochs, [r["t2i_r1"] for r in rows], marker="s", linestyle="--", label=f"{name} t2i")
        axes[0].set_ylabel("validation RSUM")
        axes[1].set_ylabel("validation Recall@1 (%)")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        written.append(save_figure(fig, run, "recall.png"))
    return written


def markdown_table(results: dict[str, dict]) -> str:
    lines = ["| model | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | RSUM | ms/query |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(value, digits=1):
        return "n/a" if value is None else f"{value:.{digits}f}"

    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(cell(r[k]) for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1",
                                                                       "t2i_r5", "t2i_r10", "rsum"))
                     + f" | {cell(r['ms_per_query'], 3)} |")
    return "\n".join(lines)


def write_report(run: RunDir, title: str, command: str, sections: list[tuple[str, str]],
                 results: dict[str, dict], plots: list[str], notes: Optional[list[str]] = None) -> str:
    """report.md: the command, the results table, free-form sections, notes and the plots."""
    parts = [f"# {title}", "", f"Command: `{command}`", "", "## Results", "", markdown_table(results), ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body, ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if plots:
        parts += ["## Curves", ""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in plots] + [""]
    return write_text_atomically(run.file("report.md"), "\n".join(parts))

