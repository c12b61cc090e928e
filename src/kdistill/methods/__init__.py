"""The distillation methods, a folder each (``kdistill.methods.spec`` says what one declares)."""
