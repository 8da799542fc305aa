"""One forward pass of the student on one training example, before the run folder is made: a student that
cannot read its own data (a CLIP folder whose ``preprocessor_config.json`` makes 96 px images for a 64 px
model, a tokenizer whose ids exceed the text tower) is refused at the start, not at the first step."""

from __future__ import annotations

import torch

from ..data import RetrievalSet


def check_student_reads_an_example(student, split: RetrievalSet, spec: str) -> None:
    """Preprocess, tokenize and embed the first caption of ``split`` and its image (no gradient, eval mode);
    any failure becomes a ValueError naming the student ``spec`` and the example."""
    if getattr(student, "is_cross_encoder", False) or split.num_captions == 0:
        return  # a fusion student is checked by its own steps
    i = int(split.caption_image[0])
    try:
        image, caption = split.load_image(i), split.captions[0]
    except OSError:
        return  # unreadable images are screened before (--skip-bad-images) and named with their line when read
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the run's random stream stays as it was
            pixels = student.preprocess_images([image])
            ids, mask = student.tokenizer([caption])
            device = next(student.parameters()).device
            student(pixels.to(device), ids.to(device), mask.to(device))
    except Exception as e:  # noqa: BLE001 -- whatever the student raises, the run must not start
        raise ValueError(f"student: {spec} cannot embed a training example (image {split.image_names[i]}, caption "
                         f"{caption!r}): {type(e).__name__}: {e} -- checked before the run folder is made; fix the "
                         f"student folder (for a CLIP / SigLIP folder: does preprocessor_config.json's image size "
                         f"match config.json's vision image_size?)") from e
    finally:
        student.train(was_training)
