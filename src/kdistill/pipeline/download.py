"""The download stage: fetch and verify the archive, write every image once as uint8 tensors."""

from __future__ import annotations

from kdistill.control.params import load_params
from kdistill.entry import main
from kdistill.layout import Layout, project_root
from kdistill.sources.prepare import prepare


def download_stage() -> None:
    main("download", lambda: run_download(Layout(project_root())))


def run_download(layout: Layout) -> None:
    data = load_params(layout.params, only_known_sections=True).data
    dataset = prepare(data.url, data.md5, data.format, layout.raw_dir, layout.dataset, train_images=data.train_images)
    print(f"download: {len(dataset.train_labels)} train and {len(dataset.test_labels)} test images, "
          f"{len(dataset.classes)} classes -> {layout.dataset}")
