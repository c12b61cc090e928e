"""The distillation methods, a folder each (``kdistill.methods.method`` says what one declares)."""
