"""Data: the built-in synthetic dataset, COCO to TFRecord with the official keys, and the
tf.data input pipeline with the official augmentation."""
