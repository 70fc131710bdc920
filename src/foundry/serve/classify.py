"""`foundry serve CLASSIFIER`: `/v1/classify` for a sequence classifier (`foundry finetune`).

A classifier generates nothing, so it gets its own small app instead of the generation engine:
- `POST /v1/classify` `{"model": NAME, "input": "text" | ["text", ...]}` ->
  `{"object": "list", "model": NAME, "data": [{"index", "label", "scores": {label: probability}}]}`;
- `GET /v1/models`, `GET /health`;
- errors in the server's OpenAI-style body (`APIError`), the same API-key check and body-size limit.
"""

from __future__ import annotations

from fastapi import Request

from foundry.serve.protocol import MAX_BODY_BYTES, APIError

MAX_INPUTS = 256


def create_classify_app(model, tokenizer, settings):
    import json

    from foundry.model.classifier import classify
    from foundry.serve.app import add_model_routes, api_app, check_key

    model.eval()
    labels = list(model.config.labels)
    app = api_app("foundry classify")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "labels": labels}

    add_model_routes(app, settings, labels=labels)

    @app.post("/v1/classify")
    async def classify_route(request: Request):
        check_key(request, settings.api_key)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        try:
            req = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "request body is not valid JSON") from None
        if not isinstance(req, dict):
            raise APIError(400, "request body must be a JSON object")
        if req.get("model", settings.model_name) != settings.model_name:
            raise APIError(404, f"model '{req['model']}' does not exist; this server serves '{settings.model_name}'",
                           param="model", code="model_not_found")
        texts = req.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise APIError(400, "'input' must be a non-empty string or a list of non-empty strings", param="input")
        if len(texts) > MAX_INPUTS:
            raise APIError(400, f"at most {MAX_INPUTS} inputs per request, got {len(texts)}", param="input")
        probs = classify(model, tokenizer, texts)
        data = [{"index": i, "label": labels[int(p.argmax())],
                 "scores": {name: round(float(v), 6) for name, v in zip(labels, p)}} for i, p in enumerate(probs)]
        return {"object": "list", "model": settings.model_name, "data": data}

    return app
