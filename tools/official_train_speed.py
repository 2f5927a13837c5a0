"""Train-step speed and peak memory of edetgraph beside the official google/automl TF2 trainer.

    python tools/official_train_speed.py --official /tmp/official --tf-keras /tmp/tfk
    python tools/official_train_speed.py ... --memory          # + one subprocess per setup
    python tools/official_train_speed.py ... --device gpu      # both pinned to /GPU:0

Speed: in one process, the official step (``train_lib.EfficientDetNetTrain`` compiled by
tf2/train.py's ``setup_model``, run through Keras' own ``make_train_function`` as ``fit``
runs it) and edetgraph's (``build_state`` + ``make_train_function`` under the default
strategy, one step per call), each with and without XLA (Keras ``jit_compile`` / ours'
``jit_compile``), on the same batch (official_train_parity's two pictures and boxes),
batch size, image size and ``tf.config.threading`` settings. After ``--warmup`` calls each,
the calls are interleaved ``--runs`` times (load changes hit every setup alike); the
figures are medians. Mixed precision is timed where the hardware has it (CPU: AVX512_BF16
or AMX; GPU: float16 from compute capability 7.0, bfloat16 from 8.0), and says why not
elsewhere. The machine's load average is printed beside the figures.

Memory (``--memory``): each setup (side x spec x XLA x grad_checkpoint) runs alone in a
fresh subprocess of this script, which reports its images/s and its peak memory: the
process' peak RSS (``ru_maxrss``) on CPU, TensorFlow's peak allocation on GPU.
``grad_checkpoint`` goes to edetgraph through the training setting of that name when this
edetgraph has it, else the row says "not available".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from official_train_parity import (  # sibling script; it sets TF_USE_LEGACY_KERAS first
    KeepGradients,
    Setup,
    batches,
    check_our_precision,
    has_setting,
    import_trainer,
    official_config,
    official_model,
    our_state,
)
from official_parity import add_official_args  # noqa: E402 (imported by the sibling above)

import tensorflow as tf  # noqa: E402 (after the environment the sibling sets)
from train_measures import cpu_bf16, rates, ratio  # noqa: E402

from edetgraph.graph.spec import load_spec
from edetgraph.training.step import make_replica_step, make_train_function


def low_precision_support(device: str) -> dict:
    """{precision: None if it can be timed here, else why not}."""
    if device == "cpu":
        try:
            ok, flags = cpu_bf16(Path("/proc/cpuinfo").read_text())
        except OSError:
            ok, flags = False, "no /proc/cpuinfo"
        return {"mixed_bfloat16": None if ok else f"this CPU has no bf16 arithmetic ({flags})",
                "mixed_float16": "float16 has no fast CPU kernels"}
    gpu = tf.config.list_physical_devices("GPU")[0]
    cc = tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
    return {"mixed_float16": None if cc >= (7, 0) else f"compute capability {cc} < 7.0",
            "mixed_bfloat16": None if cc >= (8, 0) else f"compute capability {cc} < 8.0"}


def step_functions(off, setup: Setup, workdir: Path, sides=("official", "ours"),
                   xla=(False, True), built=None) -> dict:
    """{name: callable running one train step and returning when it is done}; ``built``:
    (official model, our state, our config) already made."""
    spec = load_spec(setup.spec)
    fns = {}
    if built:
        model, state, config = built
    else:
        model = official_model(off, setup, None, workdir) if "official" in sides else None
        state, config = our_state(setup, None) if "ours" in sides else (None, None)
    cfg = model.config if model is not None else official_config(off, setup, workdir)
    data, batch, _ = batches(off, spec, cfg, setup)
    if model is not None:
        it = iter(tf.data.Dataset.from_tensors(data).repeat())
        for jit in xla:
            model.jit_compile = jit
            fn = model.make_train_function(force=True)

            def run(fn=fn, jit=jit):
                model.jit_compile = jit    # Keras reads it when the function is traced
                return float(fn(it)["loss"])
            fns[f"official{'_xla' if jit else ''}"] = run
    if state is not None:
        check_our_precision(state, setup.precision, batch["image"])
        it2 = iter(tf.data.Dataset.from_tensors(batch).repeat())
        one = tf.constant(1)
        for jit in xla:
            fn = make_train_function(tf.distribute.get_strategy(), state, config, jit)
            fns[f"ours{'_xla' if jit else ''}"] = (
                lambda fn=fn: float(fn(it2, one)[0]["loss"]))
    return fns


def part_functions(off, setup: Setup, workdir: Path) -> dict:
    """Where the step's time goes, both sides: the training-mode forward alone, the step
    without the optimizer's apply (forward, loss, backward, clipping), the whole step."""
    spec = load_spec(setup.spec)
    model = official_model(off, setup, None, workdir)
    state, config = our_state(setup, None)
    data, batch, _ = batches(off, spec, model.config, setup)
    keep = KeepGradients()
    o_fwd = tf.function(lambda x: model(x, training=True))
    o_grad = tf.function(lambda d: (model.train_step(d), keep.grads))
    m_fwd = tf.function(lambda x: state.model(x, training=True))
    kept = {}

    def keep_ours(strategy, grads, lr, momentum, ok):
        kept["grads"] = list(grads)
        return tf.no_op()

    step = make_replica_step(state, config, 1)
    m_grad = tf.function(lambda b: (step(b)[0], kept["grads"]))
    real = model.optimizer

    def official_no_apply():
        model.optimizer = keep
        try:
            return float(o_grad(data)[0]["loss"])
        finally:
            model.optimizer = real

    def ours_no_apply():
        state.optimizer.apply = keep_ours
        try:
            return float(m_grad(batch)[0]["loss"])
        finally:
            del state.optimizer.apply

    fns = {"official_forward": lambda: o_fwd(data[0])[0][0].numpy(),
           "ours_forward": lambda: m_fwd(batch["image"])[0][0].numpy(),
           "official_no_apply": official_no_apply, "ours_no_apply": ours_no_apply}
    fns.update(step_functions(off, setup, workdir, xla=(False,), built=(model, state, config)))
    return fns


