"""One training step under several replica setups, for tests/test_replicas.py.

Run as a script in its own process (``python tests/_replica_runs.py OUT_DIR``): two
logical CPUs must be configured before TensorFlow initialises its devices, and collective
ops of two strategies in one process collide, so every 2-replica run here shares one
MirroredStrategy. Each run starts from the same seeded weights and takes one step on the
same 4 images (replica 0 gets images 0-1, replica 1 images 2-3; replica 0's images hold
more boxes, so the replicas' positive counts differ). Saved per run, as ``run/kind/name``:
the loss and gradient-norm metrics, the gradients the optimizer applied, the weights
after the step, every replica's copy of the BN moving statistics and the EMA shadows.

Models, each saved to OUT_DIR/MODEL.npz: ``hand`` (a stem conv + BN and 1x1 heads built from
the real layers: seconds; every run above) and ``spec`` (the smallest EfficientDet the spec
allows, about 20 s of CPU per 2-replica run: the global step on one device and on two
replicas only). OUT_DIR/options.npz holds one more comparison of one device and
two replicas on the smallest EfficientDet, three steps each, through the real input pipeline
(``distributed_input`` on synthetic TFRecords: each replica must get its slice of the same
global batch) with the recipe's options on (AdamW, moving positives normaliser, frozen
backbone): one pair of runs for both claims. All of it runs in this one process, under one
MirroredStrategy: one interpreter and TensorFlow start for every 2-replica claim of the suite.
"""
import sys
from pathlib import Path

from edetgraph.cli import quiet_tensorflow

quiet_tensorflow()
import tensorflow as tf  # noqa: E402

if __name__ == "__main__":
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

from edetgraph.graph.spec import load_spec  # noqa: E402
from edetgraph.nn.layers import BatchNorm, Conv, activation  # noqa: E402
from edetgraph.task.labeler import labeler_for  # noqa: E402
from edetgraph.task.losses import decayed_variables, detection_loss, weight_decay_loss  # noqa: E402
from edetgraph.training import step as step_module  # noqa: E402
from edetgraph.training.config import from_dict  # noqa: E402

SPEC = ["image_size=64", "num_classes=2", "backbone.width=0.1", "backbone.depth=0.1",
        "fpn.channels=4", "fpn.repeats=1", "head.repeats=0", "anchors.min_level=3",
        "anchors.max_level=4", "backbone.drop_connect=0.0",
        # momentum 0.5: the moving statistics after one step are half the batch's, so a
        # wrong batch statistic shows at full size, not damped 100 times
        "bn.momentum=0.5"]
BOXES = (4, 3, 1, 1)          # boxes per image: replica 0 has more positives than replica 1
CLIP = 1.0                    # small enough to clip this model's first step


class HandModel(tf.Module):
    """stem 3x3/8 conv -> BN -> swish (level 3) -> 3x3/2 conv -> BN -> swish (level 4);
    1x1 class and box predictions on both levels. The real Conv and BatchNorm layers."""

    def __init__(self, spec, seed=0):
        super().__init__(name=None)
        a = spec.num_anchors
        self.stem = Conv("stem/conv2d", 3, 8, 3, stride=8, seed=seed)
        self.stem_bn = BatchNorm("stem/tpu_batch_normalization", 8, spec.bn.momentum)
        self.down = Conv("down/conv2d", 8, 8, 3, stride=2, seed=seed)
        self.down_bn = BatchNorm("down/tpu_batch_normalization", 8, spec.bn.momentum)
        self.cls = Conv("class_net/class-predict", 8, a * spec.num_classes, 1, bias=True,
                        seed=seed)
        self.box = Conv("box_net/box-predict", 8, a * 4, 1, bias=True, seed=seed)

    def variables_by_name(self):
        return {v.name[:-2]: v for v in self.variables}

    def __call__(self, images, training=False):
        f3 = activation(self.stem_bn(self.stem(images), training), "swish")
        f4 = activation(self.down_bn(self.down(f3), training), "swish")
        return [self.cls(f) for f in (f3, f4)], [self.box(f) for f in (f3, f4)]


