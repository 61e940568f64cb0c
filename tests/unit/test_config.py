import pytest
import yaml

from infra.config import ConfigError, RunConfig, load_config
from tests.conftest import ROOT


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    assert isinstance(load_config(ROOT / "configs" / name), RunConfig)


def test_every_shipped_config_is_checked():
    assert {"quickstart.yaml", "builtin-1k.yaml", "smollm2.yaml", "gsm8k-file.yaml"} <= {p.name for p in (ROOT / "configs").glob("*.yaml")}


@pytest.mark.parametrize(
    "yaml_text, field, words",
    [
        ("search:\n  candidates: 1\n", "search.candidates", "greater than or equal to 2"),
        ("search:\n  candidatez: 5\n", "search.candidatez", "Extra inputs"),
        ("policy:\n  kind: gpt5\n", "policy", "tag"),
        ("seeds:\n  kind: builtin\n  min_steps: 5\n  max_steps: 2\n", "seeds", "min_steps"),
        ("pool:\n  actors: lots\n", "pool.actors", "integer"),
        ("- just\n- a list\n", "top level", "mapping"),
        ("search: [unclosed\n", "YAML", "not valid YAML"),
    ],
)
def test_bad_config_names_the_file_and_the_field(tmp_path, yaml_text, field, words):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert str(f) in msg and field in msg and words in msg


def test_every_field_has_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            for sub in getattr(ann, "__args__", ()) or (ann,):
                if isinstance(sub, type) and hasattr(sub, "model_fields"):
                    walk(sub)
    walk(RunConfig)


def test_relative_seed_paths_resolve_against_the_config_file():
    cfg = load_config(ROOT / "configs" / "gsm8k-file.yaml")
    assert cfg.seeds.paths[0] == str((ROOT / "tests" / "data" / "gsm8k_sample.jsonl").resolve())


def test_the_gpu_config_finds_its_seeds_in_the_repository_data_folder():
    cfg = load_config(ROOT / "configs" / "gpu-vllm.yaml")
    assert cfg.seeds.paths == [str((ROOT / "data" / "seeds" / "gsm8k-train.jsonl").resolve())]


def _leaves(model, prefix=""):
    """(dotted path, field) of every leaf field of a config model (sub-models walked)."""
    for name, field in model.model_fields.items():
        sub = field.annotation if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields") else None
        if sub is not None:
            yield from _leaves(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _invalid(field):
    """A value the field must refuse, or None when every value of the basic shape is allowed."""
    import annotated_types

    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            return m.ge - 1
        if isinstance(m, annotated_types.Gt):
            return m.gt - 1 if isinstance(m.gt, int) else m.gt - 0.5
        if isinstance(m, annotated_types.Le):
            return m.le + 1
        if isinstance(m, annotated_types.Lt):
            return m.lt + 1
    return {"not": "a scalar"}  # no scalar field takes a mapping


LEAVES = [(p, f) for p, f in _leaves(RunConfig) if "dict" not in str(f.annotation) and p not in ("seeds", "policy")]


@pytest.mark.parametrize("path, field", LEAVES, ids=[p for p, _ in LEAVES])
def test_every_field_refuses_an_invalid_value_with_a_message_naming_it(tmp_path, path, field):
    from infra.config import apply_overrides

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(apply_overrides({}, {path: _invalid(field)})))
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(bad) in str(e.value) and path.split(".")[-1] in str(e.value)


@pytest.mark.parametrize("resources, words", [({"CPU": 1}, "pool.num_cpus"), ({"sphere_worker": -1}, ">= 0")])
def test_pool_resources_are_custom_resources_only(tmp_path, resources, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pool": {"resources": resources}}))
    with pytest.raises(ConfigError, match=words):
        load_config(bad)
