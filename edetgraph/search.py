"""``python -m edetgraph.search``: feature-network search under a device latency budget.

    python -m edetgraph.search --latency ort.json --budget-ms 15 25 --out runs/search
    python -m edetgraph.search --latency ort.json --budget-x lite0=0.7 --out runs/s3
    python -m edetgraph.search --space my_space.yaml --budget-ms 20 --latency tflite.json \\
        --data 'coco/train-*' --val-data 'coco/val-*' --val-json val.json --out runs/s2

Stages, each printing progress and leaving its result in --out:
  1. screen: --candidates samples of the space (docs/search.md; default: BiFPN around the
     demo model, edetgraph/resources/search/bifpn_space.yaml) are checked and costed on
     the graph and their latency predicted by the --latency model (bench.latency_model),
     all before any training; those over a budget are dropped;
  2. train: per budget, the --train most promising (the most compute under the budget,
     spread over the space), then --rounds of mutating the most accurate ones, each
     trained --steps steps on the data (the built-in dataset by default, generated once
     for every candidate; --data-difficulty hard for its cluttered scenes) and evaluated
     (COCO AP on its val split); the base's compound-scaled BiFPN family (the space's
     family_phi) is trained the same way.
     With --rungs 400 1500 4000 that is the first rung: the --promote best of each budget
     are trained again (from scratch) at each next rung, the family at every rung, and
     the last rung trains its candidates and the family with --seeds seeds; a training
     that collapsed (AP under 0.1 x the median of the others at its rung, that median at
     least 0.05) is retried once with another seed;
  3. measure: the --measure most accurate per budget and the family are exported (the
     fp32 parity gate must pass) and timed side by side on the latency model's backend;
  4. report: pareto.csv, pareto.png, summary.json, and winners/budget-<B>ms.yaml: the most
     accurate measured candidate within each budget, an ordinary spec file, with its mean
     ± std AP and a verdict: "better" only when its mean beats the family's (interpolated
     at its measured latency) by more than twice their pooled std, else "no winner" ("not
     judged" with one seed); the Kendall tau-b of AP between each pair of rungs.

A budget given as a ratio to a reference model (--budget-x lite0=0.7: 70 % of Lite0's
latency) travels between machines: the screening compares predictions with 0.7 x the
reference's prediction, and the winner is the most accurate candidate measured within 0.7 x
the reference's latency measured beside it in the same session (its file is exported with
random weights: latency does not depend on them). Its winner is winners/budget-lite0x0.7.yaml.

Killed, the same command continues where it stopped: finished trainings, exports and
measurements are kept (one folder per candidate), an interrupted training resumes from its
checkpoint. --out remembers its settings and refuses a run with other ones.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from edetgraph.cli import OneLineParser, first_line
from edetgraph.data.synthetic import DIFFICULTIES
from edetgraph.data.labels import without_sidecars
from edetgraph.files import (FolderBusy, OutputRefused, is_real_folder, lock_folder,
                             release_folder, remove, stage_dir)
from edetgraph.graph import search_space as space_mod
from edetgraph.graph.spec import SpecError, load_spec
from edetgraph.nas.candidates import Predictor, screen
from edetgraph.nas.common import SearchError, digest, say, write_json
from edetgraph.nas.explore import train_family, train_for_budget
from edetgraph.nas.jobs import EXPORTS, REPO, Trainer, export, export_reference, measure
from edetgraph.nas.report import rows_of, write_report
from edetgraph.nas.rungs import MAX_SEEDS, Schedule, climb, rank_agreement
from edetgraph.resources import path as resource_path
from edetgraph.training.config import TrainConfigError, load_train_config


# --------------------------------------------------------------------------- the command
def _parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m edetgraph.search", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default=str(resource_path("search/bifpn_space.yaml")),
                    help="search-space YAML (default: BiFPN around the demo model)")
    ap.add_argument("--budget-ms", type=float, nargs="+", default=[], metavar="B",
                    help="latency budget(s) in milliseconds on the latency model's backend;"
                         " several budgets share the screening, the trainings and the family")
    ap.add_argument("--budget-x", nargs="+", default=[], metavar="SPEC=X",
                    help="latency budget(s) as a ratio to a reference spec (a built-in name "
                         "or a YAML file), e.g. lite0=0.7: predicted against X times the "
                         "reference's prediction, judged against X times its latency "
                         "measured beside the candidates in this session (a budget that "
                         "travels between machines). At least one --budget-ms or --budget-x")
    ap.add_argument("--latency", required=True, metavar="MODEL",
                    help="latency model file (python -m bench.latency_model fit)")
    ap.add_argument("--out", required=True, help="output folder (rerun to resume)")
    ap.add_argument("--data", help="training TFRecords (glob); default: the built-in dataset,"
                                   " generated once into OUT/data at the space's largest size")
    ap.add_argument("--val-data", help="validation TFRecords (glob) for the AP of each candidate")
    ap.add_argument("--val-json", help="COCO instances JSON of --val-data")
    ap.add_argument("--num-images", type=int, default=1000,
                    help="built-in dataset size (default 1000, 20%% of them val)")
    ap.add_argument("--data-difficulty", choices=list(DIFFICULTIES), default="easy",
                    help="built-in dataset scenes (default easy: the demo's shapes; hard adds"
                         " textured, cluttered backgrounds with distractors, occluders, small"
                         " and overlapping objects; docs/search.md says which to pick)")
    ap.add_argument("--train-config", default="demo",
                    help="training settings every candidate trains with (default: demo)")
    ap.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a training setting for every candidate (repeatable)")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps per candidate: the fixed budget (default 600); "
                         "one rung, as --rungs N")
    ap.add_argument("--rungs", type=int, nargs="+", default=None, metavar="N",
                    help="successive halving over training length: training steps per rung,"
                         " increasing (e.g. 400 1500 4000; instead of --steps). Every trained "
                         "candidate starts at the first rung, the --promote best of each "
                         "budget are trained again from scratch at the next, the winners are "
                         "judged at the last; the family trains at every rung")
    ap.add_argument("--promote", type=float, default=0.5, metavar="F",
                    help="with --rungs: the fraction of each budget's candidates trained at "
                         "a rung that goes on to the next (ceil(F x n), at least 1; default "
                         "0.5), in (0, 1]")
    ap.add_argument("--seeds", type=int, default=1, metavar="K",
                    help="training seeds per model at the last rung, for the candidates "
                         "there and the family: the training settings' seed, then seed + 1, "
                         "... (default 1; 3 or more for a verdict: a winner is called "
                         "better only when its mean AP beats the family's at the same measured"
                         f" latency by more than twice their pooled std; at most {MAX_SEEDS})")
    ap.add_argument("--candidates", type=int, default=500,
                    help="samples of the space screened on the graph (default 500)")
    ap.add_argument("--train", type=int, default=4,
                    help="candidates trained first per budget (default 4)")
    ap.add_argument("--band", type=float, default=0.75,
                    help="first trainings come from candidates predicted within"
                         " [band x budget, budget] (default 0.75)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="mutation rounds after the first trainings (default 1)")
    ap.add_argument("--parents", type=int, default=2, help="parents per round (default 2)")
    ap.add_argument("--children", type=int, default=1,
                    help="mutations trained per parent (default 1)")
    ap.add_argument("--measure", type=int, default=3,
                    help="most accurate candidates per budget exported and timed (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="sampling and mutation seed")
    ap.add_argument("--threads", type=int, default=None,
                    help="runtime threads when timing (default: the latency model's)")
    return ap


# Settings recorded since --rungs / --promote / --seeds, with the value an older
# settings.json (which lacks them) stands for: one rung, one seed.
ADDED_SETTINGS = {"rungs": None, "promote": None, "seeds": 1, "data_difficulty": "easy"}


def _settings(args, space) -> dict:
    """What makes a candidate's result: a rerun into the same --out must have the same."""
    several = len(args.rungs) > 1
    return {"space": digest(space.source), "latency": digest(args.latency),
            "seed": args.seed, "candidates": args.candidates, "steps": args.rungs[-1],
            "train_config": args.train_config, "train_set": sorted(args.train_set),
            "data": [args.data, args.val_data, args.val_json],
            "num_images": None if args.data else args.num_images,
            "rungs": list(args.rungs) if several else None,
            "promote": args.promote if several else None, "seeds": args.seeds,
            "data_difficulty": args.data_difficulty}


