"""`tierflow models …`: the model catalogue jobs name their model from (shared.domain.catalogue)."""

import json
from pathlib import Path

from functions.cli.parsing import add_command, add_group, print_json, print_table
from shared.domain import catalogue


def _show(row: dict, as_json: bool) -> None:
    if as_json:
        print_json(catalogue.as_json(row))
    else:
        print(f"{row['name']}: {catalogue.describe(row)} (added {row['added_at']:%Y-%m-%d %H:%M} by "
              f"{row['added_by'] or 'unknown'})")


def cmd_models_add(deps, args) -> int:
    row, created = deps.add_model(args.name, args.source, args.revision, added_by=args.added_by)
    if not args.json:
        print("added" if created else "already in the catalogue, unchanged:", end=" ")
    _show(row, args.json)
    return 0


def cmd_models_list(deps, args) -> int:
    with deps.connect() as conn:
        rows = catalogue.rows(conn)
    if args.json:
        print_json([catalogue.as_json(r) for r in rows])
    else:
        print_table(["NAME", "SOURCE", "REVISION", "PIN", "ADDED"],
                    [[r["name"], r["source"], r["revision"] or "-", r["pin"], f"{r['added_at']:%Y-%m-%d %H:%M}"]
                     for r in rows])
    return 0


def cmd_models_show(deps, args) -> int:
    with deps.connect() as conn:
        _show(catalogue.get(conn, args.name), args.json)
    return 0


def cmd_models_remove(deps, args) -> int:
    with deps.uow() as uow:
        row = catalogue.remove(uow.conn, args.name)
    print_json(catalogue.as_json(row)) if args.json else print(f"removed model {row['name']} from the catalogue")
    return 0


def cmd_models_tiny(deps, args) -> int:
    from shared.media.tiny import build_tiny_model

    path = build_tiny_model(Path(args.directory))
    print(json.dumps({"model": str(path)}) if args.json else f"built the tiny text-to-video model in {path}")
    return 0


def register(commands) -> None:
    """Add `models` to the `tierflow` parser."""
    group = add_group(commands, "models", "the model catalogue: the models jobs may name, each pinned when added")
    add = add_command(group, "add", cmd_models_add,
                      "add a model, pinned now: a hub id to its revision's commit, a directory to a hash of its "
                      "files (model_index.json, configs, weights); workers refuse weights that no longer match")
    add.add_argument("name", metavar="NAME", help="what jobs call it (letters, digits, '.', '_', '-')")
    add.add_argument("source", metavar="SOURCE",
                     help="a diffusers pipeline directory (as workers see it) or an org/name Hugging Face Hub id")
    add.add_argument("--revision", metavar="R", help="a hub branch, tag or commit (default: main)")
    add.add_argument("--added-by", metavar="WHO", help="recorded with the entry")
    add_command(group, "list", cmd_models_list, "list the catalogue")
    show = add_command(group, "show", cmd_models_show, "one model: source, revision, pin, who added it and when")
    show.add_argument("name", metavar="NAME")
    remove = add_command(group, "remove", cmd_models_remove,
                         "remove a model (refused while jobs of it are queued or running); its scenes stay, "
                         "but cannot be upscaled again")
    remove.add_argument("name", metavar="NAME")
    tiny = add_command(group, "tiny", cmd_models_tiny,
                       "build the tiny random-weight text-to-video pipeline offline into DIR (tests and the "
                       "embedded default, which is built under home and added as `tiny` on first use)")
    tiny.add_argument("directory", metavar="DIR")
