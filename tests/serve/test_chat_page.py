"""The chat page's routes on `foundry serve`: the shipped static files, what the page is told, and the
passages it cites (the same search that grounds the answer)."""

from fastapi.testclient import TestClient

from tests.helpers.serve_fixtures import tiny_model, tiny_tokenizer
from foundry.serve.retrieval import Index, grounded_prompt
from foundry.serve.server import ServerSettings, create_app

PASSAGES = [{"text": "the river town was founded by a cartographer who drew maps", "source": "town.md"},
            {"text": "barges carry cheese downstream to the market", "source": "barges.md"}]


def test_page_info_and_cited_passages():
    tok = tiny_tokenizer()
    index = Index.build(PASSAGES)
    model = tiny_model(tok)
    client = TestClient(create_app(model, tok, ServerSettings("tiny", api_key="k", passages=1), index=index))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/chat.js">' in page.text and "http" not in page.text  # nothing from a network
    for f in ("chat.js", "style.css"):
        r = client.get(f"/static/{f}")
        assert r.status_code == 200 and "http" not in r.text
    assert client.get("/ui/info").json() == {"model": "tiny", "retrieval": True, "passages": 1,
                                             "max_tokens_limit": 512, "context": model.config.max_seq_len, "needs_key": True}
    assert client.post("/ui/passages", json={"query": "who founded the town"}).status_code == 401
    auth = {"Authorization": "Bearer k"}
    hits = client.post("/ui/passages", json={"query": "who founded the town"}, headers=auth).json()["passages"]
    assert [h["source"] for h in hits] == ["town.md"]
    assert "[town.md] " + hits[0]["text"] in grounded_prompt(index, "who founded the town", 1)  # what grounds the answer
    bad = client.post("/ui/passages", content=b"{nope", headers=auth)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]["message"]
    assert client.post("/ui/passages", json={"q": 1}, headers=auth).status_code == 400


def test_no_index_no_passages():
    tok = tiny_tokenizer()
    client = TestClient(create_app(tiny_model(tok), tok, ServerSettings("tiny")))
    assert client.get("/ui/info").json()["retrieval"] is False
    assert client.post("/ui/passages", json={"query": "town"}).json() == {"passages": []}