def _check_settings(out: Path, settings: dict) -> None:
    path = out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        old = {k: old.get(k, ADDED_SETTINGS.get(k)) for k in settings}
        diff = [f"{k} {old[k]!r} there, {v!r} here" for k, v in settings.items()
                if old[k] != v]
        if diff:
            raise SearchError(f"{out} holds a search with other settings ({'; '.join(diff)}):"
                              f" use another --out")
    else:
        write_json(path, settings)


def _lock(out: Path) -> None:
    """Refuse a second search into the same folder while one runs (a kernel lock: a killed
    search never leaves it stuck)."""
    try:
        lock_folder(out, "search")
    except (FolderBusy, OutputRefused) as e:
        raise SearchError(str(e)) from None


def _dataset(out: Path, args, space) -> dict:
    """The data every candidate trains and is evaluated on."""
    if args.data:
        if (args.val_data is None) != (args.val_json is None):
            raise SearchError("--val-data and --val-json go together")
        for flag in ("data", "val_data"):   # a glob matching nothing would fail every training
            pattern = getattr(args, flag)
            if pattern and "://" not in pattern and not without_sidecars(glob.glob(pattern)):
                raise SearchError(f"--{flag.replace('_', '-')} {pattern}: matches no file")
        return {"data": args.data, "val_data": args.val_data, "val_json": args.val_json}
    folder = out / "data"
    if not (folder / "val" / "instances.json").exists():
        if folder.is_symlink() or folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise SearchError(f"{folder}: exists but holds no whole built-in dataset; move it "
                              "away (the search writes its dataset there)")
        size = max(space.image_size)
        stage = stage_dir(folder)   # private: nothing planted there is written through
        tmp = Path(stage) / "data"
        say(f"generating the built-in dataset once ({args.num_images} {args.data_difficulty} "
            f"images, {size} px) -> {folder}")
        cmd = [sys.executable, "-m", "edetgraph.data.synthetic", "--out", str(tmp),
               "--num-images", str(args.num_images), "--image-size", str(size),
               "--num-classes", str(space.base_data["num_classes"]), "--tfrecord",
               "--difficulty", args.data_difficulty]
        try:
            if subprocess.run(cmd, check=False, cwd=REPO,
                              stdout=subprocess.DEVNULL).returncode != 0:
                raise SearchError(f"could not generate the built-in dataset in {tmp}")
            os.replace(tmp, folder)
        finally:
            remove(stage)
    return {"data": str(folder / "tfrecord" / "train-*.tfrecord"),
            "val_data": str(folder / "tfrecord" / "val-*.tfrecord"),
            "val_json": str(folder / "val" / "instances.json")}


