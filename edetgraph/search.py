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
     for every candidate) and evaluated (COCO AP on its val split); the base's
     compound-scaled BiFPN family (the space's family_phi) is trained the same way;
  3. measure: the --measure most accurate per budget and the family are exported (the
     fp32 parity gate must pass) and timed side by side on the latency model's backend;
  4. report: pareto.csv, pareto.png, summary.json, and winners/budget-<B>ms.yaml: the most
     accurate measured candidate within each budget, an ordinary spec file.

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
import random
import subprocess
import sys
import time
from pathlib import Path

from edetgraph.cli import OneLineParser, first_line
from edetgraph.data.labels import without_sidecars
from edetgraph.files import (FolderBusy, OutputRefused, is_real_folder, lock_folder,
                             release_folder, remove, stage_dir)
from edetgraph.graph import search_space as space_mod
from edetgraph.graph.spec import SpecError, load_spec
from edetgraph.nas.candidates import Predictor, check_and_cost, screen, spread
from edetgraph.nas.common import SearchError, digest, say, write_json
from edetgraph.nas.jobs import EXPORTS, REPO, Trainer, export, export_reference, measure
from edetgraph.nas.report import rows_of, write_report
from edetgraph.resources import path as resource_path


# --------------------------------------------------------------------------- stage 2
def train_for_budget(space, screened: dict, budget: float, trainer: Trainer, args,
                     predict) -> list[str]:
    """Train the most promising candidates within ``budget``, then mutate the best: the keys
    trained for this budget."""
    under = [dict(r, key=k) for k, r in screened.items()
             if r["ok"] and r["predicted_ms"] <= budget]
    if not under:
        say(f"budget {budget:g} ms: no candidate is predicted within it "
             f"(fastest {min(r['predicted_ms'] for r in screened.values() if r['ok']):.2f} ms)")
        return []
    near = [r for r in under if r["predicted_ms"] >= args.band * budget] or under
    keys = [r["key"] for r in spread(near, space, args.train)]
    known = dict(screened)
    for i, key in enumerate(keys):
        _train_candidate(space, key, known[key], trainer, f"{key} [{budget:g} ms, {i + 1}/"
                         f"{len(keys)}, predicted {known[key]['predicted_ms']:.2f} ms]")
    for rnd in range(args.rounds):
        rng = random.Random(f"{args.seed}-{budget}-{rnd}")
        scored = [(trainer.result(k) or {}).get("AP", -1) for k in keys]
        parents = [k for _, k in sorted(zip(scored, keys), reverse=True)[:args.parents]]
        for parent in parents:
            for _ in range(args.children):
                child = _child(space, known[parent], rng, budget, known, predict)
                if child is None:
                    continue
                known[child.key] = check_and_cost(child.spec_data(space), predict)
                known[child.key]["genes"] = child.as_dict()
                keys.append(child.key)
                _train_candidate(space, child.key, known[child.key], trainer,
                                 f"{child.key} [{budget:g} ms, round {rnd + 1}, child of "
                                 f"{parent}, predicted {known[child.key]['predicted_ms']:.2f} ms]")
    return keys


def _child(space, parent: dict, rng, budget, known: dict, predict):
    """A mutation of ``parent`` that passes the checks, is predicted within the budget and
    has not been tried (None after 50 tries)."""
    genes = space_mod.Candidate.from_dict(parent["genes"])
    for _ in range(50):
        c = space_mod.mutate(space, genes, rng)
        if c.key in known:
            continue
        rec = check_and_cost(c.spec_data(space), predict)
        if rec["ok"] and rec["predicted_ms"] <= budget:
            return c
        known[c.key] = dict(rec, genes=c.as_dict())
    return None


def _train_candidate(space, key: str, rec: dict, trainer: Trainer, label: str) -> dict:
    folder = trainer.out / "candidates" / key
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "candidate.json").exists():
        write_json(folder / "candidate.json", rec)
    data = space_mod.Candidate.from_dict(rec["genes"]).spec_data(space)
    return trainer.train(key, data, label)


