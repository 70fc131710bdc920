import pytest

from tests.helpers.reliability import build_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Corpus -> dataset -> tokenizer -> shards through the real CLI, plus chat and preference files; one per
    test module, so a module's runs cannot disturb another's."""
    return build_workspace(tmp_path_factory.mktemp("ws"))
