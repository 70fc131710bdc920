"""`foundry bakeoff`: compare models side by side on a prompt set and a rubric, with cost, blinded for raters.

Flow:
1. `foundry bakeoff --config BAKEOFF.yaml --out DIR` asks every contender for its answer to every prompt
   (sampling seeded per prompt, the same seed for every model), times it, scores the automatic criteria,
   and writes `DIR/outputs.jsonl`, a blinded and shuffled `DIR/rating_sheet.csv` (a random blind id per
   answer, no model names), the key in `DIR/blind_key.json` (keep it away from raters), and the
   summary `DIR/bakeoff.json` + `DIR/bakeoff.md` (human criteria marked pending).
2. Raters fill the human criteria columns (integers on the criterion's scale; empty = not rated; an
   optional `rater` column allows several raters, whose scores of one answer are averaged).
   Or in the browser: `foundry bakeoff rate DIR --rater alice --rater bob` serves a page (one blinded answer
   at a time, each rater's own order, each score saved when given; module `rate`); `foundry bakeoff
   summary DIR` then rewrites the summary. Both ways feed one store, `DIR/ratings.json` (module `store`),
   and the summary adds the raters' agreement (Krippendorff's alpha, ordinal; `foundry.eval.agreement`).
3. `foundry bakeoff --out DIR --ratings FILLED.csv` validates the sheet against the key, un-blinds it
   and rewrites `bakeoff.json` / `bakeoff.md` with the human criteria included (criteria, models and
   automatic scores come from `DIR/state.json` and `DIR/outputs.jsonl`, as the generation run scored them).

Config (YAML; relative paths resolve against the config file's directory; every key: docs/BAKEOFF.md):
    prompts: prompts.jsonl        # {"id", "prompt", optional "system", "reference", and per-prompt fields}
    rubric: rubric.yaml
    models:                       # contenders; a path may be left out and given as --model NAME=PATH
      - {name: base, path: runs/base, price_per_compute_second: 0.0005}           # local: checkpoint/run/HF dir
      - {name: hosted, endpoint: {base_url: https://api.example.com/v1, model: m, api_key_env: EXAMPLE_KEY},
         price_per_1m_input_tokens: 0.15, price_per_1m_output_tokens: 0.60}      # any OpenAI-compatible server
      - {name: ours_http, serve: {model: runs/dpo}, price_per_1m_output_tokens: 0.6}  # foundry serve, started here
    judge: {name: hosted}         # scores `judge` criteria: a contender's name, or a path/endpoint/serve of its own
    seed: 0
    max_new_tokens: 96            # a contender may set its own max_new_tokens, temperature, top_p
    temperature: 0.7              # 0 = greedy
    top_p: 0.95
    chat: true                    # prompts go through the chat template (endpoints always get chat messages)

Rubric criteria (`type`; every criterion has `name`, optional `weight` (default 1) and `description`):
- `must_include`: required phrases (`patterns`, and/or the prompt field named by `from_prompt`); score =
  share present (`match: all`) or 1 if any is present (`match: any`); `regex: true` reads them as regexes.
- `must_not_include`: forbidden claims, same keys; score 1 if none is present, else 0.
- `length`: `min_words` / `max_words`; score 1 inside the bounds, else 0.
- `reference_similarity`: `metric: token_f1` (SQuAD-style bag-of-words F1) or `chrf` (Popovic 2015,
  character 1..6-grams, beta 2) against the prompt field `from_prompt` (default `reference`).
- `style_perplexity`: perplexity of the answer under a style model (`model: PATH`, or `--style-model`),
  a brand-voice proxy: lower is better. Mapped to [0, 1] on a log scale between `ppl_best` (score 1)
  and `ppl_worst` (score 0).
- `human`: rated by people on `scale: [1, 5]` (integers).
- `judge`: scored by the judge model on `scale`, with `anchors` ({score: meaning}) and the `description`;
  `compare_with: HUMAN_CRITERION` reports its agreement with people (module `judge`).
A criterion whose prompt field is absent for a prompt does not apply to it (it is left out of the mean).

Statistics: per contender and criterion the mean over prompts with a 95% Student-t interval
(`foundry.eval.stats.mean_ci`), on the criterion's own scale. The weighted total: per prompt the weighted
mean of the criteria mapped to [0, 1] (human and judge: (score - lo) / (hi - lo)), then its mean and
interval over prompts. The recommendation (`decision.recommend`): the best total, the paired difference of
every other contender to it, and the cheapest contender whose paired interval includes 0; when any does, it
says "not distinguishable at n = ..." rather than crowning a winner. Cost = every price the contender has on
its usage (per 1k generated tokens, per 1M input / output tokens, per compute second), reported per 1,000
answers; latency per answer (total, and time to first token where the endpoint streams).

Answers are appended to `OUT/answers.jsonl` (fsync per answer) as they arrive; a re-run into the same OUT asks
only for the missing ones (module `collect`); endpoint faults are retried or reported per contender
(module `endpoint`).

Modules: `rubric` (the config, the rubric and the prompts), `collect` (asking every contender and the judge,
the answer log, resume), `endpoint` (the HTTP client and `foundry serve` in a subprocess), `judge` (its
prompt, parsing, agreement with people), `scoring` (automatic criteria), `sheet` (the blinded rating
sheet, reading it back and un-blinding ratings), `store` (the ratings store and the agreement between raters),
`rate` (the rating page), `decision` (statistics, cost and the recommendation), `tables` (the tables and plot),
`summary` (a whole bake-off run and rewriting its summary).
"""
