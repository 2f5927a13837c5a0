"""Training parity of edetgraph against the official google/automl EfficientDet TF2 trainer.

    python tools/official_train_parity.py --official /tmp/official --tf-keras /tmp/tfk

Both sides start from the same weights: random values written in the released checkpoint
layout (``official_parity.random_weights``), which the official Keras
``train_lib.EfficientDetNetTrain`` loads with its own loader after ``tf2/train.py``'s
``setup_model`` (its optimizer and its four Keras losses), and edetgraph's ``build_state``
loads with ``load_checkpoint``. Both take the same batch: street.jpg and a flipped, cropped
copy, each resized to fill the whole 512 px input (no zero padding: padded zeros tie in
max-pooling, and the two sides break such ties differently), with made-up boxes whose
centres fall between anchor centres. The script then compares:

- anchor targets: the official ``AnchorLabeler`` against edetgraph's, per image and level
  (class targets equal, box targets, positives);
- the losses of one step (class, box, IoU when ``--iou-loss``, weight decay, total),
  relative difference;
- every gradient (unclipped: both sides run their real train step with clipping off and
  an optimizer stand-in that keeps the gradients instead of applying them): per variable,
  max |ours - official| over max |official| of that gradient, the scale floored at
  ``train_measures.SCALE_FLOOR`` times the largest gradient's (a bias or beta whose next op
  is a 1x1 conv + batch norm has a zero gradient up to noise on both sides). Over the
  limit, a loss or gradient still passes within twice the official's disagreement with
  itself, the largest over its noise runs: the same batch with every input value moved by
  half a step of the compute dtype, up or down at random (the same computation rounded
  another way: in 8-bit-mantissa bfloat16 it moves a random-weight D0's losses by percents),
  and in float32 also the same batch in reverse order (same sums, another order). Both
  float32 runs are needed: the reversed batch moves only the batch reductions, and a
  gradient that is a difference of nearly equal sums (a BiFPN fusion weight's: its input's
  share against the weighted mean of all inputs') magnifies a last-bit change of the
  activations, which only the moved inputs show (D0 on an AVX-512 CPU: cell 1's fnode6
  WSM_2, ours 7.4e-4 from the official; the official 1.0e-3 from itself with the inputs
  moved, 1.8e-5 with the batch reversed, which alone failed the step check);
- one real step (first learning rate 0.5 on both sides, so that updates stand above the
  float32 rounding of the weights; clipping at norm 10, SGD with momentum): per variable,
  the difference of the updates over the official update's size, floored likewise; over
  the limit it passes only within float32 rounding (2 steps of the weight's largest value)
  plus the gradient noise the update carries (lr x clip scale x the noise above);
- batch-norm statistics after that step: moving means as the step; moving variances after
  applying to ours Bessel's n/(n-1) (Keras' fused batch norm, the official's on CPU/GPU,
  updates them with the unbiased batch variance; ours, like the official TPU batch norm,
  with the biased one), n = batch x h x w of the nearest pyramid level.

``--precision mixed_bfloat16|mixed_float16`` runs both in that precision: the official
through its Keras mixed policy (``utils.set_precision_policy``), edetgraph through the
``precision`` training setting; the script refuses, in one line, an edetgraph that ignores
the setting. Known differences in mixed precision (D0 512, random weights, measured on a
2-core AVX2 CPU): in bfloat16 the official normalises the BiFPN fusion weights in bfloat16,
edetgraph in float32 (by design), so those few scalar gradients differ beyond the noise; in
float16 on a CPU the official's squeeze-excite ``tf.reduce_mean`` over the 256 x 256 maps
accumulates in float16 and saturates (the mean of 256 x 256 halves comes out 0), which moves
its float16 loss ~18 % from its own float32 one (edetgraph's two-stage mean does not), and
edetgraph's first float16 step runs at the starting loss scale 2^15, whose scaled head
gradients overflow (the step is skipped, as Keras skips it), while the official's gradients
here are taken without its loss scale. In mixed precision that noise dominates every
tensor, so gradients, the step and the batch-norm statistics are judged per kind of
variable against the official's own noise (``train_measures.noise_verdict``): a kind fails
when ours is farther from the official than the official is from itself in more of its
tensors than a fair coin allows (sign test, p < 1e-3), or when one tensor is beyond 10x
that noise (the step's noise: the official's update had its gradient been a noise run's;
the statistics': their updates in the noise run); the fusion weights' known difference is
reported, not judged (``train_checks.NAMED_DIFFERENCES``). Checked on dumps of both sides
(D0 512, AVX-512 with bf16): before the bias-gradient fix (bfloat16 bias gradients summed
in bfloat16) the bias kind failed its gradients (worst 250x) and its step (2774x); after
it, every kind passes. Exit status 1 when a check fails. Not part of the test suite (CI has no
official code); the official EMA (tensorflow_addons) is off on its side, edetgraph's is on.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import types
from pathlib import Path

# TF_USE_LEGACY_KERAS is set by official_parity before TensorFlow loads (sibling script).
from official_parity import add_official_args, import_official, random_weights

import numpy as np  # noqa: E402 (after the environment official_parity sets)
import tensorflow as tf  # noqa: E402
from train_checks import (compare, judge_by_noise, largest_noise,  # noqa: E402
                          loss_figures, step_figures, update_noise)

from edetgraph.checkpoints.checkpoint import load_checkpoint, write_released
from edetgraph.graph import outputs
from edetgraph.graph.spec import load_spec
from edetgraph.nn.model import build_model
from edetgraph.resources import path
from edetgraph.task.labeler import labeler_for
from edetgraph.task.preprocess import IMAGENET_MEAN_RGB, IMAGENET_STDDEV_RGB, read_image
from edetgraph.training.config import PRECISIONS, TrainConfig, from_dict
from edetgraph.training.step import build_state, make_replica_step, make_train_function

LIMITS = {  # precision: (loss relative, gradient relative, step relative)
    "float32": {"loss": 1e-4, "grad": 1e-3, "step": 1e-3},
    # provisional: wide enough for bf16's 8-bit / fp16's 11-bit mantissa through the network
    "mixed_bfloat16": {"loss": 2e-2, "grad": 1e-1, "step": 1e-1},
    "mixed_float16": {"loss": 2e-3, "grad": 2e-2, "step": 2e-2},
}
# Made-up boxes in input pixels (yxyx) and 1-based classes; centres between anchor centres.
BOXES = ([[101.3, 57.9, 300.6, 180.2], [220.4, 250.7, 470.1, 490.3], [30.5, 300.2, 90.9, 380.6]],
         [[150.2, 120.8, 420.7, 260.3], [60.1, 330.4, 140.6, 470.9]])
CLASSES = ([1, 3, 18], [1, 62])
STEPS, WARMUP = 300, 100   # schedule length: step 0 runs at the warm-up start on both sides


def import_trainer(official: str, tf_keras: str | None) -> types.SimpleNamespace:
    """official_parity's modules plus the trainer's (train_lib, train, anchors, utils)."""
    off = import_official(official, tf_keras)
    # train_lib imports these for features not used here (adversarial loss, TF-Hub models)
    for unused in ("neural_structured_learning", "tensorflow_hub"):
        sys.modules.setdefault(unused, types.ModuleType(unused))
    from absl import logging  # deferred: comes with the official code's dependencies
    logging.set_verbosity(logging.ERROR)
    tf.get_logger().setLevel("ERROR")
    import utils  # deferred: on sys.path only after import_official
    from tf2 import anchors, train, train_lib  # deferred, as above
    return types.SimpleNamespace(**vars(off), anchors=anchors, train=train,
                                 train_lib=train_lib, utils=utils)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What both sides are built with."""
    spec: str = "d0"
    batch_size: int = 2
    precision: str = "float32"
    iou_loss: str | None = None
    jit_compile: bool = False
    grad_checkpoint: bool = False
    lr_warmup_init: float = 0.008   # the learning rate of step 0 on both sides


