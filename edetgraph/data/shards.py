"""A set of TFRecord shards, ``PREFIX-00000-of-0000N.tfrecord`` ..., written as a whole.

Every shard is written under a hidden temporary name; :meth:`ShardSet.commit` renames them
all into place and only then removes any other set of the same prefix (an earlier run
with another ``--shards``). A run that fails, is killed or fills the disk leaves no file
that a ``PREFIX-*`` glob would take for data, and the old set as it was. Readers refuse a
glob that matches two sets of one prefix (:func:`check_shard_sets`), which only a kill in
the instant between the renames and the removal, or files from elsewhere, can leave.
Local paths or gs:// (through ``tf.io.gfile``).
"""
from __future__ import annotations

import os
import re
import uuid
from collections import defaultdict

import tensorflow as tf

from edetgraph.files import PARTIAL

SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})(?P<suffix>\.tfrecord)?$")


def shard_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}.tfrecord"


class ShardSet:
    """``with ShardSet(prefix, n) as s: s.write(i, record) ...; s.commit()``; leaving the
    block without :meth:`commit` removes everything written."""

    def __init__(self, prefix: str, count: int):
        self.prefix, self.count = prefix, count
        self.folder, self.stem = os.path.split(prefix)
        self.files = [shard_name(prefix, i, count) for i in range(count)]
        if self.folder:
            tf.io.gfile.makedirs(self.folder)
        self._drop_leftovers()
        token = uuid.uuid4().hex[:12]
        self.temps = [os.path.join(self.folder, f".{os.path.basename(f)}.{token}{PARTIAL}")
                      for f in self.files]
        self.writers = []
        self.committed = False

    def __enter__(self):
        self.writers = [tf.io.TFRecordWriter(t) for t in self.temps]
        return self

    def write(self, index: int, record: bytes) -> None:
        self.writers[index].write(record)

    def commit(self) -> None:
        """Close every shard (a full disk surfaces here), rename all into place, then remove
        the prefix's other shard sets."""
        for w in self.writers:
            w.close()
        for temp, final in zip(self.temps, self.files):
            tf.io.gfile.rename(temp, final, overwrite=True)
        self.committed = True
        for old in self._existing():
            if old not in self.files:
                tf.io.gfile.remove(old)

    def __exit__(self, *exc):
        if self.committed:
            return False
        for w in self.writers:
            try:
                w.close()
            except (tf.errors.OpError, OSError):   # the disk may be full: the file goes anyway
                pass
        for temp in self.temps:
            if tf.io.gfile.exists(temp):
                tf.io.gfile.remove(temp)
        return False

    def _names(self) -> list:
        try:
            return tf.io.gfile.listdir(self.folder or ".")
        except tf.errors.NotFoundError:
            return []

    def _existing(self) -> list:
        """Every shard file of this prefix, whatever its count."""
        out = []
        for name in self._names():
            m = SHARD.match(name)
            if m and m["stem"] == self.stem and m["suffix"]:
                out.append(os.path.join(self.folder, name))
        return out

    def _drop_leftovers(self) -> None:
        """Temporaries of a killed run of this prefix (hidden, so never read as data)."""
        leftover = re.compile(rf"^\.{re.escape(self.stem)}-\d{{5}}-of-\d{{5}}\.tfrecord\."
                              rf"[0-9a-f]+{re.escape(PARTIAL)}$")
        for name in self._names():
            if leftover.match(name):
                tf.io.gfile.remove(os.path.join(self.folder, name))


def check_shard_sets(files: list, pattern: str) -> None:
    """ValueError when ``files`` hold shards of one prefix with two counts (``-of-00002``
    and ``-of-00003``): two data sets that a glob would silently mix."""
    counts = defaultdict(set)
    for f in files:
        folder, name = os.path.split(f)
        m = SHARD.match(name)
        if m:
            counts[(folder, m["stem"], m["suffix"])].add(m["count"])
    for (folder, stem, _), found in sorted(counts.items()):
        if len(found) > 1:
            sets = " and ".join(f"-of-{c}" for c in sorted(found))
            raise ValueError(f"{pattern} matches {len(found)} shard sets of "
                             f"{os.path.join(folder, stem)} ({sets}), left by runs with "
                             "different --shards? keep one")
