"""`foundry data prepare` and `data tokenize` as datatrove pipelines (docs/DATA.md says why datatrove).

The engine (datatrove's executors) schedules tasks on local processes, a Slurm array or a Ray cluster,
records each finished task in `completions/` (a re-run skips those: that is the resume) and logs per
task. The steps are foundry's own rules (each document judged by `foundry.data.prepare.clean_document`, as
the single-process path judges it; dedup.py, decontam.py), so the output is the single-process path's,
document for document and line for line:

  1 read    (task = source file)  read, clean, drop too_short; content hash, split, contamination;
                                  MinHash signature; exact keys and LSH band keys into B hash buckets
  2 match   (task = bucket)       exact: the first copy (in input order) of each hash survives;
                                  near: documents sharing an LSH band are candidates, verified on the
                                  full signature (Jaccard >= threshold) as datasketch's query + check is
  3 resolve (one task)            near pairs resolved greedily in input order: a document is a near
                                  duplicate when an earlier KEPT document matches it (the sequential rule)
  4 write   (task = source file)  drop by reason, count per source, write its train/val part
  5 merge   (one task)            parts concatenated in source order, manifest, run record, atomic rename

A document's place in the input is `order` = file index << 40 | document index, so "first" means the
same thing at any number of workers. Memory per task is one file's documents (stages 1, 4) or one
bucket's keys (stage 2); only stage 3 holds all verified near pairs and the exact duplicates' orders.
Intermediate files live in the work directory (default OUT.prepare-work), deleted after a local run.

Modules: `prepare` (the five stages above, `prepare_on_engine`), `tokenize` (`data tokenize`'s encode and
shard stages, `tokenize_on_engine`), `steps` (what both share: the step, task directories, executors, the run).
"""

from foundry.data.engine.prepare import (PrepareJob, lsh_layout, prepare_on_engine,  # noqa: F401
                                         resolve_near_pairs)
from foundry.data.engine.steps import EXECUTORS, FAULT_ENV  # noqa: F401
from foundry.data.engine.tokenize import TokenizeJob, tokenize_on_engine  # noqa: F401
