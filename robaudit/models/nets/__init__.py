"""Built-in architectures; importing this package registers them in ``ARCHITECTURES``."""

from . import cert_cnn, mlp, preact_resnet, resnet, small_cnn, wide_resnet, yu_convnet

__all__ = ["cert_cnn", "small_cnn", "yu_convnet", "resnet", "preact_resnet", "wide_resnet", "mlp"]
