#!/usr/bin/env python
"""Compare recipes honestly: side by side, with a verdict on whether each difference beats seed noise.

    python benchmarks/compare_runs.py outputs/config_cpu outputs/config_cpu-lr3e-5 [--out comparison]

Each argument is a multi-seed output folder (with the summary.json that `--seeds` writes) or a single
run's output folder. The first is the baseline; each column is named by the shortest end of its folder's
path that no other folder shares (`a/seed-1`, `b/seed-1`). For every figure (validation and test accuracy,
macro-F1, wall time) the table gives mean ± std over the seeds, and each other recipe's difference
from the baseline with Welch's t-test (unequal variances) on the per-seed values: "within seed noise"
when p >= --alpha, else "better" or "worse". With fewer than 2 runs on either side there is no test,
and the verdict says so. Prints the table and writes <out>.md and <out>.json (making <out>'s folder).

Every run, each seed of a multi-seed folder too, must be on the same data as the first: the same dataset, split
sizes and classes (metrics.json's `data`; for older runs, their resolved_recipe.yaml's dataset_name, metrics'
sample counts and config.json's id2label). Otherwise, and for an unreadable run file, it exits 2 with one paragraph.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy import stats

from vitrecipes.errors import RecipeError
from vitrecipes.experiments import FIGURES, check_same_data, run_data, run_folders, summarise_runs

HIGHER_IS_BETTER = {key: key != "wall_seconds" for key in FIGURES}


def load(folder: Path) -> dict:
    """{figure: [values]} of a multi-seed folder (read afresh from the seeds its summary.json lists) or of one run."""
    summary = summarise_runs(run_folders(folder))
    return {key: figure["values"] for key, figure in summary["summary"].items()}


def verdict(base: list[float], other: list[float], key: str, alpha: float) -> dict:
    difference = sum(other) / len(other) - sum(base) / len(base)
    if len(base) < 2 or len(other) < 2:
        return {"difference": difference, "p_value": None, "verdict": "no test: needs 2 or more runs on each side"}
    if max(base) == min(base) and max(other) == min(other):  # no spread at all: the t statistic is undefined
        p_value = 1.0 if difference == 0 else 0.0
    else:
        p_value = float(stats.ttest_ind(other, base, equal_var=False).pvalue)
    if p_value >= alpha:
        word = "within seed noise"
    else:
        word = "better" if (difference > 0) == HIGHER_IS_BETTER[key] else "worse"
    return {"difference": difference, "p_value": p_value, "verdict": word}


def labels(folders: list[Path]) -> list[str]:
    """Each folder's shortest path suffix that no other folder shares: `a/seed-1`, `b/seed-1`, `c`."""
    parts = [folder.resolve().parts for folder in folders]
    if len(set(parts)) < len(parts):
        raise RecipeError(f"A folder is given twice in {', '.join(map(str, folders))}; give each run once.")
    found = []
    for own in parts:
        others = [other for other in parts if other != own]
        k = next(k for k in range(1, len(own) + 1) if all(other[-k:] != own[-k:] for other in others))
        found.append(Path(*own[-k:]).as_posix())
    return found


def compare(folders: list[Path], alpha: float = 0.05) -> dict:
    runs = {label: load(folder) for label, folder in zip(labels(folders), folders, strict=True)}
    check_same_data({str(run): run_data(run) for folder in folders for run in run_folders(folder)})
    base_name, base = next(iter(runs.items()))
    rows = []
    for key, label in FIGURES.items():
        if key not in base:
            continue
        row = {"figure": label, "key": key, "recipes": {}}
        for name, values in ((name, figures[key]) for name, figures in runs.items() if key in figures):
            std = stats.tstd(values) if len(values) > 1 else 0.0
            row["recipes"][name] = {"mean": sum(values) / len(values), "std": std, "n": len(values)}
            if name != base_name:
                row["recipes"][name].update(verdict(base[key], values, key, alpha))
        rows.append(row)
    return {"baseline": base_name, "alpha": alpha, "test": "Welch's t-test on per-seed values", "rows": rows}


def markdown(result: dict) -> str:
    names = list(result["rows"][0]["recipes"]) if result["rows"] else []
    lines = [f"Baseline: `{result['baseline']}`. Verdicts: {result['test']}, two-sided, alpha {result['alpha']}.", "",
             "| figure | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    for row in result["rows"]:
        cells = []
        for name in names:
            if (r := row["recipes"].get(name)) is None:
                cells.append("-")
                continue
            cell = f"{r['mean']:.4f} ± {r['std']:.4f} (n={r['n']})"
            if "verdict" in r:
                p = "" if r["p_value"] is None else f", p={r['p_value']:.3f}"
                cell += f"; {r['difference']:+.4f}{p}: **{r['verdict']}**"
            cells.append(cell)
        lines.append(f"| {row['figure']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="Output folders; the first is the baseline.")
    parser.add_argument("--alpha", type=float, default=0.05, help="Significance level of the t-test.")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="Writes <out>.md and <out>.json.")
    args = parser.parse_args(argv)
    if len(args.folders) < 2:
        parser.error("give at least two output folders to compare")
    try:
        result = compare(args.folders, args.alpha)
    except RecipeError as error:
        parser.exit(2, f"Error: {error}\n")
    text = markdown(result)
    print(text)
    try:  # --out's folder is made, as a run's output_dir is
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    except OSError as error:
        parser.exit(2, f"Error: --out {args.out}: cannot write there ({error}). Give another path.\n")
    return result


if __name__ == "__main__":
    main()
