"""The control plane, without torch: params validation, the registry of stages, dvc.yaml and code deps."""