def official_config(off, setup: Setup, workdir: Path):
    """The official model config for ``setup``, completed as tf2/train.py's main does."""
    name = load_spec(setup.spec).name
    cfg = off.hparams_config.get_efficientdet_config(name)
    cfg.image_size = off.utils.parse_image_size(cfg.image_size)
    cfg.override(dict(  # what tf2/train.py's main adds to the model config
        model_name=name, model_dir=str(workdir / "official"), batch_size=setup.batch_size,
        steps_per_epoch=WARMUP, num_epochs=STEPS // WARMUP, strategy=None, profile=False,
        steps_per_execution=1, tf_random_seed=None, debug=False, val_json_file=None,
        eval_samples=0, num_shards=1), True)
    cfg.lr_warmup_init = setup.lr_warmup_init
    cfg.moving_average_decay = 0  # its EMA needs tensorflow_addons, gone with TF 2.15
    cfg.iou_loss_type = setup.iou_loss
    cfg.grad_checkpoint = setup.grad_checkpoint
    cfg.mixed_precision = setup.precision != "float32"
    return cfg


def official_model(off, setup: Setup, prefix: str | None, workdir: Path):
    """``EfficientDetNetTrain`` built and compiled as tf2/train.py does; weights from
    ``prefix`` (None: its own initial values)."""
    tf.keras.backend.clear_session()
    off.utils.set_precision_policy(setup.precision)
    cfg = official_config(off, setup, workdir)
    model = off.train.setup_model(off.train_lib.EfficientDetNetTrain(config=cfg), cfg)
    model.jit_compile = setup.jit_compile
    if prefix:
        off.util_keras.restore_ckpt(model, prefix, 0, skip_mismatch=False)
    return model


