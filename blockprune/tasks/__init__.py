"""blockprune.tasks: what is scored. A task spec (`mc:arc_easy#30`, `kl:shakespeare/hamlet`,
`gen:jsonl:PATH`, `lm-eval:NAME` ...) becomes a Task: samples, the token requests they make, and
how per-sample scores are read from the engine's log-probs, greedy tokens, KL and generated text.

Owns: `specs` (the registry of spec schemes and `load_task`, re-exported here), `kinds` (task kinds
and what each declares), `scores` (ranking scores and drops), `request` (a token request),
`loaders` (JSONL, Hugging Face datasets, Shakespeare), `benchmarks` (the standard benchmarks in
lm-eval's formats), `gen_task` (generative tasks), `lmeval` (lm-evaluation-harness's own tasks).
May import: blockprune.data, blockprune.runs.
"""

from .specs import (DEFAULT_PPL_WINDOW, SCHEMES, ExactMatchTask, KLTask, MultipleChoiceTask, PerplexityTask, Scheme,
                    Task, TaskError, TaskSpec, absolute_spec, check_spec, join_count, leading_specials, load_task,
                    parse_spec, prefetch, register_scheme, split_count)

__all__ = ["DEFAULT_PPL_WINDOW", "SCHEMES", "ExactMatchTask", "KLTask", "MultipleChoiceTask", "PerplexityTask", "Scheme",
           "Task", "TaskError", "TaskSpec", "absolute_spec", "check_spec", "join_count", "leading_specials", "load_task",
           "parse_spec", "prefetch", "register_scheme", "split_count"]
