"""`tierflow webhooks …`: endpoints told of events, signed per Standard Webhooks (shared.domain.webhooks)."""

from functions.cli.parsing import add_command, add_group, print_json, print_table
from shared.domain import webhooks


def _state(endpoint: dict) -> str:
    if not endpoint["enabled"]:
        return f"disabled: {endpoint['disabled_reason']}"
    return f"failing since {endpoint['failing_since']}" if endpoint["failing_since"] else "ok"


def cmd_webhooks_add(deps, args) -> int:
    endpoint = webhooks.add_endpoint(deps, args.url, args.events, args.project, created_by="cli")
    if args.json:
        print_json(endpoint)
    else:
        print(f"webhook {endpoint['id']}: {', '.join(endpoint['event_types'])} to {endpoint['url']}"
              + (f" (project {endpoint['project']})" if endpoint["project"] else ""))
        print(f"signing secret (shown only now): {endpoint['secret']}")
    return 0


def cmd_webhooks_list(deps, args) -> int:
    with deps.connect() as conn:
        endpoints = webhooks.list_endpoints(conn)
    if args.json:
        print_json(endpoints)
    else:
        print_table(["ID", "URL", "EVENTS", "PROJECT", "UNDELIVERED", "STATE"],
                    [[e["id"], e["url"], ",".join(e["event_types"]), e["project"] or "(all)", e["undelivered"],
                      _state(e)] for e in endpoints])
    return 0


def cmd_webhooks_remove(deps, args) -> int:
    endpoint = webhooks.remove_endpoint(deps, args.id)
    print_json(endpoint) if args.json else print(
        f"removed webhook {endpoint['id']} ({endpoint['url']}) and its {endpoint['undelivered']} undelivered event(s)")
    return 0


def cmd_webhooks_enable(deps, args) -> int:
    endpoint = webhooks.enable_endpoint(deps, args.id)
    print_json(endpoint) if args.json else print(
        f"webhook {endpoint['id']} enabled; its {endpoint['undelivered']} undelivered event(s) go out now")
    return 0


def register(commands) -> None:
    """Add `webhooks` to the `tierflow` parser."""
    group = add_group(commands, "webhooks", "endpoints POSTed each event they take, signed (Standard Webhooks)")
    add = add_command(group, "add", cmd_webhooks_add,
                      "register an endpoint; prints its signing secret (whsec_…) once")
    add.add_argument("url", metavar="URL", help="an http:// or https:// URL that takes POSTed CloudEvents")
    add.add_argument("--events", nargs="+", required=True, metavar="TYPE",
                     help=f"the event types it takes: {', '.join(webhooks.NOTIFIABLE)}")
    add.add_argument("--project", metavar="P", help="only events of this project's scenes and deliveries")
    add_command(group, "list", cmd_webhooks_list,
                "the endpoints: event types, project, undelivered events, failing or disabled and why")
    remove = add_command(group, "remove", cmd_webhooks_remove, "delete an endpoint and its undelivered events")
    remove.add_argument("id", type=int, metavar="ID")
    enable = add_command(group, "enable", cmd_webhooks_enable,
                         "enable an endpoint disabled after failing for a day; its undelivered events go out")
    enable.add_argument("id", type=int, metavar="ID")
