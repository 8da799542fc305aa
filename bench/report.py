"""Turns a pytest-benchmark JSON file into the markdown tables of BENCHMARKS.md.

python bench/report.py bench-results.json
Per group: each implementation's median time, its ratio to dcd_ext's median (> 1: dcd_ext is faster)
and the peak extra memory recorded in the benchmark's extra info.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def impl_of(bench: dict) -> str:
    params = bench.get("params") or {}
    return str(params.get("impl") or bench["name"])


def tables(data: dict) -> str:
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    lines = []
    machine = data.get("machine_info", {})
    lines.append(f"Machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
                 f"Python {machine.get('python_version', '?')}; run {data.get('datetime', '?')}")
    for group in sorted(groups):
        rows = groups[group]
        ours = [r for r in rows if impl_of(r) == "dcd_ext"]
        base = ours[0]["stats"]["median"] if ours else None
        lines += ["", f"**{group}**", "", "| implementation | median s | vs dcd_ext | peak extra MiB |",
                  "| --- | ---: | ---: | ---: |"]
        for r in sorted(rows, key=lambda r: r["stats"]["median"]):
            med = r["stats"]["median"]
            ratio = f"{med / base:.2f}x" if base else "-"
            mem = r.get("extra_info", {}).get("peak_extra_mib")
            mem_s = f"{mem:.0f}" if isinstance(mem, (int, float)) else "-"
            lines.append(f"| {impl_of(r)} | {med:.3f} | {ratio} | {mem_s} |")
        ceiling = [r for r in rows if impl_of(r).startswith("onednn")]
        if base and ceiling:
            lines += ["", f"dcd_ext takes {base / ceiling[0]['stats']['median']:.2f}x the time of "
                          f"{impl_of(ceiling[0])} (the oneDNN GEMM ceiling)."]
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(tables(json.load(f)))
