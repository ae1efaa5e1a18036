"""`idufleet operator add|list|revoke` and `idufleet audit`: operator accounts and the audit log,
through the controller's API (an admin's token: api.token or an operator with the admin role)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from controller.operators import ROLES
from tools.api_client import ApiClient
from tools.options import api_option, token_option


@click.group("operator")
def operator_group() -> None:
    """Operator accounts: each has a role (viewer, operator, admin) and its own token."""


@operator_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@api_option
@token_option
def operator_add(name: str, role: str, api: str | None, token: str | None) -> None:
    """Create operator NAME; its token is printed this once (the controller keeps only a hash)."""
    out = ApiClient(api, token).post("/api/operators", {"name": name, "role": role})
    click.echo(f"operator {out['name']} ({out['role']}) created; token (shown once):")
    click.echo(out["token"])


@operator_group.command("list")
@api_option
@token_option
@click.option("--json", "as_json", is_flag=True)
def operator_list(api: str | None, token: str | None, as_json: bool) -> None:
    """Every operator with role and state; never a token."""
    rows: list[dict[str, Any]] = ApiClient(api, token).get("/api/operators")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        made = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created"]))
        click.echo(f"{r['name']:<24} {r['role']:<9} {r['state']:<8} {made} by {r['created_by']}")


@operator_group.command("revoke")
@click.argument("name")
@api_option
@token_option
def operator_revoke(name: str, api: str | None, token: str | None) -> None:
    """Revoke NAME's token now (the name stays taken, so the audit log stays unambiguous)."""
    ApiClient(api, token).post(f"/api/operators/{name}/revoke", {})
    click.echo(f"operator {name} revoked")


@click.command("audit")
@click.option("--since", default=None, help="Unix seconds or 90s/15m/6h/30d (default: all).")
@click.option("--who", default=None, help="Only this operator's actions.")
@click.option("--limit", type=int, default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of lines.")
@api_option
@token_option
def audit(
    since: str | None,
    who: str | None,
    limit: int,
    as_json: bool,
    api: str | None,
    token: str | None,
) -> None:
    """The audit log: who did what to which target, with what result (oldest first)."""
    rows: list[dict[str, Any]] = ApiClient(api, token).get(
        "/api/audit", since=since, who=who, limit=limit
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["ts"]))
        args = json.dumps(r["args"], sort_keys=True) if r["args"] else ""
        click.echo(
            f"{ts}  {r['who']} ({r['role']})  {r['action']}  {r['target'] or '-'}  "
            f"{r['result']}  {args}".rstrip()
        )