def make_batch(spec) -> dict:
    rng = np.random.default_rng(7)
    labeler = labeler_for(spec)
    h, w = spec.image_size
    examples = []
    for n in BOXES:
        y0, x0 = rng.uniform(0, h * 0.5, n), rng.uniform(0, w * 0.5, n)
        size = rng.uniform(0.2, 0.5, (n, 2)) * [h, w]
        boxes = np.stack([y0, x0, y0 + size[:, 0], x0 + size[:, 1]], 1).astype(np.float32)
        examples.append(labeler.label(boxes, rng.integers(1, spec.num_classes + 1, n)))
    batch = {k: tf.stack([e[k] for e in examples]) for k in examples[0]}
    batch["image"] = tf.constant(rng.normal(size=(len(BOXES), h, w, 3)).astype(np.float32))
    return batch


def config(**kw):
    base = {"batch_size": len(BOXES), "steps": 4, "warmup_steps": 1, "learning_rate": 0.4,
            "seed": 1, "clip_norm": CLIP}
    return from_dict({**base, **kw})


def _record_grads(strategy, state):
    """Wrap the optimizer's apply so the gradients it applies land in probe variables."""
    with strategy.scope():
        probes = [tf.Variable(tf.zeros(v.shape), trainable=False) for v in state.optimizer.vars]
    apply = state.optimizer.apply

    def recording_apply(strategy_, grads, *args):
        ops = [strategy_.extended.update(p, lambda p_, g_: p_.assign(g_), args=(g,))
               for p, g in zip(probes, grads)]
        with tf.control_dependencies([tf.group(ops)]):
            return apply(strategy_, grads, *args)

    state.optimizer.apply = recording_apply
    return probes


def _local_values(variable) -> np.ndarray:
    """Every replica's copy, stacked: [replicas, ...]."""
    return np.stack([v.numpy() for v in
                     tf.distribute.get_strategy().experimental_local_results(variable)])


def one_step(strategy, spec, cfg, batch) -> dict:
    """Build the state under `strategy`, take one step on `batch`, return what it did."""
    with strategy.scope():
        state = step_module.build_state(spec, cfg, 4, 1, seed=0)
        state.ema.reset()
        probes = _record_grads(strategy, state)
        per_replica = len(BOXES) // strategy.num_replicas_in_sync
        data = strategy.distribute_datasets_from_function(
            lambda ctx: tf.data.Dataset.from_tensors(batch).repeat().rebatch(per_replica))
        fn = step_module.make_train_function(strategy, state, cfg)
        metrics = fn(iter(data), tf.constant(1))[0]
        out = {"metric/loss": metrics["loss"].numpy(), "metric/ok": metrics["ok"].numpy(),
               "metric/grad_norm": metrics["grad_norm"].numpy()}
        out.update({f"grad/{n}": _local_values(p) for n, p in zip(state.optimizer.names, probes)})
        for name, var in state.variables.items():
            kind = "bn_stat" if name.endswith(("moving_mean", "moving_variance")) else "weight"
            out[f"{kind}/{name}"] = _local_values(var)
            out[f"ema/{name}"] = _local_values(state.ema.shadows[name])
    return out


