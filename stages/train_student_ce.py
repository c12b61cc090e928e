"""DVC stage `train_student_ce`: see dvc.yaml for its inputs and outputs, kdistill.pipeline for what it does."""

from kdistill.pipeline import main

if __name__ == "__main__":
    main("train_student_ce")
