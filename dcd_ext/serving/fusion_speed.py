"""The fusion-student rows of ``python -m dcd_ext.speed``: a shallow cross-encoder (``build_fusion_student``,
a subset of the teacher's joint layers on its frozen encoders) scoring every gallery image per query, and
the cascade: the dual-encoder student retrieves, the fusion student re-ranks its top k (no teacher at
query time).

The fusion student is timed exactly as the teacher is (``speed.measure_teacher``: query text encoded once,
one joint pass per gallery image, gallery image features computed once and reported apart) and as the
teacher's re-ranking is (``speed.measure_rerank``: the query's candidates scored, their images encoded).
The re-ranking is measured on the candidates the measured gallery holds and scaled linearly to k (in every
row, as the teacher's re-ranking is).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

DEFAULT_CASCADE_DEPTHS = "10,50"


def add_fusion_speed_arguments(parser) -> None:
    parser.add_argument("--fusion-layers", default=None,
                        help="joint layers of the teacher the fusion student keeps, e.g. 0,3,5 (default: half of "
                             "them, first to last: METER 0,3,5; ViLT-B 0,2,4,7,9,11)")
    parser.add_argument("--cascade-k", default=DEFAULT_CASCADE_DEPTHS,
                        help="depths at which the fusion student re-ranks the student's top k (comma-separated)")


def fusion_report(setup, images, queries, top, device, measure_teacher: Callable, measure_rerank: Callable,
                  layers: Optional[str] = None, depths: Sequence[int] = (10, 50)) -> dict:
    """Per-item, per-pair and per-candidate costs of the fusion student of ``setup.teacher``."""
    from ..students.fusion import build_fusion_student, parse_layers

    fusion = build_fusion_student(setup.teacher, None if layers is None else parse_layers(layers)).eval()
    costs = measure_teacher(fusion, images, queries, device)
    candidates = top.shape[1]
    rerank_ms = measure_rerank(fusion, images, queries, top, device)
    return {"layers": list(fusion.layers_kept), "teacher_layers": fusion.teacher_layers,
            "trained_parameters": sum(p.numel() for p in fusion.parameters()), "measured": costs,
            "rerank_ms_per_candidate": rerank_ms / candidates, "rerank_candidates_measured": candidates,
            "depths": list(depths)}


def fusion_row(result: dict, row: dict) -> dict:
    """The fusion and cascade times at one gallery size, from the measured costs and the student's row."""
    fusion = result["fusion"]
    costs = fusion["measured"]
    g = row["gallery"]
    out = {"fusion_all_pairs_ms_per_query": costs["text_encode_ms_per_query"] + costs["joint_ms_per_pair"] * g,
           "fusion_gallery_encode_ms_total": costs["image_encode_ms_per_image"] * g}
    for k in fusion["depths"]:
        # scaled to k in every row, as the teacher's re-ranking is (speed.report_one)
        out[f"cascade_top{k}_ms_per_query"] = row["student_ms_per_query"] + fusion["rerank_ms_per_candidate"] * k
    return out


def fusion_markdown(report: dict, fmt_ms: Callable[[float], str]) -> str:
    results = [r for r in report["results"] if "fusion" in r]
    if not results:
        return ""
    depths = results[0]["fusion"]["depths"]
    lines = ["| teacher | G | teacher all-pairs / query | fusion student | fusion all-pairs / query | student / query | "
             + " | ".join(f"cascade top {k} / query" for k in depths) + " | speedup fusion vs teacher |",
             "|---|---|---|---|---|---|" + "---|" * len(depths) + "---|"]
    for result in results:
        fusion = result["fusion"]
        name = f"layers {','.join(map(str, fusion['layers']))} of {fusion['teacher_layers']}"
        for row in result["rows"]:
            extra = fusion_row(result, row)
            g = f"{row['gallery']:,}" + (" (extrapolated)" if row["extrapolated"] else " (measured)")
            cascades = " | ".join(fmt_ms(extra[f"cascade_top{k}_ms_per_query"]) for k in depths)
            lines.append(f"| {result['config']} | {g} | {fmt_ms(row['teacher_all_pairs_ms_per_query'])} | {name} | "
                         f"{fmt_ms(extra['fusion_all_pairs_ms_per_query'])} | {fmt_ms(row['student_ms_per_query'])} | "
                         f"{cascades} | "
                         f"{row['teacher_all_pairs_ms_per_query'] / extra['fusion_all_pairs_ms_per_query']:,.1f}x |")
    return "\n".join(lines)
