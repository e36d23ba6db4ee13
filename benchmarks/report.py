"""Turn a pytest-benchmark JSON file into a markdown table: per group, median times and ratios.

    python benchmarks/report.py results.json > results.md

In each group the slowest candidate whose name contains 'reference' or 'composite' (else the
slowest) is the baseline; every row shows baseline median / its median as the speed-up.
"""
import json
import sys
from collections import defaultdict


def baseline_of(rows):
    named = [r for r in rows if any(k in r["name"] for k in ("reference", "composite", "naive", "baseline"))]
    return max(named or rows, key=lambda r: r["stats"]["median"])


def render(data) -> str:
    machine = data.get("machine_info", {})
    lines = [f"machine: {machine.get('unet_fast_machine', machine.get('cpu', {}).get('brand_raw', '?'))}",
             f"date: {data.get('datetime', '?')}", ""]
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench.get("group") or bench["name"]].append(bench)
    for group, rows in groups.items():
        base = baseline_of(rows)
        lines += [f"### {group}", "", "| benchmark | median ms | vs baseline | extra |", "|---|---:|---:|---|"]
        for r in sorted(rows, key=lambda r: r["stats"]["median"]):
            median = r["stats"]["median"]
            extra = dict(r.get("extra_info", {}))
            if "gflop" in extra:
                extra["TFLOP/s"] = round(extra["gflop"] / median / 1e3, 2)
            if "tiles" in extra:
                extra["ms/tile"] = round(median * 1e3 / extra["tiles"], 3)
            if "gbytes" in extra:
                extra["GB/s"] = round(extra["gbytes"] / median, 1)
            ratio = base["stats"]["median"] / median
            lines.append(f"| {r['name']} | {median * 1e3:.3f} | {ratio:.2f}x | "
                         f"{', '.join(f'{k}={v}' for k, v in extra.items())} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(render(json.load(f)))
