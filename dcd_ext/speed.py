"""Speed report: a text query against a gallery of G images, teacher all-pairs scoring vs the distilled student.

Full-size teachers are built randomly initialised in memory (the speed of a network does not depend on
its weights): ViLT-B/32 at 384 and METER-base (CLIP ViT-B/16 + RoBERTa-base, 6 co-attention layers) at
384. Their students are the teacher's own towers run one modality at a time with a 256-d projection.

Per query and teacher:
- teacher: encode the query text once, then one joint cross-encoder pass per gallery image
  (image features are computed once per gallery and reported separately, as for the student);
- student: embed the query + ``ops.similarity_topk`` over precomputed gallery embeddings; embedding the
  gallery is a one-off cost, reported in total and amortised over ``--amortise-over`` queries;
- student + re-ranking: the student, then ``teacher.score_pairs`` on its top k (including encoding those
  k candidate images, as ``python -m dcd_ext.search`` does).

Full-size teachers take about a second per pair on a CPU, so the teacher is measured on
``--gallery-measured`` images and its per-pair cost is extrapolated linearly to ``--gallery``. The
student's top-k is measured at both sizes directly (random unit vectors as the large gallery).

``--student RUN/student_dcd --teacher TEACHER [--images GALLERY_FOLDER]`` times your own trained student and
teacher the same way, on your own gallery images (G defaults to the folder's image count).
"""

from __future__ import annotations

import sys
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from PIL import Image

from .cli import (add_teacher_arguments, check_folder_exists, check_teacher_argument, load_teacher_from_args,
                  make_parser, resolve_device, run_command_line, teacher_kind)
from .files import write_text_atomically
from .serving.fusion_speed import add_fusion_speed_arguments, fusion_markdown, fusion_report, fusion_row

CAPTION = "a man in a red jacket rides a bicycle past a row of parked cars on a wet city street"
TARGET_SPEEDUP = 1000.0
EMBED_DIM = 256
FUSION_TEACHERS = ("vilt", "meter")  # the teachers build_fusion_student cuts a student from


@dataclass
class Setup:
    kind: str
    description: str
    teacher: object  # a CrossEncoderTeacher
    student: object  # a DualEncoder
    image_hw: tuple[int, int]  # size of the synthetic gallery photos (height, width)


def vilt_setup(tiny: bool, workdir: str) -> Setup:
    from transformers import ViltConfig, ViltForImageAndTextRetrieval

    from .students.factory import vilt_student_from_model
    from .teachers.tokenizer_files import load_bert_tokenizer, write_wordpiece_vocab
    from .teachers.vilt import ViltTeacher, vilt_image_processor

    write_wordpiece_vocab(workdir, CAPTION.split())
    tokenizer = load_bert_tokenizer(workdir)
    config = (ViltConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, image_size=64, patch_size=16) if tiny else ViltConfig())
    side = config.image_size if tiny else 384
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ViltForImageAndTextRetrieval(config).eval()
    teacher = ViltTeacher(model, tokenizer, vilt_image_processor(side, config.patch_size), micro_batch_size=16)
    student = vilt_student_from_model(model.vilt, tokenizer, side, EMBED_DIM).eval()
    name = "ViLT tiny (1 x 32)" if tiny else "ViLT-B/32, 384 px (12 x 768)"
    return Setup("vilt", name, teacher, student, (48, 64) if tiny else (480, 640))


def meter_setup(tiny: bool, workdir: str) -> Setup:
    from .students.dual_encoder import DualEncoder, StudentConfig
    from .students.factory import HFTokenizer, MeterImageTransform
    from .students.meter_towers import MeterTowers
    from .teachers.meter import MeterConfig, MeterForRetrieval, MeterTeacher
    from .teachers.tokenizer_files import load_roberta_tokenizer, write_byte_bpe_vocab

    write_byte_bpe_vocab(workdir, CAPTION.split())
    tokenizer = load_roberta_tokenizer(workdir)
    if tiny:
        config = MeterConfig(vision_width=64, vision_layers=1, vision_heads=1, vision_mlp=128, image_size=32,
                             vocab_size=len(tokenizer), text_hidden=64, text_layers=1, text_heads=1,
                             text_intermediate=128, hidden=64, cross_layers=1, cross_heads=2, cross_intermediate=128)
    else:
        config = MeterConfig(image_size=384)
    model = MeterForRetrieval(config, initialize=False).init_weights(torch.Generator().manual_seed(0)).eval()
    teacher = MeterTeacher(model, tokenizer, micro_batch_size=16)
    student_config = StudentConfig(kind="meter", embed_dim=EMBED_DIM, image_size=config.image_size,
                                   max_length=config.max_text_len, backbone=config.to_dict())
    student = DualEncoder(student_config, MeterTowers.from_meter(model), HFTokenizer(tokenizer, config.max_text_len),
                          MeterImageTransform(config.image_size)).eval()
    name = "METER tiny (1 + 1 x 64)" if tiny else "METER-base CLIP-16/RoBERTa, 384 px"
    return Setup("meter", name, teacher, student, (48, 64) if tiny else (480, 640))


