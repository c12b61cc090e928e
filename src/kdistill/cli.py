"""The ``kdistill`` command: tools around the pipeline (the stages themselves run from dvc.yaml)."""

from __future__ import annotations

import argparse
import sys

from kdistill.errors import KdistillError
from kdistill.layout import Layout, project_root


def _dvc_yaml(args: argparse.Namespace) -> int:
    from kdistill.control.codedeps import SRC
    from kdistill.control.dvcfile import generate

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


def _review(args: argparse.Namespace) -> int:
    from kdistill.analysis.review import review

    text, table = review(project_root(), args.baseline, args.candidate)
    print(text, end="")
    worse = [row.label for row in table if row.verdict == "worse"]
    if args.fail_on_regression and worse:
        print(f"regression: detectably worse: {', '.join(worse)}", file=sys.stderr)
        return 1
    return 0


def _set(args: argparse.Namespace) -> int:
    from kdistill.control.edit import set_params

    layout = Layout(project_root())
    changed = set_params(layout.params, args.assignments)
    print(f"params.yaml: set {', '.join(changed)}" if changed else "params.yaml: nothing to change")
    return 0


def _recipe(args: argparse.Namespace) -> int:
    from kdistill.control.edit import set_params
    from kdistill.control.recipes import RECIPES, assignments

    values = assignments(RECIPES[args.recipe](args.teacher, args.student))
    if args.overrides:
        print(" ".join(f"-S '{value}'" for value in values))
        return 0
    changed = set_params(Layout(project_root()).params, values)
    print(f"params.yaml: the {args.recipe} recipe for {args.teacher} -> {args.student}; set {', '.join(changed) or 'nothing'}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from kdistill.sweep.driver import run_sweep

    table = run_sweep(project_root(), args.set_params, address=args.address, name=args.name, cpus=args.cpus,
                      gpus=args.gpus)
    return 1 if (table["status"] != "done").any() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdistill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("dvc-yaml", help="regenerate dvc.yaml and stages/*.py from the method registry")
    generate.add_argument("--check", action="store_true", help="only check; exit 1 if anything is out of step")
    generate.set_defaults(run=_dvc_yaml)
    assign = commands.add_parser("set", help="change params.yaml in place (comments kept), validating the result first")
    assign.add_argument("assignments", nargs="+", metavar="key=value", help="a dotted key and a YAML value, e.g. distill_kd.T=4")
    assign.set_defaults(run=_set)
    recipe = commands.add_parser("recipe", help="write a published training recipe for a teacher/student pair into "
                                                "params.yaml (validated, comments kept)")
    recipe.add_argument("recipe", choices=["crd"], help="crd: the CRD / mdistiller CIFAR-100 benchmark")
    recipe.add_argument("--teacher", required=True, help="a network name, e.g. resnet32x4")
    recipe.add_argument("--student", required=True, help="a network name, e.g. resnet8x4")
    recipe.add_argument("--overrides", action="store_true",
                        help="print the values as `dvc exp run -S` options instead of writing them")
    recipe.set_defaults(run=_recipe)
    sweep = commands.add_parser("sweep", help="run a grid of experiments as Ray tasks: on this machine, or on a cluster")
    sweep.add_argument("-S", "--set-param", dest="set_params", action="append", default=[], metavar="key=values",
                       help="DVC's sweep syntax, e.g. -S 'distill_kd.T=1,2,4' -S 'seeds=[42,43,44]'")
    sweep.add_argument("--address", help="a Ray cluster to join (or RAY_ADDRESS); default: Ray on this machine")
    sweep.add_argument("-n", "--name", help="experiment names: NAME-1, NAME-2, ... (default: sweep-<id>-N)")
    sweep.add_argument("--cpus", type=float, default=1.0, help="CPUs per experiment (its threads); default 1")
    sweep.add_argument("--gpus", type=float, default=0.0, help="GPUs per experiment, a fraction allowed; default 0")
    sweep.set_defaults(run=_sweep)
    review = commands.add_parser("review", help="compare two revisions, experiments or the workspace, method by method")
    review.add_argument("--baseline", default="HEAD", help="git revision, DVC experiment or `workspace` (default: HEAD)")
    review.add_argument("--candidate", default="workspace", help="the same kinds (default: workspace)")
    review.add_argument("--fail-on-regression", action="store_true", help="exit 1 when any method is detectably worse")
    review.set_defaults(run=_review)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KdistillError as error:
        print(f"error: kdistill {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the command has said what it stopped
        return 130


if __name__ == "__main__":
    sys.exit(main())
