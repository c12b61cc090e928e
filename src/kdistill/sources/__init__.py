"""The data sources: fetching, safe archive reading, the CIFAR-10 and image-folder readers, the prepared dataset.

Only the download stage runs the fetching and reading code; the trainings read the prepared
dataset (``kdistill.sources.dataset``) alone, so a change to a retry back-off retrains nothing.
"""