SETUPS: dict[str, Callable[[bool, str], Setup]] = {"vilt": vilt_setup, "meter": meter_setup}


def user_setup(args, device: torch.device) -> Setup:
    """The user's saved student and teacher (--student, --teacher and its flags)."""
    from .students import load_student

    kind = teacher_kind(args.teacher, args.teacher_kind)
    teacher = load_teacher_from_args(args, device)
    student = load_student(args.student, device).eval()
    return Setup(kind, f"your {kind} teacher {args.teacher} + {student.config.kind} student {args.student}", teacher,
                 student, (480, 640))


def user_gallery(folder: str, count: int) -> tuple[list[Image.Image], int]:
    """The first ``count`` images of a gallery folder (sorted by path) and the folder's image count."""
    from .data.images import open_image
    from .serving.gallery import images_in_folder

    names, paths = images_in_folder(folder)
    return [open_image(p, f"gallery image {n}") for n, p in zip(names[:count], paths[:count])], len(paths)


def timed_ms(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000.0 * (time.perf_counter() - start), out


def gallery_photos(count: int, hw: tuple[int, int]) -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(*hw, 3, generator=g) * 255).byte().numpy()) for _ in range(count)]


def query_texts(count: int) -> list[str]:
    words = CAPTION.split()
    return [" ".join(words[i % len(words):] + words[:i % len(words)]) for i in range(count)]


@torch.no_grad()
def measure_teacher(teacher, images, queries, device) -> dict:
    """Per-item and per-pair costs of all-pairs scoring, each part timed on its own."""
    from .teachers.base import _pad

    teacher.score_pairs(images[:1], queries[:1], [[0, 0]])  # warm-up (lazy initialisation, allocator)
    image_ms, image_items = timed_ms(lambda: teacher._encode_images(images), device)
    text_ms, text_items = timed_ms(lambda: teacher._encode_texts(queries), device)
    pairs = [(i, q) for q in range(len(queries)) for i in range(len(images))]

    def joint():
        step = teacher.micro_batch_size
        for lo in range(0, len(pairs), step):
            chunk = pairs[lo:lo + step]
            image_feats, image_mask = _pad([image_items[i] for i, _ in chunk])
            text_feats, text_mask = _pad([text_items[q] for _, q in chunk])
            teacher._joint_logits(image_feats, image_mask, text_feats, text_mask)

    joint_ms, _ = timed_ms(joint, device)
    return {"image_encode_ms_per_image": image_ms / len(images), "text_encode_ms_per_query": text_ms / len(queries),
            "joint_ms_per_pair": joint_ms / len(pairs)}


@torch.no_grad()
def measure_student(student, images, queries, gallery: int, k: int, device) -> tuple[dict, torch.Tensor]:
    from . import ops

    pixels = student.preprocess_images(images).to(device)
    student.encode_image(pixels[:1])  # warm-up
    image_ms, gallery_embeddings = timed_ms(lambda: student.encode_image(pixels), device)
    query_ms, topk_small_ms, topk_large_ms, top = [], [], [], []
    large = torch.nn.functional.normalize(torch.randn(gallery, gallery_embeddings.shape[1],
                                                      generator=torch.Generator().manual_seed(0)), dim=1).to(device)
    for text in [queries[0]] + list(queries):  # the first round is a warm-up
        ids, mask = student.tokenizer([text])
        ms, emb = timed_ms(lambda: student.encode_text(ids.to(device), mask.to(device)), device)
        small_ms, (_, idx) = timed_ms(lambda: ops.similarity_topk(emb, gallery_embeddings, k), device)
        large_ms, _ = timed_ms(lambda: ops.similarity_topk(emb, large, k), device)
        query_ms.append(ms), topk_small_ms.append(small_ms), topk_large_ms.append(large_ms), top.append(idx[0])

    def mean(xs):
        return sum(xs[1:]) / len(xs[1:])

    return ({"image_embed_ms_per_image": image_ms / len(images), "query_embed_ms": mean(query_ms),
             "topk_ms_measured_gallery": mean(topk_small_ms), "topk_ms_gallery": mean(topk_large_ms)},
            torch.stack(top[1:]).cpu())