def _check_args(args) -> None:
    if "://" in args.out:
        raise SearchError(f"--out {args.out}: the search writes local files only")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SearchError(f"--out {args.out}: is a file, not a folder")
    for name in ("summary.json", "pareto.csv", "pareto.png", "screen.json", "measure.json",
                 "settings.json", "rungs.json"):
        if is_real_folder(out / name):   # the user's: never replaced
            raise SearchError(f"--out {args.out}: {name} there is a folder; refusing to replace"
                              " it (move it away or choose another --out)")
    if args.data and args.data_difficulty != "easy":
        raise SearchError(f"--data-difficulty {args.data_difficulty} is for the built-in "
                          "dataset; --data brings its own")
    for name in ("candidates", "train", "parents", "measure", "num_images"):
        if getattr(args, name) < 1:
            raise SearchError(f"--{name.replace('_', '-')} must be at least 1")
    _check_schedule(args)
    for name in ("rounds", "children"):
        if getattr(args, name) < 0:
            raise SearchError(f"--{name} must be at least 0")
    if any(not math.isfinite(b) or b <= 0 for b in args.budget_ms):
        raise SearchError(f"--budget-ms must be positive, got {args.budget_ms}")
    if not args.budget_ms and not args.budget_x:
        raise SearchError("give a budget: --budget-ms B [B ...] and/or --budget-x SPEC=X")
    args.references = parse_budget_x(args.budget_x)
    if not 0 < args.band <= 1:
        raise SearchError(f"--band must be in (0, 1], got {args.band}")


