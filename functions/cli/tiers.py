"""`tierflow tiers …`: list and administer the resolution tiers."""

import argparse

from functions.cli.parsing import add_command, add_group, number, print_json, print_table, whole_number
from shared.domain import estimate, tiers
from shared.domain.dimensions import parse_aspect


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


def _factor(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def _tier_rows(tier_list: list[tiers.Tier], aspect, measured: dict | None) -> list[list[object]]:
    rows = []
    for t in tier_list:
        row = [t.name, t.label, f"{t.width}×{t.height}", f"{t.speed_factor:g}"]
        if measured is not None:
            row.append(_factor(measured.get(t.name)))
        row += [t.sort_order, _yes(t.is_default), _yes(t.is_deliverable), _yes(t.is_builtin)]
        if aspect:
            row.append("%d×%d" % t.size_for(aspect))
        rows.append(row)
    return rows


def show_tiers(tier_list: list[tiers.Tier], aspect, as_json: bool, measured: tuple[dict, dict | None] | None = None
               ) -> None:
    """The tiers as a table or JSON; with `measured` (estimate.measured_speed_factors), each
    tier's measured speed factor and what it was measured on."""
    factors, basis = measured if measured is not None else (None, None)
    if as_json:
        print_json([
            {**t.to_json(), **({"size_for_aspect": dict(zip(("width", "height"), t.size_for(aspect)))} if aspect else {}),
             **({"measured_speed_factor": factors.get(t.name), "measured_on": basis} if factors is not None else {})}
            for t in tier_list
        ])
        return
    headers = ["NAME", "LABEL", "BOX", "SPEED"] + (["MEASURED"] if factors is not None else []) + [
        "ORDER", "DEFAULT", "DELIVERABLE", "BUILT-IN"]
    if aspect:
        headers.append(f"SIZE AT {aspect.label}")
    print_table(headers, _tier_rows(tier_list, aspect, factors))
    if factors is not None:
        print("MEASURED: held seconds of a Production-sized segment over this tier's, "
              + (f"16:9, {basis['frames']} frames, {basis['steps']} steps, fitted to {basis['jobs']} job(s) of "
                 f"{basis['model']} on {basis['device']}" if basis else "once enough jobs are measured")
              + "; — where not measured")


def cmd_tiers_list(deps, args) -> int:
    aspect = parse_aspect(args.aspect) if args.aspect else None
    with deps.connect() as conn:
        tier_list = tiers.list_tiers(conn)
        show_tiers(tier_list, aspect, args.json, estimate.measured_speed_factors(conn, tier_list))
    return 0


def _quality(args):
    return tiers.parse_quality_settings(args.quality_settings) if args.quality_settings is not None else None


def cmd_tiers_create(deps, args) -> int:
    quality = _quality(args)
    with deps.connect() as conn:
        tier = tiers.create_tier(
            conn, args.name, args.width, args.height,
            speed_factor=args.speed_factor, sort_order=args.sort_order,
            is_default=args.default, is_deliverable=args.deliverable, quality_settings=quality,
        )
    show_tiers([tier], None, args.json)
    return 0


def cmd_tiers_update(deps, args) -> int:
    extra = {"quality_settings": _quality(args)} if args.quality_settings is not None else {}
    with deps.connect() as conn:
        tier = tiers.update_tier(
            conn, args.name, new_name=args.new_name, width=args.width, height=args.height,
            speed_factor=args.speed_factor, sort_order=args.sort_order,
            is_default=args.default, is_deliverable=args.deliverable, **extra,
        )
    show_tiers([tier], None, args.json)
    return 0


def cmd_tiers_delete(deps, args) -> int:
    with deps.connect() as conn:
        tier = tiers.delete_tier(conn, args.name)
    if args.json:
        print_json({"deleted": tier.name})
    else:
        print(f"deleted tier {tier.name}")
    return 0


def _add_tier_fields(parser: argparse.ArgumentParser, creating: bool) -> None:
    parser.add_argument("--width", type=whole_number, required=creating,
                        help="box width in pixels: a multiple of 8 from 64 to 8192")
    parser.add_argument("--height", type=whole_number, required=creating,
                        help="box height in pixels: a multiple of 8 from 64 to 8192")
    parser.add_argument("--speed-factor", type=number, default=1.0 if creating else None,
                        help="how many times faster than Production it renders (> 0)" + (", default 1" if creating else ""))
    parser.add_argument("--sort-order", type=whole_number,
                        help="rank among tiers; upscales go to a higher rank" + (" (default: above all)" if creating else ""))
    parser.add_argument("--quality-settings", metavar="JSON",
                        help='output settings, e.g. \'{"codec": "h264", "crf": 18, "fps": 24}\''
                        + ("" if creating else "; 'null' clears them"))


def register(commands) -> None:
    """Add `tiers` to the `tierflow` parser."""
    tier_commands = add_group(commands, "tiers", "resolution tiers: list and administer")
    listing = add_command(tier_commands, "list", cmd_tiers_list,
                          "list the tiers, lowest rank first, each with its configured speed factor and the one "
                          "measured (held seconds of a Production-sized segment over the tier's, per the cost model "
                          "fitted to the most measured model and device: see `scenes upscale --estimate`)")
    listing.add_argument("--aspect", metavar="W:H", help="also show the size a scene of this aspect ratio gets")

    create = add_command(tier_commands, "create", cmd_tiers_create, "create a custom tier")
    create.add_argument("name", help="lowercase slug, e.g. ultra-hd")
    _add_tier_fields(create, creating=True)
    create.add_argument("--default", action="store_true", help="make it the default tier (unsets the old one)")
    create.add_argument("--deliverable", action="store_true", help="allow delivery of scenes at this tier")

    update = add_command(tier_commands, "update", cmd_tiers_update, "change fields of a tier")
    update.add_argument("name", help="the tier to change")
    update.add_argument("--name", dest="new_name", metavar="NEW_NAME", help="rename it (custom tiers only)")
    _add_tier_fields(update, creating=False)
    update.add_argument("--default", action=argparse.BooleanOptionalAction, default=None,
                        help="make it the default tier (unsets the old one); --no-default is refused for the default")
    update.add_argument("--deliverable", action=argparse.BooleanOptionalAction, default=None,
                        help="allow or forbid delivery of scenes at this tier")

    delete = add_command(tier_commands, "delete", cmd_tiers_delete, "delete a custom tier no scene uses")
    delete.add_argument("name", help="the tier to delete")
