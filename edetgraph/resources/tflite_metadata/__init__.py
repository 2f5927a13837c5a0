"""The TFLite Model Metadata schema, as flatc generated it: ``metadata_schema.fbs`` and its
generated Python ``metadata_schema_py_generated.py``, copied unchanged from the ``mediapipe``
1.2.3 wheel (``mediapipe/tasks/metadata/``; Apache 2.0, ``LICENSE`` beside them; schema
version 1.5.0, file identifier ``M001``).

Why a copy: the schema's generated Python ships only in the ``mediapipe`` wheel (43 MB,
with OpenCV) and in ``tflite-support`` (pins protobuf < 4, which TensorFlow 2.21 cannot
use), so neither can be a core dependency; the copy needs only ``flatbuffers``, which
TensorFlow and LiteRT already bring. Nothing here is written by hand: the byte layout is
flatbuffers' and the schema's. ``tests/test_file_metadata.py`` checks that the copy is
byte for byte the one the installed ``mediapipe`` wheel ships, where it is installed.
"""
from edetgraph.resources.tflite_metadata import metadata_schema_py_generated as schema  # noqa: F401

SCHEMA_VERSION = "1.5.0"
FILE_IDENTIFIER = b"M001"
