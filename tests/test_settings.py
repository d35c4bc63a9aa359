"""Typed settings (rdfa.settings): one default per setting, equal to params.yaml's; every group checked."""
import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rdfa.settings import GROUPS, TOP_LEVEL, ParamError, Settings, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_every_group_of_params_yaml_is_known_and_parses():
    assert set(PARAMS) <= set(TOP_LEVEL)
    settings = load_settings(ROOT / "params.yaml")
    assert settings.datasets == tuple(PARAMS["datasets"])
    assert settings.regions.L == PARAMS["regions"]["L"]
    assert settings.methods.D == tuple(sorted(PARAMS["methods"]["D"]))


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "features"])
def test_defaults_equal_params_yaml(group):
    """A missing key takes the dataclass default: it must be the value params.yaml ships, or a user who
    deletes a line silently gets another setting than the documented one."""
    empty = getattr(parse_settings({}), group)
    shipped = getattr(load_settings(ROOT / "params.yaml"), group)
    for f in dataclasses.fields(empty):
        if f.name in PARAMS.get(group, {}):
            assert getattr(empty, f.name) == getattr(shipped, f.name), f"{group}.{f.name}"


def test_feature_defaults_equal_params_yaml():
    empty, shipped = parse_settings({}).features, load_settings(ROOT / "params.yaml").features
    for key in ("backbone", "weights", "precision", "dtype"):
        assert getattr(empty, key) == getattr(shipped, key), f"features.{key}"


def test_describe_uses_the_same_defaults_as_the_stages():
    """rdfa.io.describe once defaulted the precision to fp32 while params.yaml said bf16."""
    from rdfa.io.describe import feature_config

    params = {"features": {"size": {"x": {}}}}
    assert feature_config(parse_settings(params), "x")["precision"] == PARAMS["features"]["precision"]


def _mutated(change):
    params = copy.deepcopy(PARAMS)
    change(params)
    return params


@pytest.mark.parametrize("change, message", [
    (lambda p: p["regions"].update(l=1), r"unknown key 'regions\.l'; did you mean 'regions\.L'\?"),
    (lambda p: p.update(regoins={}), r"unknown key 'regoins'; did you mean 'regions'\?"),
    (lambda p: p["features"]["size"]["synth"].update(max_sid=1), r"'features\.size\.synth\.max_sid'; did you mean "
                                                                 r"'features\.size\.synth\.max_side'"),
    (lambda p: p["index"].update(nprob=1), r"did you mean 'index\.nprobe'"),
    (lambda p: p["runtime"].update(thread=1), r"did you mean 'runtime\.threads'"),
    (lambda p: p["methods"].update(whiten_on={}), r"'methods\.whiten_on' is now whitening\.train_on"),
    (lambda p: p["ranking"].update(n_qe="10"), r"'ranking\.n_qe' must be an integer \(got '10'\)"),
    (lambda p: p["ranking"].update(qe_include_query="no"), r"'ranking\.qe_include_query' must be true or false"),
    (lambda p: p["saliency"].update(n_min=5000), r"'saliency\.n_min' \(5000\) must not exceed 'saliency\.n_max'"),
    (lambda p: p["regions"].update(L=9), r"'regions\.L'=9 asks for 2\^L = 512 regions"),
    (lambda p: p["whitening"].update(mode="zca"), r"'whitening\.mode' must be one of pca, shrink, power, none"),
    (lambda p: p["methods"].update(D=[128, 0]), r"'methods\.D' must be a non-empty list of positive integers"),
    (lambda p: p["features"].update(precision="fp8"), r"'features\.precision' must be one of fp32, bf16, fp16"),
    (lambda p: p.update(datasets=["synth", "synth"]), r"'datasets' must be a list without repeats"),
])
def test_bad_settings_are_refused_naming_the_key(change, message):
    with pytest.raises(ParamError, match=message):
        parse_settings(_mutated(change))


def test_training_dataset_rules():
    settings = parse_settings({"datasets": ["oxford5k", "paris6k"],
                               "whitening": {"train_on": {"oxford5k": "paris6k"}}})
    assert settings.training_dataset("oxford5k") == "paris6k"
    assert settings.training_dataset("paris6k") == "paris6k"
    with pytest.raises(ParamError, match="not in 'datasets'"):
        parse_settings({"datasets": ["a"], "whitening": {"train_on": {"a": "b"}}}).training_dataset("a")
    with pytest.raises(ParamError, match="a training set must learn on itself"):
        parse_settings({"datasets": ["a", "b", "c"],
                        "whitening": {"train_on": {"a": "b", "b": "c"}}}).training_dataset("a")


@pytest.mark.slow
def test_a_stage_refuses_a_typo_before_touching_anything(tmp_path):
    """The whole file is checked when a stage starts, whichever group the typo is in."""
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_mutated(lambda p: p["report"].update(topk=3))))
    run = subprocess.run([sys.executable, str(ROOT / "stages" / "regions.py"), "--dataset", "synth",
                          "--params", str(bad), "--root", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode != 0
    assert "unknown key 'report.topk'; did you mean 'report.top_k'?" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "features").exists()


def test_settings_are_frozen():
    settings = parse_settings({})
    assert isinstance(settings, Settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.regions.L = 4