def has_setting(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(TrainConfig)}


def our_config(setup: Setup, clip: bool = True):
    settings = {"batch_size": setup.batch_size, "steps": STEPS, "warmup_steps": WARMUP,
                "precision": setup.precision, "iou_loss": setup.iou_loss, "seed": 0,
                "lr_warmup_init": setup.lr_warmup_init,
                "checkpoint_every_minutes": None}
    if not clip:
        settings["clip_norm"] = 0.0
    if setup.grad_checkpoint:
        if not has_setting("grad_checkpoint"):
            raise SystemExit("error: grad_checkpoint: not available in this edetgraph")
        settings["grad_checkpoint"] = True
    return from_dict(settings)


def our_state(setup: Setup, prefix: str | None):
    """edetgraph's train state for ``setup``; weights from ``prefix`` (None: its own)."""
    config = our_config(setup)
    state = build_state(load_spec(setup.spec), config, STEPS, WARMUP)
    if prefix:
        load_checkpoint(prefix, state.variables)
    if state.ema:
        state.ema.reset()
    return state, config


def low_precision_ops(fn, *args) -> set:
    """The 16-bit float dtypes any op of ``fn``'s traced graph produces."""
    graph = tf.function(fn).get_concrete_function(*args).graph
    found = {t.dtype.name for op in graph.get_operations() for t in op.outputs}
    return found & {"bfloat16", "float16"}


def check_our_precision(state, precision: str, images) -> None:
    """Refuse an edetgraph that ignores ``precision`` (trains in float32 anyway)."""
    if precision == "float32":
        return
    found = low_precision_ops(lambda x: state.model(x, training=True), images[:1])
    if not found:
        raise SystemExit(f"error: precision {precision}: edetgraph's model has no 16-bit op "
                         "(this edetgraph ignores the precision setting)")


