"""`mossctl keys create | list | revoke` (admin keys), `keys webhook-secret` (any key)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .common import client, err, guard, out

app = typer.Typer(help="Create, list and revoke API keys (admin).", no_args_is_help=True)


@app.command("create")
def keys_create(
    tenant: str,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help="jobs (default), priority (may submit priority=high) or admin; repeatable."
        ),
    ] = None,
    name: Annotated[str, typer.Option()] = "",
) -> None:
    """Create a key for a tenant and print it (shown once)."""
    created = guard(client().create_key, tenant, scope or ["jobs"], name)
    out.print(created["key"])
    err.print(
        f"id {created['id']}, tenant {created['tenant']}, scopes {','.join(created['scopes'])}"
    )
    err.print(f"webhook signing secret (shown once): {created['webhook_secret']}")


@app.command("list")
def keys_list() -> None:
    """Every key (prefixes only; secrets are never stored)."""
    table = Table("id", "tenant", "name", "prefix", "scopes", "revoked")
    for key in guard(client().keys):
        table.add_row(
            key["id"],
            key["tenant"],
            key["name"],
            key["prefix"] + "…",
            ",".join(key["scopes"]),
            "yes" if key["revoked_at"] else "",
        )
    out.print(table)


@app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: it stops working at once."""
    guard(client().revoke_key, key_id)
    out.print(f"revoked {key_id}")


@app.command("webhook-secret")
def keys_webhook_secret(
    key_id: Annotated[str, typer.Argument(help="A key id, or `me` for the key in use.")] = "me",
) -> None:
    """Make a new webhook signing secret for a key and print it (shown once; the old one
    stops at once)."""
    out.print(guard(client().rotate_webhook_secret, key_id)["webhook_secret"])
