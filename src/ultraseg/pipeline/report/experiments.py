"""The sections of the experiments run beside the pipeline (scripts/experiments.py): filters and architectures, seed
variation and accuracy levers, each rendered when its file exists and otherwise naming the command that writes it.
The levers file's columns, run names and pooling are :mod:`ultraseg.experiments`'s."""

from __future__ import annotations

import yaml

from ultraseg import experiments as schema
from ultraseg import params as params_mod
from ultraseg.params import Params
from ultraseg.pipeline.report.markdown import missing_note, num, table


def experiments_section(comp: dict | None) -> str:
    if comp is None:
        return """## Experiments: filters and architectures

No comparison recorded yet: `python scripts/experiments.py --run --collect` runs the grid with `dvc exp run` and
writes `experiments/comparison.json`, which this section renders.
"""
    rows = [[name, e["filter"], e["model"], f"{e['params']:,}", e["gmacs"], num(e["enl_ratio"], ".2f"),
             num(e["edge_preservation"], ".3f"), f"{e['val_dice']:.4f}", f"{e['val_iou']:.4f}",
             num(e["val_normal_clean"], ".2f"), e["best_epoch"], e["train_minutes"]]
            for name, e in comp["experiments"].items()]
    return f"""## Experiments: filters and architectures

Source: `experiments/comparison.json`, written by `{comp['command']}` from `dvc exp run` experiments derived
from commit(s) {comp['derived_from_commit']}: each changes one thing from that commit's params and trains the teacher
for {comp['epochs']} epochs (not the default's budget, so compare rows with each other, not with the tables
above). Val Dice on lesion images; ENL ratio and edge preservation β of the experiment's filter as in
*Preprocessing*.

{table(['experiment', 'filter', 'model', 'params', 'GMAC', 'ENL ratio', 'edge β', 'val Dice', 'val IoU',
         'normal clean', 'best epoch', 'minutes'], rows)}
{missing_note(comp)}"""


def seeds_section(seeds: dict | None) -> str:
    """Mean ± sd of the headline numbers over training seeds (scripts/experiments.py --grid seeds), if run."""
    title = "## Seed variation"
    if seeds is None:
        return f"""{title}

Not measured for this run: `python scripts/experiments.py --grid seeds --run --collect` reruns the whole pipeline
with two more training seeds through DVC's queue and writes `experiments/seeds.json`, which this section renders.
"""
    rows = [[key, f"{v['mean']:.4f} ± {v['sd']:.4f}",
             *[num(run[key], ".4f") for run in seeds["runs"].values()]] for key, v in seeds["summary"].items()]
    return f"""{title}

Source: `experiments/seeds.json`, written by `{seeds['command']}` from `dvc exp` runs derived from commit
{seeds['derived_from_commit']}: the whole pipeline at the default budget, only the training seed changed
({seeds['n']} runs; mean ± sd). The tables above are the committed run's.
{missing_note(seeds)}
{table(['metrics/headline.json', 'mean ± sd', *seeds['runs']], rows)}
"""


def levers_section(levers: dict | None, params: Params | None = None) -> str:
    """Each accuracy lever's val effect against the committed run it was derived from (scripts/experiments.py
    --grid levers), one table per commit, newest first, and which of them ``params`` has adopted; if run."""
    title = "## Accuracy levers"
    if levers is None:
        return f"""{title}

Not measured for this run: `python scripts/experiments.py --grid levers --run --collect` runs each lever through
DVC's queue and writes `experiments/levers.json`, which this section renders.
"""
    return f"""{title}

Source: `experiments/levers.json`, written by `{levers['command']}` from `dvc exp` runs. Each lever changes one
thing from the params of the commit it was derived from and runs the whole pipeline; it is compared with that
commit's run only. A lever is chosen by the val columns only (shift drop and most missed: the deployed file on the
shifted val split at moderate severity, from `metrics/robustness.json`); the last column, the deployed file's test
lesion Dice, is there for the record, not for choosing. A row named `LEVER-sSEED` (or `seed-SEED`, the committed
params) ran at another training seed; a difference smaller than the seed spread below is no effect.
{_adopted_note(levers, params)}{"".join(_lever_table(comparison) for comparison in levers["comparisons"])}{_spread_tables(levers.get("spreads", []))}{_spread_tables(levers.get("cv", []), "folds")}"""