def closed_forms(spec, cfg, batch, replicas=2) -> dict:
    """One device, full batch (so batch norm sees the global batch, as synced BN does):
    what the official rules apply when nothing is clipped, with D_r the summed detection
    loss of replica r's images and P_r their positives (P = sum_r P_r):
    ``per_replica``: the gradient of ``mean_r D_r / (P_r + 1) + L2``;
    ``per_replica_sum``: the gradient of ``sum_r D_r / (P / R + 1) + R * L2``."""
    state = step_module.build_state(spec, cfg, 4, 1, seed=0)
    n = len(BOXES) // replicas
    levels = list(spec.levels)
    with tf.GradientTape(persistent=True) as tape:
        cls, box = state.model(batch["image"], training=True)
        decay = weight_decay_loss(decayed_variables(state.variables), cfg.weight_decay)
        det = []
        for r in range(replicas):
            part = slice(r * n, (r + 1) * n)
            labels = {k: v[part] for k, v in batch.items()}
            positives = tf.reduce_sum(labels["num_positives"]) + 1.0
            det.append(detection_loss([c[part] for c in cls], [b[part] for b in box], labels,
                                      state.loss_config, levels, positives)["det_loss"])
        per_core = tf.reduce_sum(batch["num_positives"]) / replicas + 1.0
        losses = {"per_replica": tf.add_n(det) / replicas + decay,
                  "per_replica_sum": detection_loss(cls, box, batch, state.loss_config, levels,
                                                    per_core)["det_loss"] + replicas * decay}
    out = {}
    for rule, loss in losses.items():
        grads = tape.gradient(loss, state.optimizer.vars)
        out[rule] = {"metric/loss": loss.numpy()}
        out[rule].update({f"grad/{n}": g.numpy()[None]
                          for n, g in zip(state.optimizer.names, grads)})
    return out


def clip_then_sum(strategy) -> dict:
    """`_clip_then_sum` on fixed per-replica gradients (no model): the official order."""
    rng = np.random.default_rng(3)
    local = [[rng.normal(size=(3, 2)).astype(np.float32) * s,
              rng.normal(size=(4,)).astype(np.float32) * s] for s in (4.0, 0.3)]

    @tf.function
    def run():
        def fn():
            ctx = tf.distribute.get_replica_context()
            r = ctx.replica_id_in_sync_group
            grads = [tf.gather(tf.constant(np.stack([lo[i] for lo in local])), r)
                     for i in range(2)]
            return step_module._clip_then_sum(ctx, grads, tf.constant(1.0), CLIP, 2)[0]
        return strategy.run(fn)

    summed = [strategy.experimental_local_results(g)[0].numpy() for g in run()]
    return {"clip/local": np.array([np.concatenate([g.ravel() for g in lo]) for lo in local]),
            "clip/summed": np.concatenate([g.ravel() for g in summed])}


def sync_batch_norm(strategy) -> dict:
    """One BatchNorm layer in training mode, each replica holding half of a 4-image batch:
    its outputs (both halves) and moving mean, and the global batch's (x) statistics."""
    with strategy.scope():
        bn = BatchNorm("bn", 4, momentum=0.5)
    x = (np.random.RandomState(0).normal(size=(4, 3, 3, 4)) * [1, 2, 3, 4]
         + [0, 1, 2, 3]).astype(np.float32)
    dist = strategy.experimental_distribute_values_from_function(
        lambda ctx: x[2 * ctx.replica_id_in_sync_group: 2 * ctx.replica_id_in_sync_group + 2])

    @tf.function
    def step(xs):
        return strategy.run(lambda t: bn(t, training=True), args=(xs,))

    y = np.concatenate([t.numpy() for t in strategy.experimental_local_results(step(dist))])
    moving = np.stack([v.numpy() for v in strategy.experimental_local_results(bn.moving_mean)])
    return {"sync_bn/x": x, "sync_bn/y": y, "sync_bn/moving_mean": moving}


def local_moments(self, x):
    """Batch norm as if not synchronised: each replica's own batch statistics."""
    mean, var = tf.nn.moments(tf.cast(x, tf.float32), [0, 1, 2])
    return tf.cast(mean, x.dtype), tf.cast(var, x.dtype)


