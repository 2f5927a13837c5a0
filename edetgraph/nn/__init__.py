"""The network layer: the IR lowered to raw TensorFlow ops in ``tf.Module``s (layers,
EfficientNet backbones, the feature network, heads, the whole model), variables named as
the released checkpoints name them."""
