"""`foundry bakeoff`: compare models side by side on a prompt set and a rubric, with cost, blinded for raters.

Flow:
1. `foundry bakeoff --config BAKEOFF.yaml --out DIR` generates every model's answer to every prompt
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

Config (YAML; relative paths resolve against the config file's directory):
    prompts: prompts.jsonl        # {"id", "prompt", optional "system", "reference", and per-prompt fields}
    rubric: rubric.yaml
    models:                       # a path may be left out and given as --model NAME=PATH
      - {name: base, path: runs/base, price_per_1k_tokens: 0.002, price_per_compute_second: 0.0}
    seed: 0
    max_new_tokens: 96
    temperature: 0.7              # 0 = greedy
    top_p: 0.95
    chat: true                    # prompts go through the chat template

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
A criterion whose prompt field is absent for a prompt does not apply to it (it is left out of the mean).

Statistics: per model and criterion the mean over prompts with a 95% Student-t interval
(`foundry.eval.stats.mean_ci`). Automatic scores are in [0, 1]; human means are on their own scale.
Ranking: the weighted mean of every criterion's mean mapped to [0, 1] (human: (mean - lo) / (hi - lo)),
over the criteria that have scores; ties go to the cheaper model. Cost = tokens generated / 1000 *
price_per_1k_tokens + measured generation seconds * price_per_compute_second.

Modules: `rubric` (the config, the rubric and the prompts), `scoring` (generation and automatic
criteria), `sheet` (the blinded rating sheet and reading it back), `store` (the ratings store and the
agreement between raters), `rate` (the rating page), `summary` (statistics, ranking, the tables, and a
whole bake-off run).
"""
