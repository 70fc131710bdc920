"""`foundry bakeoff rate OUT`: the rating page, a small FastAPI app over the bake-off's ratings store.

- Raters are named (`--rater alice --rater bob`); each gets a random token kept in `OUT/raters.json`
  (reused on the next start, so links stay valid) and a link `http://HOST:PORT/?t=TOKEN`. Every API call
  carries the token (header `X-Rater-Token`); a missing or unknown token is a 401, and nobody sees
  another rater's scores.
- A rater sees one prompt and one blinded answer at a time (no model names, only blind ids), in an order
  of their own: the blind ids shuffled by a generator seeded from the bake-off's secret and the rater's
  name, so the order is stable across restarts and different for each rater.
- Each score, and each comment, is saved when it is given, through `RatingStore.rate` (one atomic
  rewrite of `OUT/ratings.json`; a change made on an older version of the answer's rating is a 409),
  the same store a filled CSV sheet feeds. Reopening the link resumes at the first answer not fully rated.
- Errors a rater can cause answer `{"error": message}` with a 4xx: 400 (bad body, a score off the
  scale), 401 (token), 404 (an answer or a position not in the sheet), 409 (changed in another tab,
  or a rubric with no human criteria). Nothing saved is touched by a refused request.
"""

from __future__ import annotations

import hmac
import json
import random
import re
import secrets
from pathlib import Path

from fastapi import Request  # module level: FastAPI resolves the string annotations of handlers here

from foundry.errors import ConfigError
from foundry.eval.bakeoff.store import RATER_NAME, RatingError

RATERS = "raters.json"


def ensure_raters(out: Path, names: list[str]) -> dict[str, str]:
    """{rater: token} for every rater of the bake-off in `out`, adding a fresh token for each new name."""
    from foundry.utils.io import atomic_write_json, read_json

    path = out / RATERS
    raters = read_json(path) if path.is_file() else {}
    for name in names:
        if not RATER_NAME.match(name):
            raise ConfigError(f"--rater {name!r}: a rater name is 1-64 letters, digits, '_', '.' or '-'")
        raters.setdefault(name, secrets.token_urlsafe(18))
    if names:
        atomic_write_json(path, raters)
    return raters


def rater_order(key: dict, rater: str) -> list[str]:
    """The blind ids in `rater`'s own random order (seeded by the bake-off's secret and the name)."""
    ids = sorted(key["key"])
    random.Random(f"rating-order-{key.get('secret', '')}-{rater}").shuffle(ids)
    return ids


def create_rating_app(out: str | Path, raters: dict[str, str]):
    """The rating page's FastAPI app for the bake-off in `out`, open to the raters in {name: token}."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from foundry.eval.bakeoff.summary import _stored, rating_store
    from foundry.eval.bakeoff.sheet import human_criteria
    from foundry.serve.web import mount_static, page

    out = Path(out)
    state, key, outputs = _stored(out)
    store = rating_store(out)
    criteria = [{"name": c["name"], "description": c["description"], "scale": c["scale"]}
                for c in human_criteria(state["criteria"])]
    prompts = {p["id"]: p for p in state["prompts"]}
    answers = {(o["model"], o["prompt_id"]): o["output"] for o in outputs}
    orders = {name: rater_order(key, name) for name in raters}

    app = FastAPI(title="foundry bake-off rating", docs_url=None, redoc_url=None, openapi_url=None)
    mount_static(app)

    @app.exception_handler(RatingError)
    async def _rating_error(_request, exc: RatingError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    def who(request: Request) -> str:
        given = request.headers.get("x-rater-token") or request.query_params.get("t") or ""
        for name, token in raters.items():
            if hmac.compare_digest(given.encode(), token.encode()):
                return name
        raise RatingError("this rating link is missing its token or the token is not valid; use the link "
                          "you were given", 401)

    def progress(name: str, mine: dict) -> dict:
        done = [store.complete(mine.get(bid)) for bid in orders[name]]
        return {"done": sum(done), "total": len(done), "complete": [i for i, d in enumerate(done) if d]}

    def item(name: str, index: int, mine: dict) -> dict:
        bid = orders[name][index]
        owner = key["key"][bid]
        rating = mine.get(bid, {"scores": {}, "comments": "", "version": 0})
        prompt = prompts[owner["prompt_id"]]
        return {"index": index, "blind_id": bid, "prompt": prompt["prompt"], "system": prompt.get("system", ""),
                "answer": answers[(owner["model"], owner["prompt_id"])], "scores": rating["scores"],
                "comments": rating.get("comments", ""), "version": rating["version"],
                "complete": store.complete(rating)}

    @app.get("/")
    async def index_page():
        return page("rate.html")

    @app.get("/api/session")
    async def session(request: Request):
        name = who(request)
        mine = store.rater(name)
        prog = progress(name, mine)
        first_open = next((i for i in range(prog["total"]) if i not in set(prog["complete"])), None)
        return {"rater": name, "criteria": criteria, "prompts": len(prompts), **prog,
                "position": first_open if first_open is not None else 0, "finished": first_open is None}

    @app.get("/api/item/{index}")
    async def get_item(index: int, request: Request):
        name = who(request)
        if not 0 <= index < len(orders[name]):
            raise RatingError(f"there is no answer {index + 1}; this sheet has {len(orders[name])}", 404)
        return item(name, index, store.rater(name))

    @app.put("/api/rating")
    async def put_rating(request: Request):
        name = who(request)
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RatingError("the request body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("blind_id"), str):
            raise RatingError("expected {\"blind_id\": ..., \"scores\": {...}, \"version\": N}")
        version = body.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise RatingError("'version' (the version of the rating this change was made on) must be an "
                              "integer >= 0")
        clear = body.get("clear") or []
        if not isinstance(clear, list):
            raise RatingError("'clear' must be a list of criterion names")
        bid = body["blind_id"]
        if bid not in key["key"] or not re.fullmatch(r"[A-Za-z0-9_\-]+", bid):
            raise RatingError(f"answer '{bid[:40]}' is not in this bake-off's sheet", 404)
        rating = store.rate(name, bid, body.get("scores") or {}, body.get("comments"), version, clear)
        mine = store.rater(name)
        return {"rating": rating, **progress(name, mine)}

    @app.get("/health")
    async def health():
        return {"status": "ok", "raters": len(raters), "answers": len(key["key"])}

    return app