@torch.no_grad()
def measure_rerank(teacher, images, queries, top: torch.Tensor, device) -> float:
    """Milliseconds per query for the teacher to score (and encode) the query's student candidates."""
    total = 0.0
    for q, text in enumerate(queries):
        cand = [int(i) for i in top[q] if i >= 0]
        pairs = [[n, 0] for n in range(len(cand))]
        ms, _ = timed_ms(lambda: teacher.score_pairs([images[i] for i in cand], [text], pairs), device)
        total += ms
    return total / len(queries)


def report_one(setup: Setup, gallery_measured: int, gallery: int, num_queries: int, k: int,
               amortise_over: int, device: torch.device, images: Optional[list[Image.Image]] = None,
               fusion_layers: Optional[str] = None, cascade_depths: Sequence[int] = (10, 50)) -> dict:
    """``images``: the gallery images to time on (default: ``gallery_measured`` random photos). The fusion
    student and the cascade are measured for the teachers a fusion student can be cut from (ViLT, METER)."""
    setup.teacher.to(device)
    setup.student.to(device)
    images = images if images is not None else gallery_photos(gallery_measured, setup.image_hw)
    gallery_measured = len(images)
    queries = query_texts(num_queries)
    teacher = measure_teacher(setup.teacher, images, queries, device)
    student, top = measure_student(setup.student, images, queries, gallery, min(k, gallery_measured), device)
    rerank_measured = measure_rerank(setup.teacher, images, queries, top, device)
    # the student's top k can hold at most the measured gallery: scale the per-candidate cost up to k
    rerank_ms = rerank_measured * k / min(k, gallery_measured)

    def teacher_ms(g):
        return teacher["text_encode_ms_per_query"] + teacher["joint_ms_per_pair"] * g

    def sizes(g, topk_ms, extrapolated):
        student_ms = student["query_embed_ms"] + topk_ms
        gallery_embed_ms = student["image_embed_ms_per_image"] * g
        return {"gallery": g, "extrapolated": extrapolated,
                "teacher_all_pairs_ms_per_query": teacher_ms(g),
                "teacher_gallery_encode_ms_total": teacher["image_encode_ms_per_image"] * g,
                "student_ms_per_query": student_ms,
                "student_gallery_embed_ms_total": gallery_embed_ms,
                "student_gallery_embed_ms_per_query_amortised": gallery_embed_ms / amortise_over,
                "student_rerank_ms_per_query": student_ms + rerank_ms,
                "speedup_student": teacher_ms(g) / student_ms,
                "speedup_student_incl_gallery": teacher_ms(g) / (student_ms + gallery_embed_ms / amortise_over),
                "speedup_student_rerank": teacher_ms(g) / (student_ms + rerank_ms)}

    at_large = sizes(gallery, student["topk_ms_gallery"], True)
    result = {"teacher": setup.kind, "config": setup.description,
              "measured": {"teacher": teacher, "student": student, "rerank_ms_per_query": rerank_measured,
                           "rerank_candidates_measured": min(k, gallery_measured)},
              "rows": [sizes(gallery_measured, student["topk_ms_measured_gallery"], False), at_large],
              "meets_target": at_large["speedup_student"] >= TARGET_SPEEDUP}
    if setup.kind in FUSION_TEACHERS:
        # the shallow cross-encoder (fusion) student and the cascade (student retrieves, fusion re-ranks)
        result["fusion"] = fusion_report(setup, images, queries, top, device, measure_teacher, measure_rerank,
                                         fusion_layers, cascade_depths)
        for row in result["rows"]:
            row.update(fusion_row(result, row))
    return result


def extrapolation_note(gallery_measured: int, gallery: int, k: int) -> str:
    note = (f"teacher per-pair joint cost measured on {gallery_measured} images and extrapolated linearly to "
            f"{gallery}; student gallery embedding cost per image measured on {gallery_measured} images and "
            f"multiplied by {gallery}; student query embedding and similarity_topk measured at both gallery sizes")
    if k > gallery_measured:
        note += f"; re-ranking cost measured for {gallery_measured} candidates and scaled to k = {k}"
    return note


def fmt_ms(ms: float) -> str:
    return f"{ms / 1000:,.1f} s" if ms >= 10_000 else f"{ms:,.1f} ms"