def model_runs(model: str, spec, one, two) -> dict:
    """The runs of `model` ('hand' or 'spec'), flattened as {"run|kind/name": array}."""
    build_model = step_module.build_model
    if model == "hand":
        step_module.build_model = lambda spec_, seed=0, **_: HandModel(spec_, seed)
    batch = make_batch(spec)
    runs = {"one_global": one_step(one, spec, config(), batch),
            "two_global": one_step(two, spec, config(), batch)}
    if model == "hand":
        # The replica_reduction rules against their closed forms: on the hand model only.
        # They are the step's code, whatever the model (the real model ran them too, at 20 s
        # of CPU for its 2-replica run, until the suite had to fit in 12 minutes).
        runs["two_per_replica_noclip"] = one_step(
            two, spec, config(replica_reduction="per_replica", clip_norm=0), batch)
        closed = closed_forms(spec, config(), batch)
        runs["closed_per_replica"] = closed["per_replica"]
        runs["closed_per_replica_sum"] = closed["per_replica_sum"]
        runs["one_per_replica"] = one_step(one, spec, config(replica_reduction="per_replica"),
                                           batch)
        runs["two_per_replica_sum_noclip"] = one_step(
            two, spec, config(replica_reduction="per_replica_sum", clip_norm=0), batch)
        synced = BatchNorm._batch_moments
        BatchNorm._batch_moments = local_moments
        runs["two_local_bn"] = one_step(two, spec, config(), batch)
        BatchNorm._batch_moments = synced
        runs["clip"] = clip_then_sum(two)
        runs["sync_bn"] = sync_batch_norm(two)
    step_module.build_model = build_model
    positives = batch["num_positives"].numpy()
    flat = {f"{run}|{k}": v for run, values in runs.items() for k, v in values.items()}
    flat["positives"] = positives
    return flat


# The input-pipeline and recipe-option comparison: the smallest EfficientDet, 3 classes,
# three steps through the input pipeline (jitter) with AdamW, the moving positives normaliser
# and a frozen backbone.
OPTIONS_SPEC = SPEC[:1] + ["num_classes=3"] + SPEC[2:-1]
OPTIONS_CONFIG = {"batch_size": 4, "steps": 3, "warmup_steps": 1, "learning_rate": 0.1,
                  "log_every_steps": 1, "max_instances": 10, "jitter_min": 0.8,
                  "jitter_max": 1.2, "seed": 1, "checkpoint_every_minutes": None,
                  "optimizer": "adamw", "weight_decay": 0.01, "positives_momentum": 0.9,
                  "var_freeze_expr": "efficientnet"}


def three_steps(strategy, spec, cfg, make_iterator) -> dict:
    """Three steps from the seeded start: {"loss": [3], "var/<name>": weights after,
    "normalizer": the moving positives normaliser's biased average}."""
    with strategy.scope():
        state = step_module.build_state(spec, cfg, 3, 1)
        state.ema.reset()
    it = make_iterator(strategy)
    fn = step_module.make_train_function(strategy, state, cfg)
    losses = [float(fn(it, tf.constant(1))[0]["loss"]) for _ in range(3)]
    out = {"loss": np.array(losses)}
    out.update({f"var/{k}": v.numpy() for k, v in state.variables.items()})
    if state.normalizer is not None:
        out["normalizer"] = state.normalizer.biased.numpy()
    return out


def option_runs(one, two, data_dir: Path) -> dict:
    from edetgraph.data.synthetic import generate, write_tfrecords
    from edetgraph.training.inputs import distributed_input
    spec = load_spec("d0", OPTIONS_SPEC)
    write_tfrecords(generate(data_dir, 16, 64, seed=3, val_fraction=0.25, num_classes=3))
    pattern = str(data_dir / "tfrecord" / "train-*.tfrecord")
    cfg = from_dict(OPTIONS_CONFIG)

    def pipeline(strategy):
        return iter(distributed_input(strategy, pattern, spec, cfg, seed=1))

    runs = {"options_one": three_steps(one, spec, cfg, pipeline),
            "options_two": three_steps(two, spec, cfg, pipeline)}
    return {f"{run}|{k}": v for run, values in runs.items() for k, v in values.items()}


def main(out_dir: str) -> None:
    out_dir = Path(out_dir)
    one = tf.distribute.get_strategy()
    two = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")[:2]])
    spec = load_spec("d0", SPEC)
    # Grappler off: what is compared is one device against two replicas under the same
    # graph rewrites, and a 2-replica step of the real model spends most of its time there
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    np.savez(out_dir / "hand.npz", **model_runs("hand", spec, one, two))
    np.savez(out_dir / "spec.npz", **model_runs("spec", spec, one, two))
    np.savez(out_dir / "options.npz", **option_runs(one, two, out_dir / "data"))


if __name__ == "__main__":
    main(sys.argv[1])
