"""The ``kdistill`` command: tools around the pipeline (the stages themselves run from dvc.yaml)."""

from __future__ import annotations

import argparse
import sys

from kdistill.layout import Layout, project_root


def _dvc_yaml(args: argparse.Namespace) -> int:
    from kdistill.codedeps import SRC
    from kdistill.dvcfile import generate

    layout = Layout(project_root())
    changed = generate(layout, SRC, check=args.check)
    names = ", ".join(str(path.relative_to(layout.root)) for path in changed)
    if args.check:
        if changed:
            print(f"out of step with the registry: {names}; run `kdistill dvc-yaml`", file=sys.stderr)
            return 1
        print("dvc.yaml and stages/ are in step with the registry")
    else:
        print(f"wrote {names}" if changed else "dvc.yaml and stages/ were already up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdistill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("dvc-yaml", help="regenerate dvc.yaml and stages/*.py from the method registry")
    generate.add_argument("--check", action="store_true", help="only check; exit 1 if anything is out of step")
    generate.set_defaults(run=_dvc_yaml)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