def _check_schedule(args) -> None:
    """--steps / --rungs / --promote / --seeds; afterwards ``args.rungs`` holds the rungs
    (``[--steps]`` without --rungs) and ``args.steps`` the last."""
    if args.rungs is not None and args.steps is not None:
        raise SearchError("--steps and --rungs: give one (--rungs N is --steps N)")
    if args.rungs is None:
        if args.steps is not None and args.steps < 1:
            raise SearchError("--steps must be at least 1")
        args.rungs = [600 if args.steps is None else args.steps]
    if any(r < 1 for r in args.rungs) or any(b <= a for a, b in zip(args.rungs, args.rungs[1:])):
        raise SearchError(f"--rungs {' '.join(map(str, args.rungs))}: training steps per rung,"
                          " each at least 1 and more than the one before")
    args.steps = args.rungs[-1]
    if not math.isfinite(args.promote) or not 0 < args.promote <= 1:
        raise SearchError(f"--promote must be a fraction in (0, 1], got {args.promote}")
    if not 1 <= args.seeds <= MAX_SEEDS:
        raise SearchError(f"--seeds must be from 1 to {MAX_SEEDS}, got {args.seeds}")


def schedule_of(args) -> Schedule:
    """The rungs, promotion and seeds of a checked ``args``; the training settings are read
    (without TensorFlow) for their seed, which the extra seeds and the retries count from."""
    try:
        config = load_train_config(args.train_config, args.train_set)
    except (TrainConfigError, OSError) as e:
        raise SearchError(f"--train-config {args.train_config}: {first_line(e)}") from None
    return Schedule(tuple(args.rungs), args.promote, args.seeds, config.seed or 0)


MAX_RATIO = 100.0


def parse_budget_x(items: list) -> list[dict]:
    """``["lite0=0.7", ...]`` -> ``[{"label", "spec", "ratio", "name"}]`` (the reference's
    spec loaded now, so a typo fails before anything runs)."""
    refs = []
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            ratio = float(value)
        except ValueError:
            ratio = None
        if not sep or not name or ratio is None or not math.isfinite(ratio) or \
                not 0 < ratio <= MAX_RATIO:
            raise SearchError(f"--budget-x {item}: give SPEC=X with X a ratio in (0, "
                              f"{MAX_RATIO:g}], e.g. lite0=0.7")
        try:
            spec = load_spec(name)
        except (SpecError, OSError, ValueError) as e:
            raise SearchError(f"--budget-x {item}: the reference {first_line(e)}") from None
        stem = Path(name).stem if name.endswith((".yaml", ".yml")) else name
        label = f"{stem}x{ratio:g}"
        if any(r["label"] == label for r in refs):
            raise SearchError(f"--budget-x: {label} is given twice")
        refs.append({"label": label, "spec": spec, "ratio": ratio, "name": name,
                     "key": f"reference-{stem}"})
    return refs


