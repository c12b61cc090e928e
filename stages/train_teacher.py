"""DVC stage `train_teacher`: see dvc.yaml for its inputs and outputs, kdistill.pipeline for what it does."""

from kdistill.pipeline import main

if __name__ == "__main__":
    main("train_teacher")
