"""`pretrain pii`: mask e-mail addresses and public IP addresses (phone numbers on request) in a folder of shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import app, console, fail, recipe_or_default, require_input, run_stage
from cli.options import ListOptions
from pretrain.config import ConfigError, PiiConfig, validate_config


@app.command(cls=ListOptions)
def pii(
    input: Path = typer.Option(..., "--input", "-i", help="Folder of Parquet shards with `text`."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the masked shards, report.json, info.json."),
    phones: Optional[bool] = typer.Option(None, "--phones/--no-phones", help="Mask phone numbers too (default: "
                                          "the recipe's pii.phones, off)."),
    no_emails: bool = typer.Option(False, "--no-emails", help="Leave e-mail addresses as they are."),
    no_ips: bool = typer.Option(False, "--no-ips", help="Leave IP addresses as they are."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `pii` section gives defaults."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Mask PII as FineWeb does: e-mails and public IPs become placeholders; every document is kept."""
    from flows.pii import pii_flow

    try:
        recipe = recipe_or_default(config)
        updates = {"phones": phones, "emails": False if no_emails else None, "ips": False if no_ips else None}
        cfg = validate_config(PiiConfig, {**recipe.pii.model_dump(),
                                          **{k: v for k, v in updates.items() if v is not None}}, prefix="pii.")
    except ConfigError as error:
        fail(str(error))
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    summary = run_stage("pii", output, lambda: pii_flow(
        config=cfg, input_dir=str(input), output_dir=str(output), ray_config=ray_cfg),
        check=lambda: require_input(input))
    console.print(f"[green]masked[/green] PII in {summary['documents_changed']} of {summary['documents_in']} "
                  f"documents ({summary['cache_hits']} shard(s) from cache)")
    for kind, count in summary["masked"].items():
        console.print(f"  {kind}: {count}")
    console.print(f"shards and report.json in {output}")