def _adopted_note(levers: dict, params: Params | None) -> str:
    """The levers whose every setting (the training seed aside) this run's params hold: adopted into them."""
    if params is None:
        return ""
    current = params_mod.to_dict(params)

    def holds(key: str, value: str) -> bool:
        node = current
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return node == yaml.safe_load(value)

    adopted = {}
    for comparison in levers["comparisons"]:
        for name, run in comparison["runs"].items():
            settings = {k: v for k, v in run["changed"].items() if k not in ("train.seed", "split.fold")}
            if settings and all(holds(k, v) for k, v in settings.items()):
                adopted.setdefault(schema.decode_run(name)[0], settings)
    if not adopted:
        return "\nNo lever is adopted into this run's params.\n"

    # each adopted lever with the adopted levers whose every setting it holds, which are then not named alone
    held = {name: [other for other, sets in adopted.items() if sets.items() < adopted[name].items()]
            for name in adopted}
    parts = {other for others in held.values() for other in others}
    names = []
    for name, sets in adopted.items():
        if name not in parts:
            holding = f", holding {' and '.join(f'`{o}`' for o in held[name])}" if held[name] else ""
            names.append(f"`{name}` ({', '.join(f'`{k}={v}`' for k, v in sets.items())}{holding})")
    return f"\nAdopted into this run's params, on the val columns and seed spread below: {'; '.join(names)}.\n"


def _spread_tables(spreads: list[dict], over: str = "seeds") -> str:
    """Mean ± sd over training seeds (or cross-validation ``folds``) of the levers run at several, beside the
    committed params' own spread."""
    if not spreads:
        return ""
    tables = []
    for spread in spreads:
        rows = [[lever, ", ".join("committed" if seed is None else str(seed) for seed in s[over]),
                 *[_mean_sd(schema.spread_value(s, key)) for key in schema.LEVER_COLUMNS.values()],
                 _mean_sd(s["test_headline"].get("deployed"))]
                for lever, s in spread["levers"].items()]
        tables.append(f"""
Runs pooled from commits {', '.join(spread['derived_from_commits'])} (one committed run):

{table(['run', over, *schema.LEVER_COLUMNS, 'deployed test'], rows)}
""")
    if over == "folds":
        return f"""
### Cross-validation of the levers

Mean ± sd over the grouped cross-validation folds of train + val each lever ran on (`split.fold`; duplicate groups
never split, test untouched), at the committed seed: every val column is measured on another fifth of train + val.
{"".join(tables)}"""
    return f"""
### Seed spread of the levers

Mean ± sd over the training seeds each lever ran at (`committed` = the committed run's seed); the `committed` row is
the committed params' own spread, the yardstick of every other row.
{"".join(tables)}"""


def _mean_sd(summary: dict | None) -> str:
    return "–" if summary is None else f"{summary['mean']:.4f} ± {summary['sd']:.4f}"


def _lever_table(comparison: dict) -> str:
    rows = [[name, ", ".join(f"`{k}={v}`" for k, v in run["changed"].items()) or "(committed params)",
             *[num(schema.lever_value(run, key), ".4f") for key in schema.LEVER_COLUMNS.values()],
             num((run["test_headline"] or {}).get("deployed"), ".4f")] for name, run in comparison["runs"].items()]
    return f"""
Derived from commit {comparison['derived_from_commit']}:
{missing_note(comparison, 'No finished run against this commit, at the committed seed')}
{table(['run', 'changed', *schema.LEVER_COLUMNS, 'deployed test'], rows)}
"""
