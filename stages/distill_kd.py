"""DVC stage `distill_kd`: see dvc.yaml for its inputs and outputs, kdistill.pipeline for what it does."""

from kdistill.pipeline import main

if __name__ == "__main__":
    main("distill_kd")
