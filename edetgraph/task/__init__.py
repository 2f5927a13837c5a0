"""The detection task around the network: anchors, labels and losses for training, pre- and
post-processing for inference, the ``Detector``, COCO metrics and evaluation, and the
weights and serving functions exports start from."""
