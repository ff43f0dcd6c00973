"""`pretrain synthesize`: rephrase a folder's documents with a local causal LM (a synthetic source)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import app, console, fail, recipe_or_default, require_input, run_stage
from cli.options import ListOptions
from pretrain.config import ConfigError, PipelineConfig, SynthesizeConfig, validate_config


def recipe_synthesis(recipe: PipelineConfig, branch: Optional[str]) -> dict:
    """The settings of the recipe's synthetic source branch (``--branch``, or its only one); none: the defaults."""
    synthetic = {name: source.synthesize for name, source in recipe.sources.items() if source.synthesize is not None}
    if branch is not None:
        if branch not in synthetic:
            raise ConfigError(f"--branch {branch}: the recipe's synthetic source branches are "
                              f"{', '.join(synthetic) or '(none)'}")
        return synthetic[branch].model_dump()
    if len(synthetic) > 1:
        raise ConfigError(f"the recipe has {len(synthetic)} synthetic source branches ({', '.join(synthetic)}): "
                          "name one with --branch")
    return next(iter(synthetic.values())).model_dump() if synthetic else {}


def synthesize_config(base: dict, **options) -> SynthesizeConfig:
    merged = {**base, **{key: value for key, value in options.items() if value is not None}}
    return validate_config(SynthesizeConfig, merged, prefix="synthesize.")


def check_inputs(cfg: SynthesizeConfig, input: Path) -> None:
    """Before Prefect starts: the model folder, the template, the input shards."""
    from tasks.evaluation.models import check_model_path
    from tasks.synthesis.templates import load_template

    check_model_path(Path(cfg.model))
    load_template(cfg.template, cfg.templates_dir)
    require_input(input)


@app.command(cls=ListOptions)
def synthesize(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A Hugging Face causal-LM folder, or a run folder "
                                         "(its newest checkpoint is exported); default: the recipe's."),
    input: Path = typer.Option(..., "--input", "-i", help="Folder of Parquet document shards (`id`, `text`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the synthetic shards, report.json, info.json."),
    template: Optional[str] = typer.Option(None, "--template", "-t", help="Prompt template: wikipedia_style "
                                           "(default) or qa_pairs, or a <name>.txt of --templates-dir."),
    templates_dir: Optional[Path] = typer.Option(None, help="A folder of <name>.txt templates, each with one {text}."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Tokens generated per document at most (default 256)."),
    max_input_tokens: Optional[int] = typer.Option(None, help="The document is cut to this many tokens (default 768)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default 0.7); 0 is greedy."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling's probability mass (default 0.9)."),
    seed: Optional[int] = typer.Option(None, help="Same seed, model and input: the same output (default 0)."),
    batch_size: Optional[int] = typer.Option(None, help="Documents generated together (default 8)."),
    max_documents: Optional[int] = typer.Option(None, help="Rephrase the first N documents of each shard."),
    backend: Optional[str] = typer.Option(None, help="auto (default: vLLM when installed and on a GPU), transformers "
                                          "or vllm."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N (default: cuda when there is one)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its synthetic source branch gives defaults."),
    branch: Optional[str] = typer.Option(None, help="With --config: which synthetic source branch (if several)."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Rephrase documents with a local model (WRAP / Nemotron-CC style prompts): one synthetic document each."""
    from flows.synthesize import synthesize_flow

    try:
        recipe = recipe_or_default(config)
        cfg = synthesize_config(recipe_synthesis(recipe, branch), model=str(model) if model else None,
                                template=template, templates_dir=str(templates_dir) if templates_dir else None,
                                max_new_tokens=max_new_tokens, max_input_tokens=max_input_tokens,
                                temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                                max_documents=max_documents, backend=backend, device=device)
    except ConfigError as error:
        fail(str(error))
    if not cfg.model:
        fail("no model: give --model (a Hugging Face causal-LM folder or a run folder)")
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    summary = run_stage("synthesize", output, lambda: synthesize_flow(
        config=cfg, input_dir=str(input), output_dir=str(output), ray_config=ray_cfg),
        check=lambda: check_inputs(cfg, input))
    console.print(f"[green]wrote[/green] {summary['documents']} synthetic documents from {summary['documents_in']} "
                  f"({summary['empty_generation']} empty generations, {summary['document_truncated']} documents cut "
                  f"to fit; {summary['cache_hits']} shard(s) from cache)")
    console.print(f"shards and report.json in {output}")