def train_family(space, trainer: Trainer, predict) -> dict[str, dict]:
    """The base's compound-scaled BiFPN family, trained as the candidates are."""
    out = {}
    for phi in space.family_phi:
        data = space_mod.family_member(space, phi)
        key = f"family-phi{phi:g}"
        rec = check_and_cost(data, predict)
        rec.update(phi=phi, family=True)
        folder = trainer.out / "candidates" / key
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "candidate.json", rec)
        trainer.train(key, data, f"{key} [family, predicted {rec.get('predicted_ms', 0):.2f} ms]")
        out[key] = rec
    return out



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
    ap.add_argument("--train-config", default="demo",
                    help="training settings every candidate trains with (default: demo)")
    ap.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a training setting for every candidate (repeatable)")
    ap.add_argument("--steps", type=int, default=600,
                    help="training steps per candidate: the fixed budget (default 600)")
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


def _settings(args, space) -> dict:
    """What makes a candidate's result: a rerun into the same --out must have the same."""
    return {"space": digest(space.source), "latency": digest(args.latency),
            "seed": args.seed, "candidates": args.candidates, "steps": args.steps,
            "train_config": args.train_config, "train_set": sorted(args.train_set),
            "data": [args.data, args.val_data, args.val_json],
            "num_images": None if args.data else args.num_images}


def _check_settings(out: Path, settings: dict) -> None:
    path = out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = [f"{k} {old.get(k)!r} there, {v!r} here" for k, v in settings.items()
                if old.get(k) != v]
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
        say(f"generating the built-in dataset once ({args.num_images} images, {size} px)"
             f" -> {folder}")
        cmd = [sys.executable, "-m", "edetgraph.data.synthetic", "--out", str(tmp),
               "--num-images", str(args.num_images), "--image-size", str(size),
               "--num-classes", str(space.base_data["num_classes"]), "--tfrecord"]
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
                 "settings.json"):
        if is_real_folder(out / name):   # the user's: never replaced
            raise SearchError(f"--out {args.out}: {name} there is a folder; refusing to replace"
                              " it (move it away or choose another --out)")
    for name in ("steps", "candidates", "train", "parents", "measure", "num_images"):
        if getattr(args, name) < 1:
            raise SearchError(f"--{name.replace('_', '-')} must be at least 1")
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


def run(args) -> dict:
    _check_args(args)
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
        trainer = Trainer(out, args, data)
        budgets = budgets_of_run(args, predict)
        budgets_of: dict[str, list] = {}
        per_budget = {}
        for b in budgets:
            per_budget[b["label"]] = train_for_budget(space, screened, b["predicted_ms"],
                                                      trainer, args, predict)
            for k in per_budget[b["label"]]:
                budgets_of.setdefault(k, []).append(b["label"])
        family = train_family(space, trainer, predict)
        chosen = list(family)
        for b, keys in per_budget.items():
            ok = [k for k in keys if (trainer.result(k) or {}).get("ok")]
            chosen += sorted(ok, key=lambda k: -trainer.result(k)["AP"])[:args.measure]
        chosen = [k for k in dict.fromkeys(chosen) if (trainer.result(k) or {}).get("ok")]
        if not chosen:
            raise SearchError(f"every training failed (the reasons are in {out}/candidates/*/"
                              "result.json and train.log); nothing to compare")
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
        summary = write_report(out, rows_of(out, budgets_of), judge_budgets(budgets, measured),
                               space)
        summary["wall_seconds_this_run"] = round(time.perf_counter() - t0, 1)
        write_json(out / "summary.json", summary)
        return summary
    finally:
        release_folder(out)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        summary = run(args)
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for b, w in summary["winners"].items():
        b = f"{b} ms" if b.replace(".", "", 1).isdigit() else b
        if "key" not in w:
            say(f"budget {b}: {w['note']}")
            continue
        cmp = w["vs_family"]
        gain = (f"family AP at the same latency {cmp['family_AP_at_same_ms']:.4f}"
                if cmp.get("family_AP_at_same_ms") is not None else cmp.get("note", ""))
        say(f"budget {b}: {w['spec']}: AP {w['AP']:.4f}, measured {w['measured_ms']:.2f} ms"
             f" (predicted {w['predicted_ms']:.2f}); {gain}")
    say(f"table {Path(args.out) / 'pareto.csv'}, summary {Path(args.out) / 'summary.json'}"
         + (f", plot {summary['plot']}" if summary.get("plot") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
