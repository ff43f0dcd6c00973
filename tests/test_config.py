import pytest

from pretrain.config import ConfigError, IngestConfig, PipelineConfig, load_recipe, validate_config


def test_local_recipe_derives_from_base():
    cfg = load_recipe("local")
    assert cfg.name == "local"
    assert cfg.demo_data is True
    assert cfg.ray.num_cpus == 2
    assert cfg.ingest.extractor == "fast"  # from base.yaml
    assert cfg.ingest.min_text_chars == 20


def test_variant_is_a_small_change_from_its_base():
    full = load_recipe("cc-full")
    small = load_recipe("cc-small")
    assert full.ingest.max_files is None and small.ingest.max_files == 4
    assert full.ingest.inputs == small.ingest.inputs == ["CC-MAIN-2024-10"]


def test_override_sets_nested_field():
    cfg = load_recipe("local", ["ingest.languages=[en, fr]", "ray.num_cpus=1"])
    assert cfg.ingest.languages == ["en", "fr"]
    assert cfg.ray.num_cpus == 1


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"ingest\.max_files"):
        load_recipe("local", ["ingest.max_files=many"])


def test_unknown_key_names_the_field():
    with pytest.raises(ConfigError, match=r"ingest\.extractr"):
        load_recipe("local", ["ingest.extractr=fast"])


def test_bad_extractor_lists_choices():
    with pytest.raises(ConfigError, match="fast.*precise"):
        validate_config(IngestConfig, {"extractor": "magic"})


def test_shard_selection_is_checked():
    with pytest.raises(ConfigError, match="shard_index"):
        validate_config(IngestConfig, {"num_shards": 2, "shard_index": 2})


def test_languages_accept_comma_string():
    assert IngestConfig(languages="en, fr").languages == ["en", "fr"]


def test_missing_recipe_lists_known(tmp_path):
    with pytest.raises(ConfigError, match="known recipes: .*local"):
        load_recipe("no-such-recipe")


def test_recipe_file_outside_configs_can_derive_from_a_named_recipe(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: local\nname: mine\ningest:\n  languages: [de]\n")
    cfg = load_recipe(str(path))
    assert cfg.name == "mine" and cfg.ingest.languages == ["de"]
    assert cfg.demo_data is True and cfg.ingest.min_text_chars == 20  # from local, then base


def test_recipe_deriving_from_itself_is_an_error(tmp_path):
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="derives from itself"):
        load_recipe(str(tmp_path / "loop.yaml"))


def test_config_is_a_prefect_parameter_schema():
    from prefect.utilities.callables import parameter_schema

    from flows.pretrain import pretrain_flow

    schema = parameter_schema(pretrain_flow).model_dump()
    assert "config" in schema["properties"]
    definitions = schema.get("definitions", {})
    assert "IngestConfig" in definitions
    assert "extractor" in definitions["IngestConfig"]["properties"]
    assert PipelineConfig().ingest.extractor == "fast"
