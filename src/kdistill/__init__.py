"""Knowledge distillation on CIFAR-10: the PyTorch tutorial as a DVC + MLflow pipeline."""
