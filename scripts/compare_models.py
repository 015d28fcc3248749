#!/usr/bin/env python
"""Two models' benchmark results, face by face: each difference with its 95% interval (paired bootstrap).

    python scripts/evaluate_model.py --split PublicTest --model A/model.onnx --json a.json
    python scripts/evaluate_model.py --split PublicTest --model B/model.onnx --json b.json
    python scripts/compare_models.py a.json b.json

Both results must come from the same split, seed and ``--limit`` (checked). Rows: FER-2013 labels, FER+
majority, each robustness condition, the lighting conditions, and last the robustness mean (its conditions resampled
together, since they share their faces). A row is marked ``*`` when its interval leaves zero out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emotion_train.paired import paired_differences

#: What two results must share to line up face by face; results from before evaluate_model.py noted the seed
#: and the limit ran with these defaults.
SAME = ("split", "seed", "limit")
DEFAULTS = {"seed": 0, "limit": 0}


def outcomes_of(result: dict, path: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """(outcomes by row name, the names the robustness mean averages) of one evaluate_model.py --json result."""
    clean = result.get("outcomes")
    suite = result.get("robustness") or {}
    if not clean:
        raise SystemExit(
            f"{path}: no per-face outcomes; rerun scripts/evaluate_model.py --json with this version"
        )
    rows = {"FER-2013 labels": clean["fer2013"]}
    if "ferplus_majority" in clean:
        rows["FER+ majority"] = clean["ferplus_majority"]
    conditions = {name: c["outcomes"] for name, c in suite.get("conditions", {}).items() if "outcomes" in c}
    lighting = {name: c["outcomes"] for name, c in suite.get("lighting", {}).items() if "outcomes" in c}
    return {**rows, **conditions, **lighting}, tuple(conditions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path, help="evaluate_model.py --json of model A (e.g. the shipped one)")
    parser.add_argument("b", type=Path, help="the same of model B (the candidate)")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in (args.a, args.b):
        if not path.is_file():
            raise SystemExit(f"{path}: no such file (write it with scripts/evaluate_model.py --json)")
    results = [json.loads(path.read_text()) for path in (args.a, args.b)]
    for key in SAME:
        values = [r.get(key, DEFAULTS.get(key)) for r in results]
        if values[0] != values[1]:
            raise SystemExit(
                f"{args.a} vs {args.b}: different {key} ({values[0]} and {values[1]}), so the faces "
                "were not scored in the same scenes; rerun one of them"
            )
    (rows_a, mean_a), (rows_b, mean_b) = (
        outcomes_of(r, p) for r, p in zip(results, (args.a, args.b), strict=True)
    )
    mean_of = mean_a if mean_a == mean_b else ()
    if not mean_of:
        print(
            f"no robustness mean: the two results ran different conditions ({', '.join(mean_a) or 'none'} and "
            f"{', '.join(mean_b) or 'none'})",
            file=sys.stderr,
        )
    try:
        differences = paired_differences(rows_a, rows_b, mean_of, draws=args.draws, seed=args.seed)
    except ValueError as exc:
        raise SystemExit(f"{args.a} vs {args.b}: {exc}") from None
    print(f"{results[0]['split']}; A = {results[0]['model']}, B = {results[1]['model']}")
    print(f"{'':22} {'faces':>6} {'A':>7} {'B':>7} {'B - A':>7}   95% interval")
    for d in differences:  # the robustness mean comes last
        name = "robustness mean" if d.name == "mean" else d.name
        print(
            f"{name:22} {d.images:6d} {d.a:7.2%} {d.b:7.2%} {d.difference * 100:+6.2f}   "
            f"[{d.low * 100:+.2f}, {d.high * 100:+.2f}]{' *' if d.clear else ''}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
