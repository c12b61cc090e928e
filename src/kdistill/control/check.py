"""The ``check_params`` stage: the whole of params.yaml validated, before any other stage runs."""

from __future__ import annotations

from kdistill.control.registry import CHECK_PARAMS, load_all_params
from kdistill.entry import main
from kdistill.files import write_text
from kdistill.layout import Layout, project_root


def check_params(layout: Layout) -> None:
    """Runs on any change of a value (or a new key) in params.yaml, before every other stage."""
    load_all_params(layout.params)
    # Constant content: a valid change reruns this stage but nothing downstream of it.
    write_text(layout.params_checked, "params.yaml is valid\n")
    print(f"check_params: {layout.params} is valid")


def check_params_stage() -> None:
    main(CHECK_PARAMS, lambda: check_params(Layout(project_root())))
