"""The quality section of report.json and its one-line summary: fp32 vs W8A8 windowed perplexity,
the recipe's parameters and where its quantization error sits."""
from __future__ import annotations

WORST = 5  # groups named in the summary


def quality_section(verification: dict, recipe: dict | None, ctx: int) -> dict:
    """{"perplexity", "recipe", "sensitivity"} from the verification report and the search's per-group record."""
    ppl = verification["perplexity"]
    section = {"perplexity": {"method": f"windows of {ctx} positions (BOS + {ctx - 1} tokens) over the held-out tail of --calib",
                              "ctx": ctx, **ppl}}
    if recipe is None:
        return section
    section["recipe"] = {
        "smoothing": "SmoothQuant per layer and group (host/smooth.py), alpha chosen by host/recipe.py",
        "alphas": {key: entry["alpha"] for key, entry in recipe.items()},
        "weights": "int8 per output channel, round to nearest",
        "float_linears": [],
    }
    ranked = sorted(recipe.items(), key=lambda kv: -kv[1]["error"])
    section["sensitivity"] = {
        "measure": "relative output error |Y_w8a8 - Y|^2 / |Y|^2 of each group's linears on calibration inputs",
        "groups": {key: {"error": entry["error"], "unsmoothed_error": entry["unsmoothed_error"]} for key, entry in recipe.items()},
        "worst": [key for key, _ in ranked[:WORST]],
    }
    return section


def summary_line(section: dict) -> str:
    """One line a person reads after a build."""
    ppl = section["perplexity"]
    line = f"quality: perplexity fp32 {ppl['fp32']:.4f}, graph {ppl['onnx']:.4f} ({100 * (ppl['ratio'] - 1):+.2f}%) on {ppl['tokens']} held-out tokens"
    if "sensitivity" in section:
        line += f"; largest W8A8 error in {', '.join(section['sensitivity']['worst'][:3])}"
    return line
