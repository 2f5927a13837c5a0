"""Training: settings files, schedule, clipping, optimizer/EMA arithmetic, the loop on a tiny
model (loss goes down, NaN stop and skip, images without boxes, XLA), kill-and-resume, an
unreachable TPU, and two workers matching one process. (Two replicas of a MirroredStrategy
against one device, through the input pipeline: tests/test_replicas.py, which runs every
2-replica comparison in one fresh interpreter.)"""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from edetgraph.graph.spec import load_spec
from edetgraph.training.config import TrainConfigError, from_dict, load_train_config
from edetgraph.training.optim import EMA, SGDMomentum, clip_gradients
from edetgraph.training.schedule import WarmupCosine

ROOT = Path(__file__).resolve().parent.parent
# The smallest EfficientDet the spec allows (levels 3-4, no head repeats): nothing tested
# here depends on the model's size, and every trace and step is cheaper.
TINY = ["image_size=64", "num_classes=3", "backbone.width=0.1", "backbone.depth=0.1",
        "fpn.channels=4", "fpn.repeats=1", "head.repeats=0", "anchors.min_level=3",
        "anchors.max_level=4"]
TINY_SET = [x for kv in TINY for x in ("--set", kv)]


def tiny_spec():
    return load_spec("d0", TINY)


def tiny_config(**kw):
    base = {"batch_size": 4, "steps": 4, "warmup_steps": 1, "learning_rate": 0.4,
            "log_every_steps": 1, "max_instances": 10, "jitter_min": 0.8, "jitter_max": 1.2,
            "seed": 1, "checkpoint_every_minutes": None}
    base.update(kw)
    return from_dict(base)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """12 synthetic 64 px images (some without objects) as TFRecords + COCO json."""
    from edetgraph.data.synthetic import generate, write_tfrecords
    out = tmp_path_factory.mktemp("shapes")
    summary = generate(out, 16, 64, seed=3, val_fraction=0.25, num_classes=3)
    write_tfrecords(summary)
    return {"train": str(out / "tfrecord" / "train-*.tfrecord"),
            "val": str(out / "tfrecord" / "val-*.tfrecord"),
            "val_json": str(out / "val" / "instances.json")}


# ---------------------------------------------------------------- settings and schedule

def test_settings_files_load_and_reject_unknown_keys(tmp_path):
    default = load_train_config("default")
    assert (default.batch_size, default.learning_rate, default.momentum, default.clip_norm,
            default.ema_decay, default.weight_decay) == (64, 0.08, 0.9, 10.0, 0.9998, 4e-5)
    assert default.total_steps() == 300 * 120000 // 64 and default.warmup() == 120000 // 64
    demo = load_train_config("demo")
    assert demo.steps and demo.seed is not None
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: 8\nsteps: 10\nsynthetic: {num_imagez: 3}\n")
    with pytest.raises(TrainConfigError, match=r"bad\.yaml: synthetic\.num_imagez: unknown key"):
        load_train_config(bad)
    with pytest.raises(TrainConfigError, match="nan_policy"):
        load_train_config("demo", ["nan_policy=ignore"])
    with pytest.raises(TrainConfigError, match="exactly one of 'epochs' and 'steps'"):
        from_dict({"batch_size": 8})
    # overriding steps replaces the file's epochs
    assert load_train_config("default", ["steps=7"]).total_steps() == 7


def test_warmup_then_cosine_values():
    s = WarmupCosine(peak=0.08, warmup_init=0.008, warmup_steps=10, total_steps=110)
    want = {0: 0.008, 5: 0.044, 10: 0.08, 60: 0.04, 110: 0.0}
    for step, value in want.items():
        assert s.value(step) == pytest.approx(value, abs=1e-9)
        assert float(s(tf.constant(step))) == pytest.approx(value, abs=1e-6)
    assert float(s(35)) == pytest.approx(0.04 * (1 + np.cos(np.pi * 0.25)), rel=1e-5)
    cfg = from_dict({"batch_size": 16, "learning_rate": 0.08, "steps": 5})
    assert cfg.scaled_learning_rate() == pytest.approx(0.02)


