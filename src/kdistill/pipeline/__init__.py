"""The pipeline's stages: training with tracking, checkpoints and resume points; the download stage."""
