"""The download stage: fetch and verify the archive, write every image once as uint8 tensors."""

from __future__ import annotations

from kdistill.control.params import load_params
from kdistill.entry import main
from kdistill.layout import Layout, project_root
from kdistill.methods.baselines.spec import TEACHER
from kdistill.sources.fetch import fetch
from kdistill.sources.prepare import prepare


def download_stage() -> None:
    main("download", lambda: run_download(Layout(project_root())))


def run_download(layout: Layout) -> None:
    params = load_params(layout.params, {TEACHER.name: TEACHER.params}, only_known_sections=True)
    teacher, data = params.section(TEACHER.name), params.data
    if teacher.checkpoint:  # before the dataset: a bad URL fails in seconds, not after the archive's minutes
        fetch(teacher.checkpoint, layout.published_teacher(teacher.checkpoint_md5), teacher.checkpoint_md5,
              keys=("train_teacher.checkpoint", "train_teacher.checkpoint_md5"))
    dataset = prepare(data.url, data.md5, data.format, layout.raw_dir, layout.dataset, train_images=data.train_images)
    print(f"download: {len(dataset.train_labels)} train and {len(dataset.test_labels)} test images, "
          f"{len(dataset.classes)} classes -> {layout.dataset}")
