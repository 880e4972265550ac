import pytest

from audit.config import defaults, resolve
from audit.errors import UsageError


def test_precedence_defaults_yaml_set_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("select:\n  margin: 0.3\n  max_per_pair: 7\nmodel:\n  path: m.keras\n")
    config = resolve(cfg_file, ["select.margin=0.4"], {"select.max_per_pair": 9, "out": "x"})
    assert config.select.margin == 0.4          # --set beats YAML
    assert config.select.max_per_pair == 9      # flag beats YAML
    assert config.predict.batch_size == defaults()["predict"]["batch_size"]
    assert config.model.path == str(tmp_path / "m.keras")  # relative to the YAML file


def test_config_is_frozen_and_picklable():
    import pickle

    import dataclasses

    config = resolve(flags={"out": "x"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.select.margin = 0.5
    with pytest.raises(TypeError):
        config.attribution.params["occlusion"] = {}
    again = pickle.loads(pickle.dumps(config))
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("item, message", [
    ("select.margin=3", "`select.margin` must be a float in [0, 1] (got 3)"),
    ("predict.batch_size=0", "`predict.batch_size` must be a positive int (got 0)"),
    ("attribution.methods=[nope]", "`attribution.methods` must be a non-empty list of: "),
    ("select.nonsense=1", "--set: unknown key `select.nonsense`"),
    ("select.pair=pool", "`select.pair` must be \"true:predicted\""),
    ("attribution.params={nope: {a: 1}}", "`attribution.params` must be a mapping of registered method name"),
    ("attribution.params.gradcam=3", "`attribution.params` must be a mapping of registered method name"),
])
def test_bad_values_name_the_key(item, message):
    with pytest.raises(UsageError) as err:
        resolve(sets=[item])
    assert str(err.value).startswith(message)


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("report:\n  colour: red\n")
    with pytest.raises(UsageError, match=r"c.yaml: unknown key `report.colour`"):
        resolve(cfg_file)


@pytest.mark.parametrize("name", ["demo.yaml", "nightly.yaml", "pair.yaml"])
def test_example_pipelines_are_valid(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "pipelines" / name
    config = resolve(path)
    assert config.source == str(path) and config.model.path


def test_method_params_from_yaml_and_set(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("attribution:\n  params:\n    occlusion: {patch: 6, baseline: blur}\n")
    config = resolve(cfg_file, ["attribution.params.occlusion.patch=4",
                                "attribution.params.integrated_gradients.steps=16"])
    assert config.to_dict()["attribution"]["params"] == {
        "occlusion": {"patch": 4, "baseline": "blur"}, "integrated_gradients": {"steps": 16}}


def test_method_params_reach_the_explainers():
    from audit.stages.attribute import explainers

    built = explainers(resolve(sets=["attribution.methods=[occlusion, integrated_gradients]",
                                     "attribution.params={occlusion: {patch: 5, stride: 2}}", "attribution.batch_size=7"]))
    assert list(built) == ["occlusion", "integrated_gradients"]
    assert built["occlusion"].patch == (5, 5) and built["occlusion"].stride == (2, 2)
    assert built["occlusion"].batch_size == 7 and built["integrated_gradients"].steps == 32
    with pytest.raises(UsageError, match=r"^`attribution.params.occlusion.baseline` must be one of mean"):
        explainers(resolve(sets=["attribution.params.occlusion.baseline=zero"]))
