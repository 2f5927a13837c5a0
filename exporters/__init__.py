"""Exporters: one flow (``pipeline``) that builds, converts, gates and stages every format;
``to_onnx.py``, ``to_tflite.py`` and ``to_saved_model.py`` are its command lines."""