def markdown(report: dict) -> str:
    k = report["k"]
    lines = [f"| teacher | G | teacher all-pairs / query | student / query | student gallery embedding (once) | "
             f"student + re-rank top {k} / query | speedup student | speedup with re-rank |",
             "|---|---|---|---|---|---|---|---|"]
    for result in report["results"]:
        for row in result["rows"]:
            g = f"{row['gallery']:,}" + (" (extrapolated)" if row["extrapolated"] else " (measured)")
            lines.append(f"| {result['config']} | {g} | {fmt_ms(row['teacher_all_pairs_ms_per_query'])} | "
                         f"{fmt_ms(row['student_ms_per_query'])} | {fmt_ms(row['student_gallery_embed_ms_total'])} | "
                         f"{fmt_ms(row['student_rerank_ms_per_query'])} | {row['speedup_student']:,.0f}x | "
                         f"{row['speedup_student_rerank']:,.1f}x |")
    return "\n".join(lines)


def build_parser():
    p = make_parser("python -m dcd_ext.speed", __doc__.split("\n\n")[0])
    p.add_argument("--teachers", help="comma-separated randomly initialised full-size (or --tiny) teachers to report: "
                                      "vilt, meter (default: both, or none when --student/--teacher are given)")
    p.add_argument("--student", help="your saved student folder, timed against --teacher (both needed)")
    add_teacher_arguments(p, purpose="your teacher, timed against --student")
    p.add_argument("--images", help="your gallery: a folder of images (its first --gallery-measured are timed; "
                                    "default: random 480 x 640 photos)")
    p.add_argument("--gallery-measured", type=int, default=8, help="gallery images the teacher is actually timed on")
    p.add_argument("--gallery", type=int,
                   help="gallery size the report extrapolates to (default: the --images folder's count, else 5000)")
    p.add_argument("--queries", type=int, default=2, help="text queries timed")
    p.add_argument("--k", type=int, default=10, help="student candidates the teacher re-ranks per query")
    p.add_argument("--amortise-over", type=int, default=25000,
                   help="queries the one-off gallery embedding is spread over (COCO 5K test: 25,000 captions)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: torch's default). On a shared machine 1 avoids thread wake-up "
                        "stalls that inflate small operations like a batch-1 query")
    p.add_argument("--tiny", action="store_true", help="tiny random configurations (seconds; for tests)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    add_fusion_speed_arguments(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.student) != bool(args.teacher):
        raise ValueError("student: --student and --teacher go together (your student is timed against your teacher)")
    own = bool(args.student)
    teachers = args.teachers if args.teachers is not None else ("" if own else "vilt,meter")
    kinds = [t.strip() for t in teachers.split(",") if t.strip()]
    unknown = [t for t in kinds if t not in SETUPS]
    if unknown or not (kinds or own):
        raise ValueError(f"teachers: expected a comma-separated subset of {list(SETUPS)}; got {teachers!r}")
    for name in ("gallery_measured", "gallery", "queries", "k", "amortise_over"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"{name}: must be at least 1; got {getattr(args, name)}")
    images, folder_count = (user_gallery(args.images, args.gallery_measured) if args.images else (None, 0))
    if args.gallery is None:
        args.gallery = folder_count or 5000
    if args.threads < 0:
        raise ValueError(f"threads: must be 0 (default) or positive; got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if own:
        check_folder_exists(args.student)
        check_teacher_argument(args)
    device = resolve_device(args.device)
    from .retrieval.cascade import parse_depths
    cascade_depths = parse_depths(args.cascade_k)
    results = []
    if own:
        setup = user_setup(args, device)
        results.append({**report_one(setup, args.gallery_measured, args.gallery, args.queries, args.k,
                                     args.amortise_over, device, images, args.fusion_layers, cascade_depths),
                        "student_path": os.path.abspath(args.student), "teacher_path": os.path.abspath(args.teacher)})
        del setup
    for kind in kinds:
        with tempfile.TemporaryDirectory() as workdir:
            setup = SETUPS[kind](args.tiny, workdir)
            results.append(report_one(setup, args.gallery_measured, args.gallery, args.queries, args.k,
                                      args.amortise_over, device, images, args.fusion_layers, cascade_depths))
        del setup
    report = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "tiny": args.tiny,
              "gallery_measured": len(images) if images is not None else args.gallery_measured,
              "gallery": args.gallery, "gallery_images": os.path.abspath(args.images) if args.images else None,
              "queries": args.queries,
              "k": args.k, "amortise_over": args.amortise_over, "target_speedup": TARGET_SPEEDUP,
              "extrapolation": extrapolation_note(len(images) if images is not None else args.gallery_measured,
                                                  args.gallery, args.k), "results": results}
    print(markdown(report))
    print("\n" + fusion_markdown(report, fmt_ms))
    print(f"\nExtrapolated: {report['extrapolation']}.")
    for result in results:
        verdict = "meets" if result["meets_target"] else "misses"
        print(f"{result['config']}: {verdict} the {TARGET_SPEEDUP:,.0f}x target at G = {args.gallery:,}.")
    if args.json:
        write_text_atomically(args.json, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main))
