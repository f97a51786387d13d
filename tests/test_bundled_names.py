"""The bundled reasoners by name (`bundled`, `bundled-v1`): each resolves to a loadable model and its probe, the CLI
takes either wherever a model or probe folder goes, and an unknown name is refused with the known ones."""

import json

import pytest
from transformers import AutoConfig

from adaptive_think.bundled import BUNDLED, is_bundled, probe_path, reasoner_path
from adaptive_think.cli import main
from adaptive_think.loading import resolve_model_path
from adaptive_think.probe import Probe
from adaptive_think.tasks import make_questions


@pytest.mark.parametrize("name", list(BUNDLED))
def test_each_bundled_reasoner_has_its_own_probe(name):
    config = AutoConfig.from_pretrained(reasoner_path(name))
    probe = Probe.from_pretrained(probe_path(name))
    # the probe belongs to this reasoner: its fingerprint names the same shape
    assert probe.fingerprint["hidden_size"] == config.hidden_size
    assert probe.fingerprint["num_hidden_layers"] == config.num_hidden_layers
    assert resolve_model_path(name) == reasoner_path(name) and is_bundled(name)


def test_an_unknown_name_is_refused_with_the_known_ones():
    assert not is_bundled("bundled-v9") and not is_bundled(None)
    with pytest.raises(ValueError, match="bundled-v9.*bundled, bundled-v1"):
        reasoner_path("bundled-v9")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path("bundled-v9")  # not a name: read as a folder, which is missing


def test_generate_takes_a_bundled_name_for_the_model_and_its_probe(capsys):
    question = make_questions(1, seed=3)[0].question
    assert main(["generate", "--model", "bundled-v1", "--prompt", question, "--policy", "probe",
                 "--max-new-tokens", "160"]) == 0
    default = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["generate", "--model", "bundled-v1", "--probe", "bundled-v1", "--prompt", question, "--policy",
                 "probe", "--max-new-tokens", "160"]) == 0
    named = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert named == default  # a bundled --model brings its own probe; naming it gives the same one
    assert named["ended_by"] in ("probe", "skipped", "natural")
