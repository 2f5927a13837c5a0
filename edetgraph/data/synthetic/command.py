"""A built-in detection dataset that needs no download: coloured shapes on noisy backgrounds.

Each image has 0 or 2..6 objects of up to eight shape classes (circle, square, triangle,
cross, ring, star, diamond, hourglass). Shapes differ by outline, not by colour, so a
detector has to learn form; colour, size (12-50 % of the image side) and aspect ratio vary,
and later objects may partly hide earlier ones. Boxes are the tight boxes of the *visible*
pixels and `area` is the visible pixel count, as in COCO. Only numpy and PIL are needed
(TensorFlow only for ``--tfrecord``).

--difficulty hard (default easy, the scenes above) adds textured backgrounds, distractor
shapes with no label (strokes, blobs, open arcs and the shapes of unused classes), some of
them in front of objects, up to 10 objects per image down to 6 % of the side, often placed
against each other, and colours closer to the background's. The visibility rule is the
same: a shape drawn later may hide at most 35 % of what is still visible of any object.

    python -m edetgraph.data.synthetic --out /tmp/shapes --num-images 1000 --image-size 256 --seed 0

writes ``DIR/{train,val}/images/*.jpg`` and ``DIR/{train,val}/instances.json``; with
``--tfrecord`` also ``DIR/tfrecord/{train,val}-00000-of-0000N.tfrecord`` (N = ``--shards``).
"""
from __future__ import annotations

import argparse
import json
import sys

from edetgraph.data.synthetic.levels import DIFFICULTIES
from edetgraph.data.synthetic.shapes import SHAPES
from edetgraph.data.synthetic.writer import DEFAULT_NUM_CLASSES, generate, write_tfrecords


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edetgraph.data.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-images", type=int, default=1000, help="images in total (default 1000)")
    p.add_argument("--image-size", type=int, default=256, help="square image side (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of val images (0.2)")
    p.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES,
                   help=f"shape classes, 1..{len(SHAPES)} (default {DEFAULT_NUM_CLASSES})")
    p.add_argument("--difficulty", default="easy",
                   help=f"scene difficulty: {' | '.join(DIFFICULTIES)} (default easy)")
    p.add_argument("--tfrecord", action="store_true", help="also write TFRecords per split")
    p.add_argument("--shards", type=int, default=1, help="TFRecord shards per split (default 1)")
    args = p.parse_args(argv)

    def progress(split, done, total):
        if done == total or done % 200 == 0:
            print(f"[synthetic] {split}: {done}/{total} images", file=sys.stderr)
    try:
        summary = generate(args.out, args.num_images, args.image_size, args.seed,
                           args.val_fraction, args.num_classes, progress, args.difficulty)
        if args.tfrecord:
            summary["tfrecords"] = write_tfrecords(summary, args.shards)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
