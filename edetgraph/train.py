"""``python -m edetgraph.train``: train an EfficientDet from a spec and a settings file.

    python -m edetgraph.train --spec demo --train-config demo --model-dir runs/demo
    python -m edetgraph.train --spec d0 --data 'gs://b/coco/train-*' --val-data 'gs://b/coco/val-*' \\
        --val-json instances_val2017.json --model-dir gs://b/runs/d0 --tpu my-tpu

Without --data it trains on the built-in synthetic dataset. Rerunning the same command
resumes from the newest checkpoint in --model-dir. Exit status: 0 done, 2 bad input,
3 stopped on a NaN/Inf loss, 143 saved and stopped on SIGTERM.
"""
from __future__ import annotations

import argparse
import sys

from edetgraph.cli import quiet_tensorflow
from edetgraph.graph.budget import check_budget
from edetgraph.graph.spec import SpecError, load_spec
from edetgraph.task.coco import format_table
from edetgraph.training.config import TrainConfigError, load_train_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edetgraph.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="model spec: a name in specs/ or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set num_classes=6 (repeatable)")
    p.add_argument("--train-config", default="default",
                   help="training settings: a name in specs/train/ or a YAML path (default: default)")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training setting, e.g. --train-set steps=100 (repeatable)")
    p.add_argument("--model-dir", required=True, help="checkpoints, TensorBoard logs, eval output")
    p.add_argument("--data", help="training TFRecords (glob; default: the built-in dataset)")
    p.add_argument("--val-data", help="validation TFRecords (glob), evaluated during training")
    p.add_argument("--val-json", help="COCO instances JSON of --val-data")
    p.add_argument("--ckpt", help="initialise from this checkpoint (released archive/folder or "
                   "own); heads whose shape differs are skipped")
    p.add_argument("--init-weights", choices=("official", "ema"), default="official",
                   help="what --ckpt gives: 'official' (default, as the official trainer "
                   "restores): its raw values become the weights and its "
                   "ExponentialMovingAverage shadows the EMA's start (a variable without a "
                   "shadow: its raw value); 'ema': the shadows become the weights and the "
                   "EMA starts from them (edetgraph before this option)")
    p.add_argument("--tpu", help="TPU name (or grpc:// address): use TPUStrategy")
    p.add_argument("--strategy", default="default", choices=("default", "mirrored", "multiworker"),
                   help="distribution strategy without --tpu (multiworker reads TF_CONFIG)")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"),
                   help="compute precision (default: the settings file's)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = load_spec(args.spec, args.set)
        check_budget(spec)   # a model past the limits is refused before TensorFlow starts
        config = load_train_config(args.train_config, args.train_set)
    except (SpecError, TrainConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    quiet_tensorflow()
    from edetgraph.training import trainer  # deferred: --help and bad settings skip TensorFlow
    try:
        result = trainer.train(spec, config, args.model_dir, args.data, args.val_data, args.val_json,
                       args.ckpt, args.strategy, args.tpu, args.precision,
                       init_weights=args.init_weights)
    except trainer.TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    print(f"done: step {result.step}/{result.total_steps} in {result.seconds:.0f} s; "
          f"checkpoint {result.checkpoint}")
    if result.metrics:
        print(format_table(result.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
