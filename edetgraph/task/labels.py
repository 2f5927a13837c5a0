"""Class names, as the task layer has always offered them; they live in
:mod:`edetgraph.data.labels` (no TensorFlow), where the data converter can keep them too."""
from edetgraph.data.labels import (  # noqa: F401
                                   COCO_LABELS,
                                   COCO_NUM_CLASSES,
                                   LABELS_FILE,
                                   check_labels,
                                   label_lines,
                                   label_name,
                                   labels_beside_checkpoint,
                                   labels_beside_records,
                                   labels_json,
                                   load_labels,
                                   records_labels_path,
                                   resolve_labels,
)
