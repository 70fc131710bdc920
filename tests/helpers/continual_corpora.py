"""Generated corpora for the continual-pretraining and coverage tests: an English-like and a French-like
language with disjoint vocabularies and a fixed sentence grammar, so a tiny model learns each quickly and
forgetting one while learning the other is measurable in seconds. Also: helpers to write them as
foundry datasets (manifest.json + train/val.jsonl); tests/test_helpers.py checks that the generators behave."""

import json
import random

LANGUAGES = {
    "en": {
        "det": ["the", "a", "every", "this", "that"],
        "adj": ["small", "green", "quiet", "heavy", "bright", "old", "simple", "careful", "warm", "strange"],
        "noun": ["river", "garden", "teacher", "window", "market", "engine", "letter", "forest", "doctor",
                 "kitchen", "village", "machine"],
        "verb": ["sees", "builds", "follows", "opens", "carries", "finds", "paints", "answers", "reaches"],
        "conj": ["and", "because", "while", "but"],
    },
    "fr": {
        "det": ["le", "la", "chaque", "cette", "une"],
        "adj": ["petite", "verte", "tranquille", "lourde", "brillante", "vieille", "simple", "prudente",
                "chaude", "étrange"],
        "noun": ["rivière", "jardin", "professeur", "fenêtre", "marché", "moteur", "lettre", "forêt",
                 "médecin", "cuisine", "village", "machine"],
        "verb": ["voit", "construit", "suit", "ouvre", "porte", "trouve", "peint", "répond", "atteint"],
        "conj": ["et", "parce que", "pendant que", "mais"],
    },
}


def sentence(lang: str, rng: random.Random) -> str:
    w = LANGUAGES[lang]
    clause = lambda: (f"{rng.choice(w['det'])} {rng.choice(w['adj'])} {rng.choice(w['noun'])} "  # noqa: E731
                      f"{rng.choice(w['verb'])} {rng.choice(w['det'])} {rng.choice(w['noun'])}")
    s = clause()
    if rng.random() < 0.4:
        s += f" {rng.choice(w['conj'])} {clause()}"
    return s[0].upper() + s[1:] + "."


def documents(lang: str, n: int, seed: int, sentences=(3, 8)) -> list[str]:
    rng = random.Random(f"{lang}-{seed}")
    return [" ".join(sentence(lang, rng) for _ in range(rng.randint(*sentences))) for _ in range(n)]


def write_dataset(root, lang: str, n_train: int = 120, n_val: int = 20, seed: int = 0):
    """A foundry dataset directory (as 'foundry data prepare' lays it out) in language `lang`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"generated": lang, "seed": seed}))
    for split, docs in (("train", documents(lang, n_train, seed)), ("val", documents(lang, n_val, seed + 1000))):
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, text in enumerate(docs):
                f.write(json.dumps({"id": f"{lang}-{split}-{i}", "source": "generated", "text": text},
                                   ensure_ascii=False) + "\n")
    return root


# ---- a shared base model: tokenizer and model trained on the English-like language only ----------------
_BUILT: dict = {}


def build_base(tmp_path_factory, steps: int = 150) -> dict:
    """Datasets en (general), en2 (more English), fr (domain), all tokenised with an English-only tokenizer,
    and a tiny base model pretrained on en; built once per test session (module-level cache)."""
    if "root" in _BUILT:
        return _BUILT
    from foundry.cli import main as cli
    from foundry.config import TrainConfig
    from foundry.data.shards import TokenBlocks
    from foundry.data.tokenizer import Tokenizer, iter_split_texts
    from foundry.model.llama import Llama, config_from_preset
    from foundry.train.loop import train
    from foundry.train.objectives import NextTokenObjective

    root = tmp_path_factory.mktemp("continual")
    en = write_dataset(root / "en", "en", n_train=200, n_val=30, seed=0)
    en2 = write_dataset(root / "en2", "en", n_train=60, n_val=20, seed=7)
    fr = write_dataset(root / "fr", "fr", n_train=200, n_val=30, seed=0)
    tok = Tokenizer.train(iter_split_texts(en, "train"), vocab_size=400)
    tok.save(root / "tok")
    for ds in (en, en2, fr):
        assert cli(["data", "tokenize", str(ds), "--tokenizer", str(root / "tok"), "--workers", "1",
                    "--no-progress"]) == 0
    import torch

    torch.manual_seed(0)
    model = Llama(config_from_preset("test"))
    cfg = TrainConfig(max_steps=steps, micro_batch_size=8, block_size=64, lr=3e-3, warmup_steps=10,
                      eval_every=10_000, checkpoint_every=10_000, log_every=50, device="cpu", progress=False, threads=1,
                      seed=0)
    train(model, NextTokenObjective(), TokenBlocks(en, "train", 64, seed=0), cfg, root / "base", tok,
          stage="pretrain", parents={"dataset": str(en)})
    _BUILT.update(root=root, en=en, en2=en2, fr=fr, tok=root / "tok", base=root / "base")
    return _BUILT
