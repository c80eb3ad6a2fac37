"""`tierflow infra deploy`: the bucket, secret, topics and Batch resources on LocalStack or AWS."""

import json

from functions.cli.parsing import add_command, add_group


def cmd_infra_deploy(deps, args) -> int:
    from infra.deploy import deploy

    steps = deploy(deps, args.target, dry_run=args.dry_run)
    if args.json:
        print(json.dumps([s.to_json() for s in steps], indent=2))
    else:
        for step in steps:
            print(f"{step.action:>12}  {step.resource}" + (f"  ({step.detail})" if step.detail else ""))
    return 0


def register(commands) -> None:
    """Add `infra` to the `tierflow` parser."""
    infra_commands = add_group(commands, "infra", "cloud resources")
    deploy = add_command(infra_commands, "deploy", cmd_infra_deploy,
                         "create or update the bucket, secret, topics and Batch resources (idempotent)")
    deploy.add_argument("--target", required=True, choices=["localstack", "aws"],
                        help="localstack: TIERFLOW_S3_ENDPOINT_URL or http://127.0.0.1:4566; aws: the AWS account")
    deploy.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
