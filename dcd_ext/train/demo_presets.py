"""The built-in demo's presets: data sizes, the teacher's recipe and the students' settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TeacherRecipe:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    patch_size: int = 8
    max_text_len: int = 16
    warmup_epochs: int = 20
    warmup_batch_size: int = 64
    warmup_lr: float = 2e-3
    finetune_epochs: int = 6
    finetune_batch_size: int = 16
    finetune_negatives: int = 7
    finetune_hard: int = 0  # of finetune_negatives, drawn from the mined hard captions (0: all at random)
    hard_depth: int = 20  # mined hard captions per caption
    finetune_lr: float = 1e-3


@dataclass(frozen=True)
class DemoPreset:
    teacher_images: int
    train_images: int
    val_images: int
    test_images: int
    image_size: int = 32
    teacher: TeacherRecipe = field(default_factory=TeacherRecipe)
    student_width: int = 128
    embed_dim: int = 128
    student_channels: tuple[int, ...] = (16, 32, 64)
    student_layers: int = 2
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    k: int = 15
    alpha: float = 0.8  # distillation weight: 0.2 / 0.5 / 0.8 / 1.0 gave 160 / 186 / 198 / 181 RSUM (seed 1)
    rerank_k: int = 10
    teacher_pool: int = 16


PRESETS = {
    "tiny": DemoPreset(teacher_images=48, train_images=48, val_images=16, test_images=24,
                       teacher=TeacherRecipe(hidden=32, layers=1, heads=2, warmup_epochs=1, finetune_epochs=1,
                                             finetune_batch_size=16, finetune_negatives=3, finetune_hard=1,
                                             hard_depth=4),
                       student_width=32, embed_dim=32, student_channels=(8, 8, 16), student_layers=1,
                       epochs=2, batch_size=16, k=3, rerank_k=5, teacher_pool=6),
    "default": DemoPreset(teacher_images=2000, train_images=200, val_images=100, test_images=300),
}