def test_clipping_equals_per_tensor_then_global_clip():
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(0, s, n).astype(np.float32)) for s, n in
             ((10.0, 5), (0.1, 3), (3.0, 7))]
    got, norm = clip_gradients(grads, 10.0)
    want = [tf.clip_by_norm(g, 10.0) for g in grads]
    want, _ = tf.clip_by_global_norm(want, 10.0)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)
    assert float(norm) == pytest.approx(float(tf.linalg.global_norm(grads)), rel=1e-6)


def test_sgd_momentum_and_ema_arithmetic_and_skipped_step():
    w = tf.Variable([1.0, -2.0])
    opt, ema = SGDMomentum({"w": w}, 0.9), EMA({"w": w}, 0.9998)
    ema.reset()
    strategy = tf.distribute.get_strategy()

    @tf.function
    def step(g, lr, s, ok):
        def replica(g):
            glr, mom = opt.gates(lr, ok)
            rate = ema.rate(s, ok)

            def merge(strat, g, glr, mom, rate):
                with tf.control_dependencies([opt.apply(strat, [g], glr, mom, ok)]):
                    return ema.apply(strat, rate)
            tf.distribute.get_replica_context().merge_call(merge, args=(g, glr, mom, rate))
        strategy.run(replica, args=(g,))

    accum, ref, shadow = np.zeros(2), np.array([1.0, -2.0]), np.array([1.0, -2.0])
    for s, (g, lr) in enumerate([([0.5, 1.0], 0.1), ([-1.0, 2.0], 0.05), ([3.0, 3.0], 0.2)]):
        step(tf.constant(g), tf.constant(lr), tf.constant(s), tf.constant(True))
        accum = 0.9 * accum + np.array(g)
        ref = ref - lr * accum
        d = min(0.9998, (1 + s) / (10 + s))
        shadow = d * shadow + (1 - d) * ref
        np.testing.assert_allclose(w.numpy(), ref, rtol=1e-6)
        np.testing.assert_allclose(ema.shadows["w"].numpy(), shadow, rtol=1e-6)
    step(tf.constant([np.nan, 1.0]), tf.constant(0.1), tf.constant(3), tf.constant(False))
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(opt.slots["w"].numpy(), accum, rtol=1e-6)
    np.testing.assert_allclose(ema.shadows["w"].numpy(), shadow, rtol=1e-6)


# ---------------------------------------------------------------- the step on a tiny model

def _step_fn(spec, config, batch, jit=False):
    from edetgraph.training.step import build_state, make_train_function
    state = build_state(spec, config, config.steps, 1)
    fn = make_train_function(tf.distribute.get_strategy(), state, config, jit)
    it = iter(tf.data.Dataset.from_tensors(batch).repeat())
    return state, lambda n=1: {k: float(v) for k, v in fn(it, tf.constant(n))[0].items()}


@pytest.mark.slow         # the XLA compile of the step
def test_a_few_steps_decrease_the_loss_and_the_xla_compiled_step_takes_the_same_steps():
    """Ten steps in graph mode bring the loss down; the XLA-compiled step runs on CPU and,
    from the same seeded start on the same batch, gives the graph steps' first two losses.
    (Before: two tests, the XLA one with a graph-mode step of its own.)"""
    from edetgraph.training.benchmark import _fixed_batch
    spec = tiny_spec()
    batch = _fixed_batch(spec, 4)
    state, run = _step_fn(spec, tiny_config(steps=12), batch)
    graph = [run() for _ in range(10)]
    first, last = graph[0]["loss"], graph[-1]
    assert last["ok"] == 1.0 and last["loss"] < 0.6 * first
    assert int(state.step.numpy()) == 10
    _, run_xla = _step_fn(spec, tiny_config(steps=12), batch, jit=True)
    a = run_xla()
    assert a["ok"] == 1.0 and a["loss"] == pytest.approx(graph[0]["loss"], rel=1e-4)
    assert run_xla()["loss"] == pytest.approx(graph[1]["loss"], rel=1e-3)


