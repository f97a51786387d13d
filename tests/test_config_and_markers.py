"""Bad ThinkConfig values and think markers raise errors that say what to do; the registry finds
the markers of the known reasoning families."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from adaptive_think import ThinkConfig, resolve_markers
from adaptive_think.markers import KNOWN_MARKERS
from tiny import make_tokenizer


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(policy="budget", max_think_tokens=-1), "negative"),
        (dict(policy="budget", max_think_tokens=4, min_think_tokens=8), "exceeds max_think_tokens"),
        (dict(policy="sometimes"), "not a known policy"),
        (dict(policy="budget"), "needs max_think_tokens"),
        (dict(policy="full", max_think_tokens=8), "takes no max_think_tokens"),
        (dict(policy="budget", max_think_tokens=8, threshold=0.3), 'only applies to policy="probe"'),
        (dict(policy="probe", threshold=1.5), r"must lie in \[0, 1\]"),
        (dict(smoothing=0.0), "smoothing"),
        (dict(patience=0), "patience"),
        (dict(min_think_tokens=-2), "min_think_tokens"),
        (dict(exit_text=3), "exit_text"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThinkConfig(**kwargs)


def _family_tokenizer(open_text, close_text, template=""):
    base = make_tokenizer(think_special=False)
    base.add_special_tokens({"additional_special_tokens": [open_text, close_text]})
    base.chat_template = template or base.chat_template
    return base


@pytest.mark.parametrize("open_text,close_text,families", KNOWN_MARKERS)
def test_registry_detects_known_families(open_text, close_text, families):
    tok = _family_tokenizer(open_text, close_text, "{{ messages }}" + open_text)
    m = resolve_markers(tok)
    assert (m.open_text, m.close_text) == (open_text, close_text)
    assert m.single_token and m.source.startswith("detected")


def test_explicit_multi_token_markers():
    m = resolve_markers(make_tokenizer(), ("<reason>", "</reason>"))
    assert len(m.open_ids) == 3 and len(m.close_ids) == 4 and not m.single_token


def test_no_markers_says_how_to_pass_them():
    with pytest.raises(ValueError, match="think_tokens="):
        resolve_markers(make_tokenizer(think_special=False))


def test_marker_outside_the_grammar_is_refused():
    # greedy sub-word merges: "ab" alone is one token, but after a newline "\na" + "b" wins
    vocab = {"<unk>": 0, "ab": 1, "x": 2, "\na": 3, "b": 4, "\n": 5, "a": 6, "c": 7}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", continuing_subword_prefix=""))
    tok.pre_tokenizer = pre_tokenizers.Sequence([])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    with pytest.raises(ValueError, match="not in the prompt's grammar"):
        resolve_markers(fast, ("ab", "c"))


@pytest.mark.parametrize("pair,match", [(("", "</t>"), "non-empty"), (("<think>", "<think>"), "same string"),
                                        (("<think>",), "pair")])
def test_bad_explicit_markers(pair, match):
    with pytest.raises(ValueError, match=match):
        resolve_markers(make_tokenizer(), pair)


def test_unknown_token_marker_is_refused():
    with pytest.raises(ValueError, match="unknown token"):
        resolve_markers(make_tokenizer(), ("BEGIN", "END"))