def make_pictures(size) -> np.ndarray:
    """[2, H, W, 3] normalised float32: street.jpg, and a flipped centre crop of it, each
    stretched to fill the input (bilinear, so pixel values are not whole numbers)."""
    image = tf.cast(read_image(path("street.jpg")), tf.float32)
    h, w = image.shape[:2]
    crop = tf.image.flip_left_right(image[h // 8: h - h // 5, w // 6: w - w // 10])
    pics = [tf.image.resize(p, size, method="bilinear") for p in (image, crop)]
    return ((tf.stack(pics) - IMAGENET_MEAN_RGB) / IMAGENET_STDDEV_RGB).numpy()


def example_boxes(image_size, batch_size: int):
    """BOXES scaled from 512 px to ``image_size``, cycled to ``batch_size`` images."""
    sy, sx = image_size[0] / 512, image_size[1] / 512
    out = []
    for i in range(batch_size):
        b = np.asarray(BOXES[i % 2], np.float32) * [sy, sx, sy, sx]
        out.append((b.astype(np.float32), np.asarray(CLASSES[i % 2], np.int32)))
    return out


def batches(off, spec, model_cfg, setup: Setup):
    """(official (images, labels), our batch dict, anchor-target figures)."""
    images = make_pictures(spec.image_size)
    images = np.concatenate([images] * ((setup.batch_size + 1) // 2))[:setup.batch_size]
    a = model_cfg
    labeler = off.anchors.AnchorLabeler(
        off.anchors.Anchors(a.min_level, a.max_level, a.num_scales, a.aspect_ratios,
                            a.anchor_scale, a.image_size), a.num_classes)
    ours_l = labeler_for(spec)
    theirs, mine = [], []
    for boxes, classes in example_boxes(spec.image_size, setup.batch_size):
        cls, box, npos = labeler.label_anchors(tf.constant(boxes),
                                               tf.constant(classes[:, None], tf.float32))
        theirs.append({"cls": cls, "box": box, "npos": npos})
        mine.append(ours_l.label(boxes, classes))
    fig = target_figures(theirs, mine, spec.levels)
    labels = {"mean_num_positives": tf.fill([setup.batch_size, 1],
                                            tf.reduce_mean([t["npos"] for t in theirs]))}
    for lvl in spec.levels:
        labels[f"cls_targets_{lvl}"] = tf.stack([t["cls"][lvl] for t in theirs])
        labels[f"box_targets_{lvl}"] = tf.stack([t["box"][lvl] for t in theirs])
    ours = {k: tf.stack([m[k] for m in mine]) for k in mine[0]}
    ours["image"] = tf.constant(images)
    return (tf.constant(images), labels), ours, fig


def target_figures(theirs, mine, levels) -> dict:
    cls_bad, box_diff = 0, 0.0
    for t, m in zip(theirs, mine):
        for lvl in levels:
            cls_bad += int(np.sum(t["cls"][lvl].numpy() != m[outputs.cls_target_name(lvl)].numpy()))
            box_diff = max(box_diff, float(np.max(np.abs(
                t["box"][lvl].numpy() - m[outputs.box_target_name(lvl)].numpy()))))
    npos = [[float(t["npos"]), float(m["num_positives"])] for t, m in zip(theirs, mine)]
    return {"cls_target_mismatches": cls_bad, "box_target_max_abs": box_diff,
            "num_positives_official_ours": npos,
            "ok": cls_bad == 0 and box_diff <= 1e-5 and all(a == b for a, b in npos)}


class KeepGradients:
    """Stands in for the official optimizer: keeps what ``train_step`` would apply."""

    def __init__(self):
        self.learning_rate, self.grads = 0.0, None
        self.iterations = tf.constant(0, tf.int64)

    def apply_gradients(self, pairs):
        self.grads = [g for g, _ in pairs]
        return tf.no_op()


def official_grads(model, data) -> tuple[dict, dict, dict]:
    """(losses, {name: unclipped gradient}, {name: batch-norm moving statistic after the
    step}) of the official train_step on ``data``; every variable (batch-norm statistics
    too) is put back afterwards."""
    saved = [v.numpy() for v in model.weights]
    real, clip = model.optimizer, model.config.clip_gradients_norm
    model.optimizer, model.config.clip_gradients_norm = KeepGradients(), 0
    try:
        keep = model.optimizer
        losses, grads = tf.function(lambda d: (model.train_step(d), keep.grads))(data)
        stats = {v.name[:-2]: v.numpy() for v in model.weights if "moving_" in v.name}
    finally:
        model.optimizer, model.config.clip_gradients_norm = real, clip
        for v, s in zip(model.weights, saved):
            v.assign(s)
    names = [v.name[:-2] for v in model._freeze_vars()]
    return ({k: float(v) for k, v in losses.items()},
            {n: g.numpy() for n, g in zip(names, grads)}, stats)


def our_grads(state, setup: Setup, batch) -> tuple[dict, dict]:
    """(losses, {name: unclipped gradient}) of edetgraph's replica step (clip_norm 0, the
    optimizer's apply replaced by a keeper); every variable is put back afterwards."""
    saved = {n: v.numpy() for n, v in state.variables.items()}
    kept = {}

    def keep(strategy, grads, lr, momentum, ok):
        kept["grads"] = list(grads)
        return tf.no_op()

    step = make_replica_step(state, our_config(setup, clip=False), 1)

    @tf.function
    def run(b):
        summed, _ = step(b)
        return summed, kept["grads"]   # kept while tracing this same graph

    state.optimizer.apply = keep   # an instance attribute shadows the method
    try:
        losses, grads = run(batch)
    finally:
        del state.optimizer.apply
        for n, v in state.variables.items():
            v.assign(saved[n])
        state.step.assign(0)
        if state.ema:
            state.ema.reset()
    return ({k: float(v) for k, v in losses.items()},
            {n: g.numpy() for n, g in zip(state.optimizer.names, grads)})


def one_step(model, data, state, config, batch) -> tuple[dict, dict]:
    """Weights by name after one real step of each side's own train function."""
    fn = model.make_train_function(force=True)
    fn(iter(tf.data.Dataset.from_tensors(data).repeat()))
    ours_fn = make_train_function(tf.distribute.get_strategy(), state, config)
    ours_fn(iter(tf.data.Dataset.from_tensors(batch).repeat()), tf.constant(1))
    return ({v.name[:-2]: v.numpy() for v in model.weights},
            {n: v.numpy() for n, v in state.variables.items()})


NOISE_RUNS = {
    "moved": "the official on the batch with each input value moved by half a step of the "
             "compute dtype, up or down at random (the same computation rounded another way)",
    "reversed": "the official on the batch in reverse order (the same sums in another order)"}


def official_again(data, precision: str) -> dict:
    """The official's batches for its noise runs, by name (``NOISE_RUNS``). ``moved``: every
    input value multiplied by 1 +- half the compute dtype's step at 1 (float32 2^-24, bf16
    2^-8, fp16 2^-11), sign at random, so that it rounds the other way about half the time:
    how far one different rounding of the same computation carries through the network.
    float32 also ``reversed``: the batch in reverse order (a reduction's rounding in another
    order)."""
    images, labels = data
    half = {"float32": 2.0 ** -24, "mixed_bfloat16": 2.0 ** -8}.get(precision, 2.0 ** -11)
    sign = np.where(np.random.default_rng(0).random(images.shape) < 0.5, -1.0, 1.0)
    runs = {"moved": (images * tf.constant(1 + half * sign, images.dtype), labels)}
    if precision == "float32":
        runs["reversed"] = tf.nest.map_structure(lambda t: tf.reverse(t, [0]), data)
    return runs


def run(off, setup: Setup, seed: int, workdir: Path, dump=None) -> dict:
    """Every comparison for ``setup``; returns the figures with their pass flags."""
    spec = load_spec(setup.spec)
    raw, _ = random_weights(build_model(spec, seed=seed), seed)
    prefix = write_released(raw, workdir / "weights")
    model = official_model(off, setup, prefix, workdir)
    state, config = our_state(setup, prefix)
    data, batch, targets = batches(off, spec, model.config, setup)
    check_our_precision(state, setup.precision, batch["image"])
    limits = LIMITS[setup.precision]
    o_losses, o_grads, o_stats = official_grads(model, data)
    m_losses, m_grads = our_grads(state, setup, batch)
    # The official against itself on the same batch computed another way: its own noise.
    again = {name: official_grads(model, d)
             for name, d in official_again(data, setup.precision).items()}
    o_again_losses, noise, noise_abs = largest_noise(o_losses, o_grads, again)
    fig = {"setup": dataclasses.asdict(setup), "anchor_targets": targets,
           "noise_run": "; ".join(NOISE_RUNS[name] for name in again),
           "losses": loss_figures(o_losses, m_losses, limits["loss"], o_again_losses),
           "gradients": compare(o_grads, m_grads, limits["grad"], noise)}
    o_after, m_after = one_step(model, data, state, config, batch)
    fig["step"], fig["moving_mean"], fig["moving_variance"] = step_figures(
        raw, o_after, m_after, limits["step"], spec, setup.batch_size,
        update_noise(o_grads, noise_abs, setup.lr_warmup_init, config.clip_norm))
    if setup.precision != "float32":
        judge_by_noise(fig, raw, (o_grads, o_after, o_stats), (m_grads, m_after), again,
                       noise, limits, spec, setup.batch_size)
    if dump:
        np.savez(dump, **{f"o/{k}": v for k, v in o_grads.items()},
                 **{f"m/{k}": v for k, v in m_grads.items()},
                 **{f"{name}/{k}": v for name, r in again.items() for k, v in r[1].items()},
                 **{f"b/{k}": v for k, v in raw.items()},
                 **{f"so/{k}": v for k, v in o_after.items()},
                 **{f"sm/{k}": v for k, v in m_after.items()})
    parts = ("anchor_targets", "losses", "gradients", "step", "moving_mean", "moving_variance")
    fig["ok"] = all(fig[k]["ok"] for k in parts)
    return fig


def print_table(fig: dict) -> None:
    t = fig["anchor_targets"]
    print(f"{'check':<28}{'official':>14}{'ours':>14}{'n > limit':>11}{'rel diff':>11}"
          f"{'limit':>9}  ok")
    print(f"{'anchor class targets':<28}{'':>14}{t['cls_target_mismatches']:>14d}"
          f"{'':>11}{'mismatch':>11}{0:>9}  {t['cls_target_mismatches'] == 0}")
    print(f"{'anchor box targets':<28}{'':>14}{t['box_target_max_abs']:>14.2e}"
          f"{'':>11}{'max abs':>11}{1e-5:>9.0e}  {t['box_target_max_abs'] <= 1e-5}")
    for i, (a, b) in enumerate(t["num_positives_official_ours"]):
        print(f"{f'positives image {i}':<28}{a:>14.0f}{b:>14.0f}{'':>22}{'equal':>9}  {a == b}")
    lf = fig["losses"]
    for k, r in lf["rows"].items():
        print(f"{k:<28}{r['official']:>14.7g}{r['ours']:>14.7g}{'':>11}{r['rel']:>11.2e}"
              f"{lf['limit']:>9.0e}  {r['ok']}  (official vs itself {r['official_noise']:.2e})")
    for part in ("gradients", "step", "moving_mean", "moving_variance"):
        g = fig[part]
        label = f"{part} ({g['compared']} vars)"
        print(f"{label:<28}{'':>14}{g['over_limit']:>11d}  over{g['max_rel']:>11.2e}"
              f"{g['limit']:>9.0e}  {g['ok']}")
        for name, v, n in g["worst"]:
            print(f"    {v:.2e}  " + (f"(official vs itself {n:.2e})  " if n else "") + name)
        if part == "gradients" and g["unexplained"]:
            print(f"    {len(g['unexplained'])} beyond twice the official's own noise; the "
                  f"official's noise beyond twice our difference: {g['noise_beyond_twice_ours']}")
        if "noise_verdict" in g:
            print_noise_verdict(g["noise_verdict"])
    b = fig["moving_variance"]["bessel"]
    print(f"moving variances with Bessel's n/(n-1) applied to ours (n in {b['n']}): max rel "
          f"{b['max_rel']:.2e}, {b['over_limit']} over the limit: {b['ok']}"
          + (" (per tensor; judged by the noise above)"
             if "noise_verdict" in fig["moving_variance"] else ""))
    print(f"step: weights after it differ by at most {fig['step']['weights_max_abs']:.2e}; "
          f"over the limit and passed: within twice the official's own noise (losses, "
          f"gradients), or within float32 rounding + the gradient noise the update carries "
          f"(step)\nthe official's own noise: {fig['noise_run']}")


def print_noise_verdict(v: dict) -> None:
    print(f"    judged by the official's own noise, per kind (fails: ours farther in more "
          f"tensors than chance at p < {v['p']:g}, or one beyond {v['worst_x']:g}x):")
    for kind, r in v["kinds"].items():
        verdict = "named" if r["ok"] is None else r["ok"]
        print(f"      {kind:<18}{r['n']:>4} tensors, ours farther in {r['farther']:>3} "
              f"(p {r['p']:.2g}), median {r['median_ratio']:.2f}x, worst {r['worst'][1]:.2f}x "
              f"{r['worst'][0]}  {verdict}" + (f"\n        {r['named']}" if "named" in r else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_official_args(ap)
    ap.add_argument("--spec", default="d0", help="d0 (D1+ train with random drop-connect)")
    ap.add_argument("--precision", choices=PRECISIONS, default="float32")
    ap.add_argument("--iou-loss", choices=["iou", "giou", "diou", "ciou"],
                    help="add this IoU box loss on both sides")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--dump", help="save every gradient and weight to this .npz")
    args = ap.parse_args(argv)
    off = import_trainer(args.official, args.tf_keras)
    # A large first learning rate, so that most updates are well above float32 rounding
    # of the weights they are added to (the step is compared relative to its size).
    setup = Setup(args.spec, args.batch_size, args.precision, args.iou_loss, lr_warmup_init=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        fig = run(off, setup, args.seed, Path(tmp), args.dump)
    print_table(fig)
    print("PASS" if fig["ok"] else "FAIL")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))
    return 0 if fig["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