def budgets_of_run(args, predict) -> list[dict]:
    """Every budget: ``label``, ``predicted_ms`` (what screening and training compare
    predictions with) and, for a ratio, its reference (judged once it is measured)."""
    out = [{"label": f"{b:g}", "predicted_ms": float(b), "ms": float(b)}
           for b in sorted(set(args.budget_ms))]
    for ref in args.references:
        ref_ms = predict(ref["spec"])
        out.append({"label": ref["label"], "predicted_ms": ref["ratio"] * ref_ms, "ms": None,
                    "reference": {"spec": ref["name"], "key": ref["key"], "ratio": ref["ratio"],
                                  "predicted_ms": round(ref_ms, 4), "measured_ms": None}})
        say(f"budget {ref['label']}: {ref['ratio']:g} x {ref['name']}'s predicted "
            f"{ref_ms:.2f} ms = {ref['ratio'] * ref_ms:.2f} ms predicted; the winner is judged "
            f"against {ref['ratio']:g} x {ref['name']}'s latency measured in this session")
    return out


def judge_budgets(budgets: list[dict], ms: dict) -> list[dict]:
    """Each ratio budget's measured limit from its reference's measured milliseconds (None
    where the reference could not be measured)."""
    for b in budgets:
        ref = b.get("reference")
        if ref is not None:
            ref["measured_ms"] = ms.get(ref["key"])
            b["ms"] = None if ref["measured_ms"] is None else ref["ratio"] * ref["measured_ms"]
    return budgets


def train_stage(space, screened: dict, budgets: list[dict], trainer: Trainer, args, predict,
                schedule: Schedule) -> tuple[dict, dict, dict]:
    """Every budget's candidates and the family at the first rung, then up the rungs:
    ``(per_budget, family, ladder)`` (budget label -> keys trained at the first rung; family
    key -> its record; :func:`edetgraph.nas.rungs.climb`'s ladder)."""
    per_budget = {b["label"]: train_for_budget(space, screened, b["predicted_ms"], trainer,
                                               args, predict, schedule.rungs[0])
                  for b in budgets}
    family = train_family(space, trainer, predict, schedule.rungs[0])
    return per_budget, family, climb(trainer, schedule, per_budget, list(family))


def finalists(per_budget: dict, family: dict, ladder: dict, last: int, measure: int) -> list:
    """What is exported and timed: the family, and per budget the ``measure`` most accurate
    (mean AP) at the last rung; only models trained ok there."""
    final = {k: m[last] for k, m in ladder["models"].items() if m.get(last, {}).get("ok")}
    chosen = list(family)
    for label in per_budget:
        there = [k for k in ladder["promoted"][label].get(last, []) if k in final]
        chosen += sorted(there, key=lambda k: -final[k]["AP"])[:measure]
    return [k for k in dict.fromkeys(chosen) if k in final]


def run(args) -> dict:
    _check_args(args)
    schedule = schedule_of(args)
    try:
        space = space_mod.load_space(args.space)
    except space_mod.SpaceError as e:
        raise SearchError(str(e)) from None
    predict = Predictor(args.latency)
    if predict.backend not in EXPORTS:
        raise SearchError(f"--latency {args.latency}: backend {predict.backend!r} cannot be"
                          f" measured by the search (one of {', '.join(EXPORTS)})")
    threads = args.threads or predict.threads
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, _settings(args, space))
    _lock(out)
    try:
        t0 = time.perf_counter()
        data = _dataset(out, args, space)
        screen_file = out / "screen.json"
        if screen_file.exists():
            screened = json.loads(screen_file.read_text())
            say(f"screening: {len(screened)} candidates from {screen_file}")
        else:
            screened = screen(space, predict, args.candidates, args.seed)
            write_json(screen_file, screened)
        trainer = Trainer(out, args, data, schedule.rungs[-1])
        budgets = budgets_of_run(args, predict)
        per_budget, family, ladder = train_stage(space, screened, budgets, trainer, args,
                                                 predict, schedule)
        write_json(out / "rungs.json", ladder)
        budgets_of: dict[str, list] = {}
        for label, keys in per_budget.items():
            for k in keys:
                budgets_of.setdefault(k, []).append(label)
        chosen = finalists(per_budget, family, ladder, schedule.rungs[-1], args.measure)
        if not chosen:
            raise SearchError(f"every training failed (the reasons are in {out}/candidates/*/"
                              "result.json and train.log, and in steps*/ below them); "
                              "nothing to compare")
        exports = {k: export(out, k, predict.backend, threads) for k in chosen}
        for ref in args.references:     # timed beside the candidates: the ratio budgets
            exports[ref["key"]] = export_reference(out, ref["key"], ref["name"],
                                                   predict.backend, threads)
        files = {k: e["file"] for k, e in exports.items() if e["ok"]}
        if files:
            kind = EXPORTS[predict.backend][3]
            say(f"timing {len(files)} files side by side ({kind}, {threads} threads)")
            ms = measure(files, kind, threads)
            write_json(out / "measure.json", {"backend": predict.backend, "threads": threads,
                                               "ms": ms})
        measured = json.loads((out / "measure.json").read_text())["ms"] \
            if (out / "measure.json").exists() else {}
        summary = write_report(out, rows_of(out, budgets_of, ladder),
                               judge_budgets(budgets, measured), space)
        summary.update(fidelity_summary(ladder, schedule, budgets_of))
        summary["wall_seconds_this_run"] = round(time.perf_counter() - t0, 1)
        write_json(out / "summary.json", summary)
        return summary
    finally:
        release_folder(out)


