"""Fixtures more than one test folder uses. What tests call directly (builders, writers, servers) lives in
tests/helpers/, imported as `tests.helpers.<module>`; fixtures one folder shares sit in its own conftest.py
(tests/train/conftest.py, tests/reliability/conftest.py).

`pytest -m "not slow"` is the fast subset: every test marked `slow` takes over ~5 s on 2 cores, or starts a
subprocess server, torchrun, Ray, a wheel build or a browser."""

import pytest

# A helper's own checks (a builder asserting the CLI succeeded) then fail with the values, as a test's asserts do.
pytest.register_assert_rewrite("tests.helpers")

from tests.helpers.continual_corpora import build_base  # noqa: E402
from tests.helpers.serve_fixtures import tiny_tokenizer  # noqa: E402
from tests.helpers.train_data import make_texts  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    """The 320-token BPE over serve_fixtures.WORDS that tiny_model and tiny_checkpoint use (serve, engine)."""
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tokenizer():
    """A 280-token BPE over train_data.make_texts(20) (generation, checkpoints)."""
    from foundry.data.tokenizer import Tokenizer

    return Tokenizer.train(make_texts(20), vocab_size=280, min_frequency=1)


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """Generated en / en2 / fr datasets and a tiny base model pretrained on en, built once a session
    (continual pretraining, coverage)."""
    return build_base(tmp_path_factory)
