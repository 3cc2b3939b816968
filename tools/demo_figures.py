"""Reprint the README's demo figures from a finished run (run from the workflow's folder):
the stage-time table (each rule's wall seconds, from the `benchmark:` files Snakemake
writes under benchmarks/) and the inpainting consistency of each variant (from
results/<scene>/inpaint/summary.json).

    /usr/bin/time -f %e .venv/bin/snakemake --cores 2   # the end-to-end figure: its last line
    .venv/bin/python tools/demo_figures.py                # the table and the consistency
    .venv/bin/python tools/demo_figures.py --scene demo --root /path/to/a/run
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

# the README table's rows, in its order: (row, benchmark files under benchmarks/)
ROWS = (
    ("generate", ["generated/{scene}.tsv"]),
    ("models", ["models.tsv"]),
    ("scene", ["{scene}/scene.tsv"]),
    ("poses", ["{scene}/poses.tsv"]),
    ("masks", ["{scene}/masks.tsv"]),
    ("pretrain", ["{scene}/pretrain.tsv"]),
    ("base", ["{scene}/base.tsv"]),
    ("inpaint_shard (each)", ["{scene}/inpaint/shard-*.tsv"]),
    ("inpaint (gather)", ["{scene}/inpaint/gather.tsv"]),
    ("refine", ["{scene}/refine.tsv"]),
    ("render_pretrain", ["{scene}/render_pretrain.tsv"]),
    ("render", ["{scene}/render.tsv"]),
    ("evaluate", ["{scene}/evaluate.tsv"]),
    ("metrics", ["metrics.tsv"]),
)


def seconds(path: Path) -> float:
    """The wall seconds a Snakemake benchmark file records (its first row's ``s``)."""
    with path.open() as handle:
        return float(next(csv.DictReader(handle, delimiter="\t"))["s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the workflow folder of the run")
    parser.add_argument("--scene", default="demo")
    args = parser.parse_args(argv)
    bench = args.root / "benchmarks"
    print(f"{'rule':<22} seconds")
    for row, patterns in ROWS:
        files = sorted(f for p in patterns for f in bench.glob(p.format(scene=args.scene)))
        values = [seconds(f) for f in files]
        shown = "not run" if not values else " + ".join(f"{v:.0f}" for v in values)
        print(f"{row:<22} {shown}")
    summary = args.root / "results" / args.scene / "inpaint" / "summary.json"
    if summary.is_file():
        consistency = json.loads(summary.read_text())["consistency"]
        print("inpaint consistency (mean abs. error, grey levels):",
              ", ".join(f"{k} {v:.1f}" for k, v in consistency.items() if isinstance(v, (int, float))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