def fidelity_summary(ladder: dict, schedule: Schedule, budgets_of: dict) -> dict:
    """summary.json's keys about the rungs: the schedule, what each budget promoted, the
    Kendall tau-b of AP between each pair of rungs over the candidates, the retries."""
    return {"rungs": list(schedule.rungs), "promote": schedule.promote, "seeds": schedule.seeds,
            "promoted": ladder["promoted"], "retried": ladder["retried"],
            "trainings": ladder["trainings"],
            "rank_correlation": rank_agreement(ladder, list(budgets_of), schedule.rungs)}


def tell(summary: dict, out: Path) -> None:
    """The report's printed lines: how far the cheap rungs rank as the dear ones, then per
    budget the winner (mean ± std over its seeds), the family at its latency, the verdict."""
    for agree in summary.get("rank_correlation", []):
        a, b = agree["rungs"]
        tau = "undefined" if agree["tau_b"] is None else f"{agree['tau_b']:+.3f}"
        say(f"rank agreement of AP, {a} -> {b} steps: Kendall tau-b {tau} over "
            f"{agree['n']} candidates trained at both")
    if summary.get("retried"):
        say(f"{len(summary['retried'])} collapsed training(s) retried with another seed "
            "(summary.json: retried; pareto.csv: retried)")
    for b, w in summary["winners"].items():
        b = f"{b} ms" if b.replace(".", "", 1).isdigit() else b
        if "key" not in w:
            say(f"budget {b}: {w['note']}")
            continue
        cmp, judged = w["vs_family"], w["verdict"]
        gain = (f"family AP at the same latency {cmp['family_AP_at_same_ms']:.4f}"
                + _pm(judged.get("family_AP_std_at_same_ms"))
                if cmp.get("family_AP_at_same_ms") is not None else cmp.get("note", ""))
        seeds = f" over {w['seeds']} seeds" if (w.get("seeds") or 1) > 1 else ""
        say(f"budget {b}: {w['spec']}: AP {w['AP']:.4f}{_pm(w.get('AP_std'))}{seeds} at "
            f"{w.get('steps')} steps, measured {w['measured_ms']:.2f} ms (predicted "
            f"{w['predicted_ms']:.2f}); {gain}")
        say(f"budget {b}: verdict: {judged['verdict']} ({judged['reason']})")
    say(f"table {out / 'pareto.csv'}, summary {out / 'summary.json'}"
        + (f", plot {summary['plot']}" if summary.get("plot") else ""))


def _pm(std) -> str:
    return "" if std is None else f" ± {std:.4f}"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        summary = run(args)
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tell(summary, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