def test_precise_bn_is_the_plain_average_of_per_batch_statistics(tmp_path):
    from edetgraph.data.tfexample import encode_example
    from edetgraph.nn.model import build_model
    from edetgraph.training.precise_bn import recalibrate
    rng = np.random.default_rng(0)
    records = []
    for i in range(2):
        png = tf.io.encode_png(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)).numpy()
        records.append(encode_example(png, 64, 64, str(i), "x.png",
                                      image_format="png").SerializeToString())
    for name, recs in (("a", records[:1]), ("b", records[1:]), ("ab", records)):
        with tf.io.TFRecordWriter(str(tmp_path / f"{name}.tfrecord")) as w:
            for r in recs:
                w.write(r)
    spec = tiny_spec()
    values = {k: v.numpy() for k, v in build_model(spec, seed=2).variables_by_name().items()}
    a, b, ab = (recalibrate(spec, values, str(tmp_path / f"{n}.tfrecord"), batches=2,
                            batch_size=1) for n in ("a", "b", "ab"))
    assert ab and all(k.endswith(("moving_mean", "moving_variance")) for k in ab)
    for k in ab:
        np.testing.assert_allclose(ab[k], (a[k] + b[k]) / 2, rtol=1e-4, atol=1e-6, err_msg=k)
    assert not np.allclose(a["efficientnet-b0/stem/tpu_batch_normalization/moving_mean"],
                           values["efficientnet-b0/stem/tpu_batch_normalization/moving_mean"])


# ---------------------------------------------------------------- the loop (in process)

def test_nan_stop_keeps_the_last_good_checkpoint(tmp_path, tiny_data):
    from edetgraph.training.trainer import TrainError, train
    cfg = tiny_config(steps=8, checkpoint_every_steps=2)
    with pytest.raises(TrainError) as err:
        train(tiny_spec(), cfg, tmp_path, data=tiny_data["train"], inject_nan_at=5,
              log=lambda m: None)
    assert err.value.code == 3
    msg = str(err.value)
    assert "NaN/Inf at step 5" in msg and "ckpt-4" in msg and "\n" not in msg
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-4")
    assert not list(tmp_path.glob("ckpt-5*"))
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-4"))
    values = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
              if k.startswith(("variables/", "ema/"))]
    assert values and all(np.isfinite(v).all() for v in values)


def test_nan_skip_leaves_weights_alone_and_counts(tmp_path, tiny_data):
    from edetgraph.training.trainer import train
    cfg = tiny_config(steps=5, checkpoint_every_steps=2, nan_policy="skip")
    result = train(tiny_spec(), cfg, tmp_path, data=tiny_data["train"], inject_nan_at=3,
                   log=lambda m: None)
    assert (result.step, result.skipped_steps) == (5, 3)
    a, b = (tf.train.load_checkpoint(str(tmp_path / f"ckpt-{s}")) for s in (2, 5))
    keys = [k for k in a.get_variable_to_shape_map() if k.startswith(("variables/", "ema/"))
            and "moving_" not in k]      # BN statistics do move in the forward pass
    assert keys and all(np.array_equal(a.get_tensor(k), b.get_tensor(k)) for k in keys)


def test_train_and_evaluate_with_images_without_boxes(tmp_path, tiny_data):
    from edetgraph.data.tfexample import encode_example
    from edetgraph.training.trainer import train
    path = tmp_path / "empty.tfrecord"
    png = tf.io.encode_png(tf.fill([48, 64, 3], tf.constant(90, tf.uint8))).numpy()
    with tf.io.TFRecordWriter(str(path)) as w:
        for i in range(4):
            w.write(encode_example(png, 48, 64, str(i), "e.png",
                                   image_format="png").SerializeToString())
    cfg = tiny_config(steps=3, batch_size=2, eval_batch_size=4, bn_recalibration_batches=1)
    result = train(tiny_spec(), cfg,
                   tmp_path / "run", data=str(path), val_data=tiny_data["val"],
                   val_json=tiny_data["val_json"], log=lambda m: None)
    assert result.step == 3 and all(np.isfinite(h["loss"]) for h in result.history)
    assert [h["box_loss"] for h in result.history] == [0.0] * 3
    # the class biases start at the 0.01 prior and are pushed towards background everywhere
    # (before: a step-level test of its own on a batch of labels without boxes)
    reader = tf.train.load_checkpoint(str(tmp_path / "run" / "ckpt-3"))
    [key] = [k for k in reader.get_variable_to_shape_map()     # "/" in names is ".S"
             if k.startswith("variables/") and "class-predict" in k and "bias" in k]
    prior = -np.log((1 - 0.01) / 0.01)
    assert (reader.get_tensor(key) < prior - 1e-6).all()
    assert result.metrics["images"] == 4 and 0.0 <= result.metrics["AP50"] <= 1.0
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["step"] == 3
    assert list((tmp_path / "run" / "train").glob("events.out.tfevents.*"))