def error_line(e: BaseException) -> str:
    """The informative line of a TF error ("Graph execution error:" says nothing)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
    keys = ("No registered", "not supported", "Unimplemented", "UNIMPLEMENTED", "Detected")
    return next((x for x in lines if any(k in x for k in keys)), lines[-1])[:200]


def interleaved(fns: dict, runs: int, warmup: int) -> tuple[dict, dict]:
    """(seconds per call by name, {name: error line} for setups that failed to run)."""
    failed = {}
    for name, fn in list(fns.items()):
        try:
            for _ in range(warmup):
                fn()
        except Exception as e:  # an XLA kernel missing on this device: report, go on
            failed[name] = error_line(e)
            del fns[name]
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times, failed


def device_name(device: str) -> str:
    """'/CPU:0' or '/GPU:0'; exits in one line when a GPU is asked for and there is none."""
    if device == "gpu" and not tf.config.list_physical_devices("GPU"):
        sys.exit("error: --device gpu: TensorFlow sees no GPU here")
    return "/GPU:0" if device == "gpu" else "/CPU:0"


def speed(off, args, workdir: Path) -> dict:
    """Interleaved images/s of both sides, per precision that can run here."""
    dev = device_name(args.device)
    support = low_precision_support(args.device)
    out = {"device": args.device, "spec": args.spec, "batch_size": args.batch_size,
           "threads": [args.threads, args.inter_threads], "skipped": {}, "runs": {}}
    for precision in ["float32"] + sorted(support):
        if support.get(precision):
            out["skipped"][precision] = support[precision]
            continue
        setup = Setup(args.spec, args.batch_size, precision)
        load = os.getloadavg()
        with tf.device(dev):
            try:
                xla = (False, True) if args.xla else (False,)
                fns = step_functions(off, setup, workdir, xla=xla)
            except SystemExit as e:       # edetgraph refused the precision: say so, go on
                out["skipped"][precision] = str(e)
                continue
            times, failed = interleaved(fns, args.runs, args.warmup)
        r = rates(times, args.batch_size)
        for suffix in ("", "_xla"):
            if f"ours{suffix}" in r and f"official{suffix}" in r:
                r[f"ratio{suffix}"] = ratio(r[f"ours{suffix}"], r[f"official{suffix}"])
        out["runs"][precision] = {"load_average": [round(x, 2) for x in load],
                                  "load_average_after": [round(x, 2) for x in os.getloadavg()],
                                  "rates": r, "failed": failed}
    return out


def child(off, cfg: dict, device: str, runs: int, warmup: int) -> dict:
    """One setup alone (this process was started for it): images/s and peak memory."""
    setup = Setup(cfg["spec"], cfg["batch_size"], cfg["precision"],
                  jit_compile=cfg["xla"], grad_checkpoint=cfg["grad_checkpoint"])
    with tf.device(device_name(device)), tempfile.TemporaryDirectory() as tmp:
        fns = step_functions(off, setup, Path(tmp), sides=(cfg["side"],), xla=(cfg["xla"],))
        times, failed = interleaved(fns, runs, warmup)
    res = dict(cfg, failed=failed)
    if times:
        res.update(next(iter(rates(times, setup.batch_size).values())))
    if device == "gpu":
        res["peak_gpu_mb"] = round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return res


def memory(args) -> list:
    """Every memory setup in its own subprocess of this script; their result lines."""
    rows = []
    for spec in args.memory_specs:
        for xla in (False, True) if args.memory_xla else (False,):
            for gc in (False, True):
                for side in ("official", "ours"):
                    cfg = {"side": side, "spec": spec, "batch_size": args.batch_size,
                           "precision": "float32", "xla": xla, "grad_checkpoint": gc}
                    if side == "ours" and gc and not has_setting("grad_checkpoint"):
                        rows.append(dict(cfg, note="not available"))
                        continue
                    rows.append(run_child(args, cfg))
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def run_child(args, cfg: dict) -> dict:
    cmd = [sys.executable, __file__, "--official", args.official, "--device", args.device,
           "--runs", str(args.memory_runs), "--warmup", "1", "--threads", str(args.threads),
           "--inter-threads", str(args.inter_threads), "--child", json.dumps(cfg)]
    if args.tf_keras:
        cmd += ["--tf-keras", args.tf_keras]
    load = [round(x, 2) for x in os.getloadavg()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode or not lines:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1][:200]
        return dict(cfg, error=f"exit {r.returncode}: {tail}", load_average=load)
    return dict(json.loads(lines[-1]), load_average=load)


def print_speed(res: dict) -> None:
    print(f"{res['spec']} batch {res['batch_size']} on {res['device']}, threads intra/inter "
          f"{res['threads'][0]}/{res['threads'][1]}")
    for precision, run in res["runs"].items():
        print(f"[{precision}] load average before {run['load_average']} after "
              f"{run['load_average_after']}")
        for name, r in run["rates"].items():
            if name.startswith("ratio"):
                continue
            print(f"  {name:<14}{r['images_per_s']:>8.3f} img/s  median {r['median_s']:.3f} s"
                  f"  min {r['min_s']:.3f} s  ({r['runs']} runs)")
        for name, v in run["rates"].items():
            if name.startswith("ratio"):
                print(f"  ours/official{name[5:] or ''}: {v:.3f}x")
        for name, why in run["failed"].items():
            print(f"  {name}: failed: {why}")
    for precision, why in res["skipped"].items():
        print(f"[{precision}] not timed: {why}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_official_args(ap)
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--spec", default="d0")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10, help="interleaved timed calls per setup")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per setup first")
    ap.add_argument("--no-xla", dest="xla", action="store_false", help="skip the XLA setups")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    ap.add_argument("--inter-threads", type=int, default=1, help="inter-op threads")
    ap.add_argument("--memory", action="store_true", help="also one subprocess per setup")
    ap.add_argument("--memory-specs", nargs="+", default=["d0", "d3"])
    ap.add_argument("--memory-xla", action="store_true", help="memory setups with XLA too")
    ap.add_argument("--memory-runs", type=int, default=2)
    ap.add_argument("--child-timeout", type=float, default=1800)
    ap.add_argument("--skip-speed", action="store_true", help="skip the interleaved speed runs")
    ap.add_argument("--parts", action="store_true",
                    help="also time the parts of each step (forward, all but apply, all)")
    ap.add_argument("--child", help=argparse.SUPPRESS)   # internal: one setup, JSON
    ap.add_argument("--json", help="write all figures to this file")
    args = ap.parse_args(argv)
    device_name(args.device)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_threads)
    off = import_trainer(args.official, args.tf_keras)
    if args.child:
        print(json.dumps(child(off, json.loads(args.child), args.device, args.runs, args.warmup)))
        return 0
    out = {"cpu_count": os.cpu_count()}
    if args.parts:
        with tempfile.TemporaryDirectory() as tmp, tf.device(device_name(args.device)):
            fns = part_functions(off, Setup(args.spec, args.batch_size), Path(tmp))
            times, failed = interleaved(fns, args.runs, args.warmup)
        out["parts"] = {"rates": rates(times, args.batch_size), "failed": failed,
                        "load_average": [round(x, 2) for x in os.getloadavg()]}
        for k, r in out["parts"]["rates"].items():
            print(f"  {k:<20}median {r['median_s']:.3f} s  min {r['min_s']:.3f} s")
    if not args.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            out["speed"] = speed(off, args, Path(tmp))
        print_speed(out["speed"])
    if args.memory:
        out["memory"] = memory(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