# ---------------------------------------------------------------- the CLI (subprocesses)

def _cli(args, env=None, **kw):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "edetgraph.train", *args], cwd=ROOT, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_unreachable_tpu_is_one_line(capsys):
    from edetgraph.train import main
    code = main(["--spec", "d0", *TINY_SET, "--train-config", "demo", "--model-dir",
                 "/nonexistent/never-written", "--tpu", "no-such-tpu-edetgraph"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot find TPU 'no-such-tpu-edetgraph'")
    assert "\n" not in err and "Traceback" not in err


def test_tpu_address_that_never_answers_times_out():
    # Connecting to a closed grpc port hangs in TF; the strategy setup must give up.
    code = ("import sys, time\n"
            "from edetgraph.training.distribute import DistributeError, tpu_strategy\n"
            "t = time.time()\n"
            "try:\n"
            "    tpu_strategy(sys.argv[1], timeout=1)\n"
            "except DistributeError as e:\n"
            "    print('ERR', e, round(time.time() - t))\n")
    proc = subprocess.run([sys.executable, "-c", code, f"grpc://127.0.0.1:{_free_ports(1)[0]}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    line = proc.stdout.strip()
    assert line.startswith("ERR connecting to TPU") and "no answer after 1 s" in line
    assert int(line.rsplit(" ", 1)[1]) < 30


@pytest.mark.slow
def test_kill_9_then_resume_at_the_saved_step(tmp_path, tiny_data, capsys):
    args = ["--spec", "d0", *TINY_SET, "--train-config", "demo", "--data", tiny_data["train"],
            "--model-dir", str(tmp_path / "run"), "--train-set", "steps=12",
            "--train-set", "batch_size=4", "--train-set", "checkpoint_every_steps=3",
            "--train-set", "log_every_steps=1", "--train-set", "warmup_steps=1",
            # precise BN (the demo settings' last act) has its own test
            "--train-set", "bn_recalibration_batches=0"]
    proc = _cli(args)
    saved = None
    for line in proc.stdout:            # kill right after the second checkpoint is written
        if "saved " in line and "ckpt-6" in line:
            saved = 6
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert saved == 6 and proc.returncode == -signal.SIGKILL
    latest = tf.train.latest_checkpoint(str(tmp_path / "run"))
    assert latest.endswith(("ckpt-6", "ckpt-9"))   # a save may have slipped in before the kill
    resumed_at = int(latest.rsplit("-", 1)[1])
    # The resumed run: the CLI's main in this process (only the killed run needs its own).
    from edetgraph.train import main
    code = main(args)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 0, out
    assert f"resumed from {latest} at step {resumed_at}" in out
    assert "done: step 12/12" in out
    first_logged = [ln for ln in out.splitlines() if ln.startswith("step ")][0]
    assert first_logged.startswith(f"step {resumed_at + 1}/12")


@pytest.mark.slow
def test_nan_from_a_huge_learning_rate_exits_3_with_one_line(tmp_path, tiny_data, capsys):
    # The CLI's main in this process: its return value is the exit code (sys.exit(main())).
    from edetgraph.train import main
    args = ["--spec", "d0", *TINY_SET, "--train-config", "demo", "--data", tiny_data["train"],
            "--model-dir", str(tmp_path / "run"), "--train-set", "steps=20",
            "--train-set", "batch_size=4", "--train-set", "checkpoint_every_steps=1",
            "--train-set", "learning_rate=1e30", "--train-set", "warmup_steps=0"]
    code = main(args)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert code == 3 and len(errors) == 1 and "Traceback" not in out
    assert "NaN/Inf" in errors[0] and "Last good checkpoint" in errors[0]
    latest = tf.train.latest_checkpoint(str(tmp_path / "run"))
    assert latest is None or latest in errors[0]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_match_one_process(tmp_path, tiny_data, capsys):
    common = ["--spec", "d0", *TINY_SET, "--train-config", "demo", "--data", tiny_data["train"],
              "--train-set", "steps=3", "--train-set", "batch_size=4",
              "--train-set", "warmup_steps=1", "--train-set", "checkpoint_input=false",
              # SGD: Adam divides each step by the root of its second moment, so a weight
              # whose gradient is ~0 moves by ~lr on the sign of its rounding, which differs
              # between an all-reduce and one batch (the demo recipe is AdamW)
              "--train-set", "optimizer=sgd", "--train-set", "learning_rate=1.28",
              "--train-set", "weight_decay=4e-5",
              # Precise BN recomputes near-zero means from the final weights in training mode,
              # which amplifies the all-reduce's rounding past this tolerance (seen: 1.5e-5
              # on a mean of -0.0012); it has its own test.
              "--train-set", "bn_recalibration_batches=0"]
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = [_cli(common + ["--model-dir", str(tmp_path / "multi"), "--strategy", "multiworker"],
                    env={"TF_CONFIG": json.dumps({"cluster": cluster,
                                                  "task": {"type": "worker", "index": i}})})
               for i in range(2)]
    # The one-process reference: the CLI's main in this process (a default strategy, one
    # device), while the two worker processes train.
    from edetgraph.train import main
    single = main(common + ["--model-dir", str(tmp_path / "single")])
    captured = capsys.readouterr()
    outs = [captured.out + captured.err] + [p.communicate(timeout=900)[0] for p in workers]
    assert [single] + [p.returncode for p in workers] == [0, 0, 0], "\n".join(outs)
    assert "2 replica(s)" in outs[1] and "1 replica(s)" in outs[0]
    a = tf.train.load_checkpoint(str(tmp_path / "single" / "ckpt-3"))
    b = tf.train.load_checkpoint(str(tmp_path / "multi" / "ckpt-3"))
    keys = [k for k in a.get_variable_to_shape_map() if k.startswith(("variables/", "ema/"))]
    assert keys and set(keys) <= set(b.get_variable_to_shape_map())
    for k in keys:
        # summation order differs (all-reduce vs one batch): float rounding only
        np.testing.assert_allclose(a.get_tensor(k), b.get_tensor(k), rtol=1e-4, atol=1e-5,
                                   err_msg=k)
    assert not list((tmp_path / "multi").glob(".worker-*"))


def test_train_throughput_script_compares_pipeline_and_step(tmp_path, monkeypatch, capsys):
    """The script's figures, and those of the train-step benchmark it calls (images/s, a
    finite final loss)."""
    from bench import train_throughput
    monkeypatch.setenv("EDETGRAPH_CACHE", str(tmp_path / "cache"))
    benchmarks = []

    def benchmark(*args, **kwargs):
        benchmarks.append(bench_step(*args, **kwargs))
        return benchmarks[-1]
    bench_step = train_throughput.benchmark_train_step
    monkeypatch.setattr(train_throughput, "benchmark_train_step", benchmark)
    out = tmp_path / "r.json"
    # The demo spec cut to its smallest (the comparison does not depend on the model's size).
    small = ["image_size=64", "backbone.width=0.1", "fpn.channels=4", "fpn.repeats=1",
             "head.repeats=0", "anchors.min_level=3", "anchors.max_level=4"]
    code = train_throughput.main(["--spec", "demo", *[a for kv in small for a in ("--set", kv)],
                                  "--batch-size", "2",
                                  "--synthetic-images", "12", "--pipeline-batches", "3",
                                  "--steps", "2", "--json", str(out)])
    r = json.loads(out.read_text())
    assert code == (0 if r["passed"] else 1)
    assert r["pipeline_images_per_sec"] > 0 and r["train_step_images_per_sec"] > 0
    assert r["ratio"] == pytest.approx(r["pipeline_images_per_sec"]
                                       / r["train_step_images_per_sec"])
    assert r["passed"] == (r["ratio"] >= 2.0) and r["data"].endswith("train-*.tfrecord")
    [step] = benchmarks
    assert step["images_per_sec"] == r["train_step_images_per_sec"] > 0
    assert np.isfinite(step["final_loss"])
    printed = capsys.readouterr().out
    assert "input pipeline" in printed and "train step" in printed and "ratio" in printed


def test_train_throughput_refuses_missing_data(tmp_path, capsys):
    from bench import train_throughput
    code = train_throughput.main(["--spec", "demo", "--data", str(tmp_path / "none-*.tfrecord")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--data" in err[0] and "none-*" in err[0]
